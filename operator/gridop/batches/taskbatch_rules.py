"""TaskBatch rules: workers to run, phase and conditions, from the batch's counters.

Pure functions (no I/O): the controller (`taskbatch`) reads the counters from Redis and the Job
from its cache, and carries out what `decide()` returns.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from ..api.v1beta1 import find_condition, set_condition, set_progress
from ..api.v1beta1.taskbatch import BatchPhase, ErrorCounts, TaskBatchSpec, TaskBatchStatus, TaskCounts


def desired_workers(spec: TaskBatchSpec, counts: TaskCounts) -> int:
    """Scale with queue depth: one worker per `tasksPerWorker` active tasks, within [min, max]."""
    active = counts.pending + counts.retrying + counts.processing
    if active == 0:
        return 0
    wanted = math.ceil(active / spec.workers.tasks_per_worker)
    return max(spec.workers.min, min(spec.workers.max, max(1, wanted)))


@dataclasses.dataclass
class BatchDecision:
    status: TaskBatchStatus
    parallelism: int
    cancel_tasks: bool = False
    set_suspended: bool | None = None
    delete_batch: bool = False
    requeue_after: float = 1.0


def decide(meta: dict[str, Any], *args: Any, now: datetime.datetime, **kwargs: Any) -> BatchDecision:
    """The batch's decision, with the kstatus conditions derived from its phase and Ready."""
    d = _decide(meta, *args, now=now, **kwargs)
    st = d.status
    ready = find_condition(st.conditions, "Ready")
    why = (ready.reason, ready.message) if ready is not None else ("Pending", "waiting for the operator")
    reconciling = stalled = None
    if why[0] == "DataPlaneUnavailable" or st.phase == BatchPhase.FAILED:
        stalled = why
    elif st.phase in (BatchPhase.PENDING, BatchPhase.RUNNING):
        reconciling = why
    st.conditions = set_progress(st.conditions, reconciling=reconciling, stalled=stalled, now=now,
                                 generation=meta.get("generation"))
    return d


@dataclasses.dataclass
class _Pass:
    meta: dict[str, Any]
    spec: TaskBatchSpec
    counts: TaskCounts
    data_meta: dict[str, str]
    now: datetime.datetime
    resync: float
    d: BatchDecision

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        st = self.d.status
        st.conditions = set_condition(st.conditions, type=type_, status=ok, reason=reason, message=message,
                                      now=self.now, generation=self.meta.get("generation"))


def _decide(
    meta: dict[str, Any],
    spec: TaskBatchSpec,
    status: TaskBatchStatus,
    counts: TaskCounts,
    data_meta: dict[str, str],
    *,
    data_plane_error: str | None,
    now: datetime.datetime,
    resync: float,
    errors: ErrorCounts | None = None,
) -> BatchDecision:
    st = status.model_copy(deep=True)
    st.observed_generation = meta.get("generation")
    if data_plane_error is not None:
        st.conditions = set_condition(st.conditions, type="Ready", status=False, reason="DataPlaneUnavailable",
                                      message=data_plane_error, now=now, generation=meta.get("generation"))
        return BatchDecision(st, parallelism=status.workers, requeue_after=min(resync, 10.0))
    st.counts = counts
    if errors is not None:
        st.errors = errors
    p = _Pass(meta, spec, counts, data_meta, now, resync, BatchDecision(st, parallelism=0, requeue_after=1.0))
    _reopen_if_appended(p)
    if BatchPhase(st.phase).is_terminal:
        _finished(p)
    else:
        _active(p)
    return p.d


def _active_tasks(counts: TaskCounts) -> int:
    return counts.pending + counts.retrying + counts.processing


def _reopen_if_appended(p: _Pass) -> None:
    """Tasks appended to a finished batch: it runs again (a long-lived batch), workers come back."""
    st, active = p.d.status, _active_tasks(p.counts)
    if BatchPhase(st.phase).is_terminal and active > 0 and st.phase != BatchPhase.CANCELLED:
        st.phase = BatchPhase.RUNNING
        st.completion_time = None
        p.condition("Complete", False, "Running", f"{active} tasks appended after the batch finished")


