"""TaskPool rules: how many workers a pool runs, and its status.

Pure functions (no I/O): the controller (`taskpool`) reads the pool's counters from Redis and
the Deployment from its cache, and carries out what these return.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from ..api.v1beta1 import set_condition, set_progress
from ..api.v1beta1.taskbatch import TaskCounts
from ..api.v1beta1.taskpool import TaskPoolSpec, TaskPoolStatus


def desired_pool_workers(spec: TaskPoolSpec, counts: TaskCounts) -> int:
    """One worker per `tasksPerWorker` queued or running tasks, within [min, max]."""
    active = counts.pending + counts.retrying + counts.processing
    return max(spec.workers.min, min(spec.workers.max, math.ceil(active / spec.workers.tasks_per_worker)))


def pool_status(meta: dict[str, Any], old: TaskPoolStatus, sessions: int, counts: TaskCounts, workers: int,
                ready_workers: int, error: str | None, now: datetime.datetime) -> TaskPoolStatus:
    st = old.model_copy(deep=True)
    generation = meta.get("generation")
    st.observed_generation = generation
    if error is not None:
        ok, reason, message = False, "DataPlaneUnavailable", error
    else:
        st.sessions, st.counts, st.workers, st.ready_workers = sessions, counts, workers, ready_workers
        if workers and not ready_workers:
            ok, reason, message = False, "WorkersStarting", f"0 of {workers} workers ready"
        else:
            ok, reason = True, "Serving"
            message = f"{ready_workers} workers, {sessions} sessions, {counts.pending + counts.retrying} tasks queued"
    st.conditions = set_condition(st.conditions, type="Ready", status=ok, reason=reason, message=message, now=now,
                                  generation=generation)
    st.conditions = set_progress(st.conditions, now=now, generation=generation,
                                 reconciling=(reason, message) if reason == "WorkersStarting" else None,
                                 stalled=(reason, message) if reason == "DataPlaneUnavailable" else None)
    return st
