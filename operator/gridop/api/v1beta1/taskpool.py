"""TaskPool: workers for a handler that serve every session sent to the pool, as HTC-Grid's agents do.

A plain `send()` (no session id) from the SDK goes to the namespace's pool named `default` (the
SDK's `pool` setting picks another); the operator runs the pool's workers as a Deployment scaled
with the pool's queue depth. A TaskBatch remains the way to give one session workers and a
policy of its own.
"""

from __future__ import annotations

from pydantic import Field

from .common import CONDITIONS_LIST, Condition, KubeModel
from .taskbatch import WORKER_RULES, OnError, TaskCounts, Workers, name_rules

KIND = "TaskPool"
PLURAL = "taskpools"
SINGULAR = "taskpool"
SHORT_NAMES = ["tp"]
CATEGORIES = ["grid"]
MAX_NAME_LENGTH = 58  # `<name>-pool` names the Deployment (and its pods' prefix)


class PoolWorkers(Workers):
    min: int = Field(default=1, ge=0, le=1000, description="Workers kept running, even with no work (0: scale to zero).")
    max: int = Field(default=4, ge=1, le=1000, description="Upper bound when scaling with the pool's queue depth.")
    tasks_per_worker: int = Field(default=100, ge=1, description="Queued and running tasks one worker is expected to absorb.")


class TaskPoolSpec(KubeModel):
    handler: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="module:function(event, context) -> dict, importable in the worker image.",
    )
    image: str | None = Field(default=None, min_length=1, description="Worker image; defaults to the operator's image.")
    workers: PoolWorkers = Field(default_factory=PoolWorkers)
    on_error: OnError = Field(default=OnError.RETRY,
                              description="Retry tasks whose handler raises (within the session's policy), or fail them at once.")
    task_timeout_seconds: int | None = Field(default=None, ge=1)
    heartbeat_seconds: int = Field(default=5, ge=1)
    lease_seconds: int = Field(default=30, ge=2)
    batch_size: int = Field(default=1024, ge=1, le=10000, description="Most tasks a worker claims at a time.")
    result_retention_seconds: int = Field(
        default=86400, ge=60, description="How long a finished session's tasks and results stay in the data plane.",
    )
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the worker pods.")


class TaskPoolStatus(KubeModel):
    workers: int = Field(default=0, description="Workers the pool asks for.")
    ready_workers: int = Field(default=0, description="Workers running and ready.")
    sessions: int = Field(default=0, description="Sessions in the pool with tasks not yet terminal.")
    counts: TaskCounts = Field(default_factory=TaskCounts)
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_generation: int | None = Field(default=None, ge=0)


SPEC_RULES = WORKER_RULES
ROOT_RULES = name_rules(MAX_NAME_LENGTH)
PRINTER_COLUMNS = [
    {"name": "Handler", "type": "string", "jsonPath": ".spec.handler"},
    {"name": "Workers", "type": "integer", "jsonPath": ".status.workers"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyWorkers"},
    {"name": "Sessions", "type": "integer", "jsonPath": ".status.sessions"},
    {"name": "Pending", "type": "integer", "jsonPath": ".status.counts.pending"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.counts.processing"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": '.status.conditions[?(@.type=="Ready")].message'},
]