def _finished(p: _Pass) -> None:
    """A finished batch: no workers; deleted once its TTL after finishing has passed."""
    st, d, spec = p.d.status, p.d, p.spec
    d.parallelism = 0
    if spec.ttl_seconds_after_finished is not None and st.completion_time is not None:
        expires = st.completion_time + datetime.timedelta(seconds=spec.ttl_seconds_after_finished)
        d.delete_batch = p.now >= expires
        d.requeue_after = max(0.0, (expires - p.now).total_seconds()) if not d.delete_batch else p.resync
    else:
        d.requeue_after = p.resync
    st.workers = 0


def _active(p: _Pass) -> None:
    """A batch that is not finished: its phase from its counters, and the workers it needs."""
    st, d, spec, counts, data_meta, now = p.d.status, p.d, p.spec, p.counts, p.data_meta, p.now
    active = _active_tasks(counts)
    # Only a batch whose every task is accounted for in a terminal state is over (a guard against
    # ever finishing on a partial view).
    settled = active == 0 and counts.finished + counts.failed + counts.cancelled == counts.total
    cancelled_flag = data_meta.get("cancelled") == "1"
    if spec.cancel and not cancelled_flag and counts.total > 0:
        d.cancel_tasks = True
    if data_meta and (data_meta.get("suspended") == "1") != spec.suspend:
        d.set_suspended = spec.suspend

    submitted_all = "total" in data_meta and data_meta.get("submitted") == data_meta.get("total")
    if counts.total == 0 or not submitted_all:
        st.phase = BatchPhase.PENDING if counts.total == 0 else BatchPhase.RUNNING
        p.condition("Ready", counts.total > 0, "WaitingForTasks" if counts.total == 0 else "Submitting",
                    "no tasks submitted yet" if counts.total == 0
                    else f"{data_meta.get('submitted')} of {data_meta.get('total')} tasks submitted")
        d.parallelism = desired_workers(spec, counts) if not spec.suspend else 0
    elif (cancelled_flag or spec.cancel) and settled:
        st.phase = BatchPhase.CANCELLED
        st.completion_time = st.completion_time or now
        p.condition("Ready", False, "Cancelled", f"cancelled: {counts.cancelled} tasks cancelled, {counts.finished} finished")
        p.condition("Complete", True, "Cancelled", f"{counts.cancelled} of {counts.total} tasks cancelled")
    elif settled:
        st.completion_time = st.completion_time or now
        if counts.failed or counts.cancelled:
            st.phase = BatchPhase.FAILED
            message = f"{counts.failed} of {counts.total} tasks failed, {counts.cancelled} cancelled"
            p.condition("Ready", False, "TasksFailed", message)
            p.condition("Complete", True, "TasksFailed", message)
        else:
            st.phase = BatchPhase.SUCCEEDED
            p.condition("Ready", True, "Succeeded", f"all {counts.total} tasks finished")
            p.condition("Complete", True, "Succeeded", f"all {counts.total} tasks finished")
    elif spec.suspend:
        st.phase = BatchPhase.SUSPENDED
        p.condition("Ready", False, "Suspended", f"suspended with {active} tasks left")
    else:
        st.phase = BatchPhase.RUNNING
        d.parallelism = desired_workers(spec, counts)
        p.condition("Ready", True, "Running",
                    f"{counts.finished} of {counts.total} finished, {active} to go, {d.parallelism} workers")
    if st.phase in (BatchPhase.RUNNING, BatchPhase.SUSPENDED) and st.start_time is None:
        st.start_time = now
    if BatchPhase(st.phase).is_terminal:
        d.parallelism = 0
        if spec.ttl_seconds_after_finished is not None:
            d.requeue_after = float(spec.ttl_seconds_after_finished)
    st.workers = d.parallelism
