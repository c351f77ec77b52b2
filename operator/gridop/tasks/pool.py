"""TaskPool rules: the worker Deployment of a pool and how many workers it runs.

Pure functions (no I/O): the pool reconciler reads the pool's counters from Redis and the
Deployment from the API, and carries out what these return.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from ..api.v1alpha1 import set_condition, set_progress
from ..api.v1alpha1.taskbatch import TaskCounts
from ..api.v1alpha1.taskpool import KIND, TaskPoolSpec, TaskPoolStatus
from ..settings import Settings
from .batch import WORKER_SCRAPE, owner_reference, worker_pod_spec

POOL_LABEL = "gridop.io/taskpool"


def deployment_name(name: str) -> str:
    return f"{name}-pool"


def desired_pool_workers(spec: TaskPoolSpec, counts: TaskCounts) -> int:
    """One worker per `tasksPerWorker` queued or running tasks, within [min, max]."""
    active = counts.pending + counts.retrying + counts.processing
    return max(spec.workers.min, min(spec.workers.max, math.ceil(active / spec.workers.tasks_per_worker)))


def pool_deployment(meta: dict[str, Any], spec: TaskPoolSpec, settings: Settings, replicas: int,
                    redis_secret: str) -> dict[str, Any]:
    name = meta["name"]
    labels = {"app.kubernetes.io/name": "gridop-worker", "app.kubernetes.io/managed-by": "gridop", POOL_LABEL: name}
    target = [{"name": "GRIDOP_POOL", "value": name},
              {"name": "GRIDOP_RESULT_RETENTION_SECONDS", "value": str(spec.result_retention_seconds)}]
    pod_spec = worker_pod_spec(spec, settings, meta["namespace"], redis_secret, target, spec.on_error, "Always")
    return {
        "metadata": {"name": deployment_name(name), "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [owner_reference(KIND, meta)]},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {POOL_LABEL: name}},
            # Scaling in stops workers with SIGTERM: they finish the claim in hand (about 0.1 s of work).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels, "annotations": WORKER_SCRAPE}, "spec": pod_spec},
        },
    }


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
