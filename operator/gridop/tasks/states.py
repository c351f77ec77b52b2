"""The per-task state machine.

    pending ──claim──▶ processing ──ok──▶ finished
       ▲                  │  │
       │        error /   │  └── error, budget spent / lease lost, budget spent ──▶ failed
       │     lease lost   ▼
       └──(backoff)── retrying
    pending | retrying | processing ──cancel──▶ cancelled
"""

from __future__ import annotations

import enum


class TaskState(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    RETRYING = "retrying"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


# What a failed attempt is blamed on: the handler raised (application), it ran past its timeout
# (timeout), or the worker under it died or lost contact (infrastructure: a lost lease).
ERROR_KINDS = ("application", "timeout", "infrastructure")
TERMINAL = frozenset({TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED})
STAGES = ("submitted", "queued", "claimed", "started", "finished")
