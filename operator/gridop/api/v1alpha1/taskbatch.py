"""TaskBatch at v1alpha1, as it was released: retry delays in float seconds and `retry.onError`.

v1beta1 moved `onError` up to the spec (where a TaskPool has it) and holds delays in integer
milliseconds and the multiplier as an integer or decimal string (no floats in a spec).
"""

from __future__ import annotations

from pydantic import Field

from ..v1beta1.common import KubeModel
from ..v1beta1.taskbatch import (
    CATEGORIES,
    KIND,
    PLURAL,
    PRINTER_COLUMNS,
    ROOT_RULES,
    SHORT_NAMES,
    SINGULAR,
    SPEC_RULES,
    OnError,
    TaskBatchStatus,
    Workers,
)

__all__ = ["CATEGORIES", "FIELD_RULES", "KIND", "PLURAL", "PRINTER_COLUMNS", "ROOT_RULES", "SHORT_NAMES", "SINGULAR",
           "SPEC_RULES", "RetryPolicySpec", "TaskBatchSpec", "TaskBatchStatus"]


class RetryPolicySpec(KubeModel):
    max_retries: int = Field(default=3, ge=0, le=100,
                             description="Retries of a task whose handler raised or timed out.")
    max_infrastructure_retries: int = Field(
        default=3, ge=0, le=100,
        description="Retries of a task whose worker died or lost contact under it (a lost lease); they do not "
                    "spend maxRetries, and such a task is retried alone, so a crashing task cannot fail its neighbours.",
    )
    backoff_seconds: float = Field(default=1.0, ge=0, description="Delay before the first retry.")
    backoff_multiplier: float = Field(default=2.0, ge=1, description="Factor applied to the delay at each retry.")
    backoff_max_seconds: float = Field(default=60.0, ge=0, description="Upper bound of the delay.")
    on_error: OnError = Field(default=OnError.RETRY, description="Retry tasks whose handler raises, or fail them at once.")


class TaskBatchSpec(KubeModel):
    handler: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="module:function(event, context) -> dict, importable in the worker image.",
    )
    image: str | None = Field(default=None, min_length=1, description="Worker image; defaults to the operator's image.")
    workers: Workers = Field(default_factory=Workers)
    retry: RetryPolicySpec = Field(default_factory=RetryPolicySpec)
    task_timeout_seconds: int | None = Field(default=None, ge=1)
    heartbeat_seconds: int = Field(default=5, ge=1)
    lease_seconds: int = Field(default=30, ge=2)
    batch_size: int = Field(default=1024, ge=1, le=10000, description="Most tasks a worker claims at a time.")
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the worker pods.")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    suspend: bool = False
    cancel: bool = Field(default=False, description="Cancel every task not yet finished (cannot be undone).")


FIELD_RULES = {
    "cancel": [{"rule": "oldSelf == false || self == true", "message": "spec.cancel cannot be undone"}],
    "handler": [{"rule": "self == oldSelf", "message": "spec.handler is immutable"}],
}
