"""The TaskBatch controller: counters from Redis, workers as a Job, status at a bounded rate.

A pass reads the batch and its Job from the caches (never the API server), sweeps the data plane
(lost leases, due retries), reads the counters (one script call), scales the worker Job and writes
the status only when it changed and no more often than `batch_status_interval_seconds`, whatever
the task rate. A running batch asks for its next pass a second later; the key's timer brings it.

A batch carries gridop's finalizer: deleting it (or its namespace) removes its data-plane keys
before the API server lets it go.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from .. import metrics
from ..api.v1beta1 import utcnow
from ..api.v1beta1.common import FINALIZER
from ..api.v1beta1.taskbatch import BatchPhase, ErrorCounts, TaskBatchSpec, TaskBatchStatus, TaskCounts, decimal_value
from ..kube import AlreadyExists, KubeClient, KubeError, resources
from ..kube.controller import Controller, TerminatingNamespaces
from ..kube.events import EventRecorder
from ..kube.informer import Informer
from ..settings import Settings
from ..tasks.store import RetryPolicy
from .common import NO_DATA_PLANE, DataPlane, ObjectWriter, child_view
from .taskbatch_rules import decide
from .workers import BATCH_LABEL, job_name, worker_job

log = logging.getLogger(__name__)

# How long a deleted batch waits for an unreachable data plane before it is let go anyway (its
# keys then stay behind in Redis, which the log says).
CLEANUP_PATIENCE = datetime.timedelta(minutes=5)
TASK_STATES = ("pending", "processing", "retrying", "finished", "failed", "cancelled")


def retry_policy(spec: TaskBatchSpec) -> RetryPolicy:
    r = spec.retry
    return RetryPolicy(max_retries=r.max_retries, backoff_seconds=r.backoff_milliseconds / 1000,
                       backoff_multiplier=decimal_value(r.backoff_multiplier),
                       backoff_max_seconds=r.backoff_max_milliseconds / 1000,
                       max_infrastructure_retries=r.max_infrastructure_retries)


class TaskBatchReconciler:
    def __init__(self, client: KubeClient, settings: Settings, data: DataPlane, recorder: EventRecorder,
                 *, namespaces: list[str] | None = None, clock: Any = utcnow):
        self.client = client
        self.settings = settings
        self.data = data
        self.recorder = recorder
        self.clock = clock
        scoped: dict[str, Any] = {"namespaces": namespaces or None}
        self.batches = Informer(client, resources.TASKBATCHES, **scoped)
        self.jobs = Informer(client, resources.JOBS, label_selector=BATCH_LABEL,
                             transform=child_view("parallelism", "suspend"), **scoped)
        self.writer = ObjectWriter(client, self.batches, settings.batch_status_interval_seconds)
        self._terminating = TerminatingNamespaces()
        data.users.append(self.batches)

    def controller(self) -> Controller:
        return Controller("TaskBatch", self, self.batches, children={self.jobs: BATCH_LABEL})

    async def reconcile(self, namespace: str, name: str, *, due: bool = True) -> float | None:
        body = self.batches.get(namespace, name)
        if body is None:
            self.forget(namespace, name)
            await self.data.release_if_unused(namespace)
            return None
        if body["metadata"].get("deletionTimestamp"):
            return await self.finalize(body)
        started = time.perf_counter()
        await self.writer.add_finalizer(body)
        spec = TaskBatchSpec.model_validate(body["spec"])
        status = TaskBatchStatus.model_validate(body.get("status") or {})
        store = self.data.store(namespace)
        counts, errors, error = TaskCounts(), ErrorCounts(), None
        data_meta: dict[str, str] = {}
        if store is None:
            error = NO_DATA_PLANE
        else:
            try:
                if not BatchPhase(status.phase).is_terminal:
                    with metrics.SWEEP_SECONDS.time():
                        await store.sweep(name)
                data_meta, raw, raw_errors = await store.snapshot(name)
                counts = TaskCounts(total=int(data_meta.get("total", 0)), **raw)
                errors = ErrorCounts(**raw_errors)
                policy = retry_policy(spec)
                if any(data_meta.get(k) != v for k, v in policy.meta_fields().items()):
                    # The TaskBatch's policy governs its tasks, whoever submits them; written before
                    # the first worker exists (the Job is created below, in the same pass).
                    await store.set_policy(name, policy)
            except Exception as exc:  # Redis down or refusing: report it, keep the last counts
                error = f"data plane unreachable: {type(exc).__name__}: {exc}"
        decision = decide(body["metadata"], spec, status, counts, data_meta, data_plane_error=error, errors=errors,
                          now=self.clock(), resync=self.settings.resync_seconds)
        log.debug("taskbatch %s/%s: counts %s, phase %s, workers %d, next pass in %.1fs", namespace, name,
                  counts.to_kube(), BatchPhase(decision.status.phase).value, decision.parallelism, decision.requeue_after)
        if error is None:
            self._publish(namespace, name, counts, decision.parallelism)
        if store is not None and error is None:
            if decision.cancel_tasks:
                cancelled = await store.cancel(name)
                await self.recorder.record(body, "Normal", "Cancelled", f"cancelled tasks: {cancelled}")
            if decision.set_suspended is not None:
                await store.set_suspended(name, decision.set_suspended)
        if error is None and self.data.credentials is not None and namespace not in self._terminating:
            await self._apply_job(body, spec, decision.parallelism)
        if decision.delete_batch:
            await self.client.delete(resources.TASKBATCHES, name, namespace)
            return None  # its deletion is the next event
        await self._report(body, status, decision.status)
        metrics.RECONCILE_SECONDS.labels("TaskBatch").observe(time.perf_counter() - started)
        return decision.requeue_after

    def _publish(self, namespace: str, name: str, counts: TaskCounts, workers: int) -> None:
        for state, value in counts.to_kube().items():
            if state != "total":
                metrics.TASKS.labels(namespace, name, state).set(value)
        metrics.QUEUE_DEPTH.labels(namespace, name).set(counts.pending + counts.retrying)
        metrics.BATCH_WORKERS.labels(namespace, name).set(workers)

    async def _apply_job(self, body: Mapping[str, Any], spec: TaskBatchSpec, parallelism: int) -> None:
        """Create the worker Job, or scale it, from what the cache holds. The namespace's data-plane
        Secret comes first, even before there is work: clients read their URL from it."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], job_name(meta["name"])
        job = self.jobs.get(namespace, name)
        assert self.data.credentials is not None
        try:
            secret = await self.data.credentials.ensure(namespace)
            if job is None and parallelism == 0:
                return  # nothing to run yet (or any more)
            if job is None:
                self.jobs.remember(await self.client.create(
                    resources.JOBS, worker_job(dict(meta), spec, self.settings, parallelism, secret), namespace))
                return
            current = job.get("spec") or {}
            if current.get("parallelism") != parallelism or bool(current.get("suspend")) != spec.suspend:
                self.jobs.remember(await self.client.patch(
                    resources.JOBS, name, {"spec": {"parallelism": parallelism, "suspend": spec.suspend}}, namespace))
        except AlreadyExists:
            pass  # made by an earlier leader and not cached yet: its watch event brings it, and a pass
        except KubeError as exc:
            if not exc.being_terminated:
                raise
            self._terminating.mark(namespace, "batch workers")

    async def _report(self, body: Mapping[str, Any], old: TaskBatchStatus, new: TaskBatchStatus) -> None:
        meta = body["metadata"]
        phase_changed = old.phase != new.phase
        written = await self.writer.status(body, new.to_kube(), urgent=phase_changed)
        if written and phase_changed:
            ready = next((c for c in new.conditions if c.type == "Ready"), None)
            kind = "Warning" if new.phase == BatchPhase.FAILED.value else "Normal"
            phase = BatchPhase(new.phase).value
            await self.recorder.record(body, kind, phase, ready.message if ready else phase)
            log.info("taskbatch %s/%s: %s -> %s", meta["namespace"], meta["name"], BatchPhase(old.phase).value,
                     BatchPhase(new.phase).value)

    async def finalize(self, body: Mapping[str, Any]) -> float | None:
        """Remove the batch's data-plane keys, then let it go (its Job goes with it, by owner)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if resources_held(body):
            store = self.data.store(namespace)
            if store is not None:
                try:
                    removed = await store.delete(name)
                    log.info("taskbatch %s/%s: removed %d data-plane keys", namespace, name, removed)
                except Exception as exc:
                    if not self._out_of_patience(meta):
                        raise  # backed off and tried again
                    log.warning("taskbatch %s/%s: data plane unreachable for %s since its deletion (%s): "
                                "letting it go, its keys stay in Redis", namespace, name, CLEANUP_PATIENCE, exc)
            await self.writer.release(body)
        self.forget(namespace, name)
        return None

    def _out_of_patience(self, meta: Mapping[str, Any]) -> bool:
        deleted = datetime.datetime.fromisoformat(str(meta["deletionTimestamp"]).replace("Z", "+00:00"))
        return self.clock() - deleted > CLEANUP_PATIENCE

    def forget(self, namespace: str, name: str) -> None:
        self.writer.forget(namespace, name)
        for gauge in (metrics.QUEUE_DEPTH, metrics.BATCH_WORKERS):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        for state in TASK_STATES:
            with contextlib.suppress(KeyError):
                metrics.TASKS.remove(namespace, name, state)


def resources_held(body: Mapping[str, Any]) -> bool:
    """Whether gridop's finalizer still holds the object (its cleanup has not run yet)."""
    return FINALIZER in (body["metadata"].get("finalizers") or [])
