"""TaskBatch rules: workers to run, phase and conditions, from the batch's counters.

Pure functions (no I/O): the reconciler reads the counters from Redis and the Job from the
API, and carries out what `decide()` returns.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from ..api.v1alpha1 import API_VERSION, find_condition, set_condition, set_progress
from ..api.v1alpha1.taskbatch import KIND, BatchPhase, ErrorCounts, OnError, TaskBatchSpec, TaskBatchStatus, TaskCounts
from ..api.v1alpha1.taskpool import TaskPoolSpec
from ..settings import Settings
from .store import key_prefix

BATCH_LABEL = "gridop.io/taskbatch"
WORKER_METRICS_PORT = 9100
# Prometheus's conventional scrape annotations (the chart's PodMonitor selects worker pods by label too).
WORKER_SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": str(WORKER_METRICS_PORT),
                 "prometheus.io/path": "/metrics"}


def job_name(name: str) -> str:
    return f"{name}-workers"


def desired_workers(spec: TaskBatchSpec, counts: TaskCounts) -> int:
    """Scale with queue depth: one worker per `tasksPerWorker` active tasks, within [min, max]."""
    active = counts.pending + counts.retrying + counts.processing
    if active == 0:
        return 0
    wanted = math.ceil(active / spec.workers.tasks_per_worker)
    return max(spec.workers.min, min(spec.workers.max, max(1, wanted)))


def worker_pod_spec(spec: TaskBatchSpec | TaskPoolSpec, settings: Settings, namespace: str, redis_secret: str,
                    target: list[dict[str, Any]], on_error: OnError, restart_policy: str) -> dict[str, Any]:
    """The pod of a batch's or a pool's workers. `target` says what they serve (GRIDOP_SESSION_ID
    or GRIDOP_POOL). The data-plane URL comes from `redis_secret` in the namespace (the operator
    keeps it, with credentials limited to this namespace's keys), so no password appears here."""
    env = [
        *target,
        {"name": "GRIDOP_KEY_PREFIX", "value": key_prefix(namespace)},
        {"name": "GRIDOP_HANDLER", "value": spec.handler},
        {"name": "GRIDOP_BATCH_SIZE", "value": str(spec.batch_size)},
        {"name": "GRIDOP_HEARTBEAT_SECONDS", "value": str(spec.heartbeat_seconds)},
        {"name": "GRIDOP_LEASE_SECONDS", "value": str(spec.lease_seconds)},
        {"name": "GRIDOP_RETRY_ON_ERROR", "value": "true" if on_error == OnError.RETRY else "false"},
        {"name": "GRIDOP_LOG_FORMAT", "value": "json"},
        {"name": "GRIDOP_METRICS_PORT", "value": str(WORKER_METRICS_PORT)},
        *({"name": e.name, "value": e.value} for e in spec.workers.env),
    ]
    if spec.task_timeout_seconds:
        env.append({"name": "GRIDOP_TASK_TIMEOUT_SECONDS", "value": str(spec.task_timeout_seconds)})
    env.append({"name": "GRIDOP_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": redis_secret, "key": "url"}}})
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image or settings.image,
        "args": ["worker"],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.workers.resources:
        container["resources"] = spec.workers.resources.to_kube()
    pod_spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Workers drain on SIGTERM: they finish the claim in hand before exiting.
        "terminationGracePeriodSeconds": max(30, (spec.task_timeout_seconds or 0) + 10),
        "containers": [container],
    }
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return pod_spec


