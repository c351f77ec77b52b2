"""TaskBatch: one HTC-Grid session — a set of tasks, run by a pool of workers.

Tasks live in the Redis data plane, never here: the status holds counters per state, phase,
times and conditions, written at a bounded rate whatever the number of tasks.
"""

from __future__ import annotations

import datetime
import enum
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from .common import CONDITIONS_LIST, Condition, KubeModel
from .gridsession import EnvVar, ResourceRequirements

KIND = "TaskBatch"
PLURAL = "taskbatches"
SINGULAR = "taskbatch"
SHORT_NAMES = ["tb"]
CATEGORIES = ["grid"]
MAX_NAME_LENGTH = 53  # `<name>-workers` names the Job (and its pods' prefix)


class BatchPhase(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchPhase.SUCCEEDED, BatchPhase.FAILED, BatchPhase.CANCELLED)


class OnError(str, enum.Enum):
    RETRY = "Retry"
    FAIL = "Fail"


class Workers(KubeModel):
    min: int = Field(default=0, ge=0, le=1000, description="Workers kept while the batch has work.")
    max: int = Field(default=4, ge=1, le=1000, description="Upper bound when scaling with queue depth.")
    tasks_per_worker: int = Field(default=1000, ge=1, description="Queue depth one worker is expected to absorb.")
    resources: ResourceRequirements | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=128)


#: A decimal number as a string ("1.5") or an integer (2): spec fields never hold floats, which do
#: not survive every encoder unchanged (the Kubernetes API conventions), yet a factor may be fractional.
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
Decimal = Annotated[int | Annotated[str, StringConstraints(pattern=DECIMAL_PATTERN)], "decimal"]


def decimal_value(value: int | str) -> float:
    return float(value)


class RetryPolicySpec(KubeModel):
    max_retries: int = Field(default=3, ge=0, le=100,
                             description="Retries of a task whose handler raised or timed out.")
    max_infrastructure_retries: int = Field(
        default=3, ge=0, le=100,
        description="Retries of a task whose worker died or lost contact under it (a lost lease); they do not "
                    "spend maxRetries, and such a task is retried alone, so a crashing task cannot fail its neighbours.",
    )
    backoff_milliseconds: int = Field(default=1000, ge=0, description="Delay before the first retry, in milliseconds.")
    backoff_multiplier: Decimal = Field(
        default=2, description='Factor applied to the delay at each retry, at least 1: an integer, or a decimal string ("1.5").',
    )
    backoff_max_milliseconds: int = Field(default=60000, ge=0, description="Upper bound of the delay, in milliseconds.")

    @field_validator("backoff_multiplier")
    @classmethod
    def _at_least_one(cls, value: int | str) -> int | str:
        if decimal_value(value) < 1:
            raise ValueError("backoffMultiplier must be at least 1")
        return value


class TaskBatchSpec(KubeModel):
    handler: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="module:function(event, context) -> dict, importable in the worker image.",
    )
    image: str | None = Field(default=None, min_length=1, description="Worker image; defaults to the operator's image.")
    workers: Workers = Field(default_factory=Workers)
    on_error: OnError = Field(default=OnError.RETRY,
                              description="Retry tasks whose handler raises (within spec.retry), or fail them at once.")
    retry: RetryPolicySpec = Field(default_factory=RetryPolicySpec)
    task_timeout_seconds: int | None = Field(default=None, ge=1)
    heartbeat_seconds: int = Field(default=5, ge=1)
    lease_seconds: int = Field(default=30, ge=2)
    batch_size: int = Field(default=1024, ge=1, le=10000, description="Most tasks a worker claims at a time.")
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the worker pods.")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    suspend: bool = False
    cancel: bool = Field(default=False, description="Cancel every task not yet finished (cannot be undone).")


class TaskCounts(KubeModel):
    pending: int = 0
    processing: int = 0
    retrying: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class ErrorCounts(KubeModel):
    """Failed attempts by what they are blamed on (a task retried twice counts twice)."""

    application: int = Field(default=0, description="The handler raised (or called sys.exit()).")
    timeout: int = Field(default=0, description="The handler ran past taskTimeoutSeconds.")
    infrastructure: int = Field(default=0, description="The worker died or lost contact: its lease lapsed.")


class TaskBatchStatus(KubeModel):
    phase: BatchPhase = BatchPhase.PENDING
    counts: TaskCounts = Field(default_factory=TaskCounts)
    errors: ErrorCounts = Field(default_factory=ErrorCounts)
    workers: int = 0
    start_time: datetime.datetime | None = None
    completion_time: datetime.datetime | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_generation: int | None = Field(default=None, ge=0)


# Rules of the worker settings a TaskBatch and a TaskPool share.
WORKER_RULES = [
    {"rule": "self.workers.min <= self.workers.max", "message": "spec.workers.min must not exceed spec.workers.max",
     "fieldPath": ".workers.min"},
    {"rule": "self.leaseSeconds > self.heartbeatSeconds", "message": "spec.leaseSeconds must exceed spec.heartbeatSeconds",
     "fieldPath": ".leaseSeconds"},
]
SPEC_RULES = WORKER_RULES
FIELD_RULES = {
    "cancel": [{"rule": "oldSelf == false || self == true", "message": "spec.cancel cannot be undone"}],
    "handler": [{"rule": "self == oldSelf", "message": "spec.handler is immutable"}],
    # The multiplier's lower bound, for the API server too (the pattern alone admits "0.5").
    "retry": [{"rule": "!has(self.backoffMultiplier) || double(string(self.backoffMultiplier)) >= 1.0",
               "message": "spec.retry.backoffMultiplier must be at least 1", "fieldPath": ".backoffMultiplier"}],
}


def name_rules(max_length: int) -> list[dict[str, str]]:
    """The object's name is a DNS-1123 label short enough to prefix its workers' names."""
    return [{
        "rule": f"self.metadata.name.size() <= {max_length} && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "message": f"metadata.name must be a DNS-1123 label of at most {max_length} characters",
    }]


ROOT_RULES = name_rules(MAX_NAME_LENGTH)
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.counts.total"},
    {"name": "Pending", "type": "integer", "jsonPath": ".status.counts.pending"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.counts.processing"},
    {"name": "Finished", "type": "integer", "jsonPath": ".status.counts.finished"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.counts.failed"},
    {"name": "Workers", "type": "integer", "jsonPath": ".status.workers"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Retrying", "type": "integer", "priority": 1, "jsonPath": ".status.counts.retrying"},
    {"name": "Cancelled", "type": "integer", "priority": 1, "jsonPath": ".status.counts.cancelled"},
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": '.status.conditions[?(@.type=="Ready")].message'},
]