def owner_reference(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def worker_job(meta: dict[str, Any], spec: TaskBatchSpec, settings: Settings, parallelism: int,
               redis_secret: str) -> dict[str, Any]:
    """The work-queue Job of a batch."""
    name = meta["name"]
    labels = {"app.kubernetes.io/name": "gridop-worker", "app.kubernetes.io/managed-by": "gridop", BATCH_LABEL: name}
    pod_spec = worker_pod_spec(spec, settings, meta["namespace"], redis_secret, [{"name": "GRIDOP_SESSION_ID", "value": name}],
                               spec.retry.on_error, "OnFailure")
    return {
        "metadata": {"name": job_name(name), "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [owner_reference(KIND, meta)]},
        "spec": {
            # Work-queue Job: pods pull until the queue is empty, then exit 0; parallelism scales.
            "parallelism": parallelism,
            "backoffLimit": 1000,
            "suspend": spec.suspend,
            "template": {"metadata": {"labels": labels, "annotations": WORKER_SCRAPE}, "spec": pod_spec},
        },
    }


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
    gen = meta.get("generation")
    st = status.model_copy(deep=True)
    st.observed_generation = gen

    def ready(ok: bool, reason: str, message: str) -> None:
        st.conditions = set_condition(st.conditions, type="Ready", status=ok, reason=reason, message=message,
                                      now=now, generation=gen)

    def complete(ok: bool, reason: str, message: str) -> None:
        st.conditions = set_condition(st.conditions, type="Complete", status=ok, reason=reason, message=message,
                                      now=now, generation=gen)

    if data_plane_error is not None:
        ready(False, "DataPlaneUnavailable", data_plane_error)
        return BatchDecision(st, parallelism=status.workers, requeue_after=min(resync, 10.0))

    st.counts = counts
    if errors is not None:
        st.errors = errors
    d = BatchDecision(st, parallelism=0, requeue_after=1.0)
    active = counts.pending + counts.retrying + counts.processing
    if BatchPhase(st.phase).is_terminal and active > 0 and st.phase != BatchPhase.CANCELLED:
        # Tasks appended to a finished batch: it runs again (a long-lived batch), workers come back.
        st.phase = BatchPhase.RUNNING
        st.completion_time = None
        complete(False, "Running", f"{active} tasks appended after the batch finished")
    if BatchPhase(st.phase).is_terminal:
        d.parallelism = 0
        if spec.ttl_seconds_after_finished is not None and st.completion_time is not None:
            expires = st.completion_time + datetime.timedelta(seconds=spec.ttl_seconds_after_finished)
            d.delete_batch = now >= expires
            d.requeue_after = max(0.0, (expires - now).total_seconds()) if not d.delete_batch else resync
        else:
            d.requeue_after = resync
        st.workers = 0
        return d

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
        ready(counts.total > 0, "WaitingForTasks" if counts.total == 0 else "Submitting",
              "no tasks submitted yet" if counts.total == 0 else f"{data_meta.get('submitted')} of {data_meta.get('total')} tasks submitted")
        d.parallelism = desired_workers(spec, counts) if not spec.suspend else 0
    elif (cancelled_flag or spec.cancel) and settled:
        st.phase = BatchPhase.CANCELLED
        st.completion_time = st.completion_time or now
        ready(False, "Cancelled", f"cancelled: {counts.cancelled} tasks cancelled, {counts.finished} finished")
        complete(True, "Cancelled", f"{counts.cancelled} of {counts.total} tasks cancelled")
    elif settled:
        st.completion_time = st.completion_time or now
        if counts.failed or counts.cancelled:
            st.phase = BatchPhase.FAILED
            message = f"{counts.failed} of {counts.total} tasks failed, {counts.cancelled} cancelled"
            ready(False, "TasksFailed", message)
            complete(True, "TasksFailed", message)
        else:
            st.phase = BatchPhase.SUCCEEDED
            ready(True, "Succeeded", f"all {counts.total} tasks finished")
            complete(True, "Succeeded", f"all {counts.total} tasks finished")
    elif spec.suspend:
        st.phase = BatchPhase.SUSPENDED
        ready(False, "Suspended", f"suspended with {active} tasks left")
    else:
        st.phase = BatchPhase.RUNNING
        d.parallelism = desired_workers(spec, counts)
        ready(True, "Running", f"{counts.finished} of {counts.total} finished, {active} to go, {d.parallelism} workers")
    if st.phase in (BatchPhase.RUNNING, BatchPhase.SUSPENDED) and st.start_time is None:
        st.start_time = now
    if BatchPhase(st.phase).is_terminal:
        d.parallelism = 0
        if spec.ttl_seconds_after_finished is not None:
            d.requeue_after = float(spec.ttl_seconds_after_finished)
    st.workers = d.parallelism
    return d
