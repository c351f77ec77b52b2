"""The TaskBatch and TaskPool reconciler: counters from Redis, workers as a Job (a batch) or a
Deployment (a pool), status at a bounded rate.

One pass per batch about every second: sweep the data plane (lost leases, due retries), read
the counters (one HGETALL), scale the worker Job, and write the status only when it changed and
no more often than `batch_status_interval_seconds`, whatever the task rate. A pool's pass reads
the counters of the pool's sessions (its workers sweep them) and scales its Deployment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from .. import metrics
from ..api.v1alpha1 import utcnow
from ..api.v1alpha1.taskbatch import BatchPhase, ErrorCounts, TaskBatchSpec, TaskBatchStatus, TaskCounts
from ..api.v1alpha1.taskpool import TaskPoolSpec, TaskPoolStatus
from ..kube import AlreadyExists, KubeClient, merge_patch, resources
from ..kube.events import EventRecorder
from ..settings import Settings
from .batch import decide, job_name, worker_job
from .credentials import DataPlaneCredentials
from .pool import deployment_name, desired_pool_workers, pool_deployment, pool_status
from .store import RetryPolicy, TaskStore, key_prefix

log = logging.getLogger(__name__)


def retry_policy(spec: TaskBatchSpec) -> RetryPolicy:
    r = spec.retry
    return RetryPolicy(max_retries=r.max_retries, backoff_seconds=r.backoff_seconds,
                       backoff_multiplier=r.backoff_multiplier, backoff_max_seconds=r.backoff_max_seconds,
                       max_infrastructure_retries=r.max_infrastructure_retries)


class BatchReconciler:
    def __init__(self, client: KubeClient, settings: Settings, redis: Any | None, recorder: EventRecorder,
                 *, clock: Any = utcnow):
        self.client = client
        self.settings = settings
        self.redis = redis
        self.recorder = recorder
        self.clock = clock
        self._stores: dict[str, TaskStore] = {}
        self.credentials = (
            DataPlaneCredentials(client, redis, settings.redis_url, acl=settings.redis_acl)
            if redis is not None and settings.redis_url else None
        )
        self._last_write: dict[tuple[str, str], float] = {}

    def store(self, namespace: str) -> TaskStore | None:
        if self.redis is None:
            return None
        if namespace not in self._stores:
            self._stores[namespace] = TaskStore(self.redis, prefix=key_prefix(namespace))
        return self._stores[namespace]

    async def reconcile(self, namespace: str, name: str) -> float:
        body = await self.client.get(resources.TASKBATCHES, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return self.settings.resync_seconds
        spec = TaskBatchSpec.model_validate(body["spec"])
        status = TaskBatchStatus.model_validate(body.get("status") or {})
        store = self.store(namespace)
        counts, errors, data_meta, error = TaskCounts(), ErrorCounts(), {}, None
        if store is None:
            error = "the operator has no data plane: set GRIDOP_REDIS_URL (chart value redis)"
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
            for state, value in counts.to_kube().items():
                if state != "total":
                    metrics.TASKS.labels(namespace, name, state).set(value)
            metrics.QUEUE_DEPTH.labels(namespace, name).set(counts.pending + counts.retrying)
            metrics.BATCH_WORKERS.labels(namespace, name).set(decision.parallelism)

        if store is not None and error is None:
            if decision.cancel_tasks:
                cancelled = await store.cancel(name)
                await self.recorder.record(body, "Normal", "Cancelled", f"cancelled tasks: {cancelled}")
            if decision.set_suspended is not None:
                await store.set_suspended(name, decision.set_suspended)
        if error is None and self.credentials is not None:
            secret = await self.credentials.ensure(namespace)
            await self._apply_job(body, spec, decision.parallelism, secret)
        if decision.delete_batch:
            await self.client.delete(resources.TASKBATCHES, name, namespace)
            return self.settings.resync_seconds
        await self._report(body, status, decision.status)
        return decision.requeue_after

    async def _apply_job(self, body: Mapping[str, Any], spec: TaskBatchSpec, parallelism: int, secret: str) -> None:
        meta = body["metadata"]
        job = await self.client.get(resources.JOBS, job_name(meta["name"]), meta["namespace"])
        if job is None:
            if parallelism == 0:
                return  # nothing to run yet (or any more)
            try:
                await self.client.create(resources.JOBS, worker_job(dict(meta), spec, self.settings, parallelism, secret),
                                         meta["namespace"])
            except AlreadyExists:
                pass
            return
        current = job.get("spec", {})
        if current.get("parallelism") != parallelism or bool(current.get("suspend")) != spec.suspend:
            await self.client.patch(resources.JOBS, job_name(meta["name"]),
                                    {"spec": {"parallelism": parallelism, "suspend": spec.suspend}}, meta["namespace"])

    async def _report(self, body: Mapping[str, Any], old: TaskBatchStatus, new: TaskBatchStatus) -> None:
        meta = body["metadata"]
        phase_changed = old.phase != new.phase
        # Counters only: at most one write per interval.
        written = await self._write_status(resources.TASKBATCHES, body, new.to_kube(), urgent=phase_changed)
        if written and phase_changed:
            ready = next((c for c in new.conditions if c.type == "Ready"), None)
            kind = "Warning" if new.phase == BatchPhase.FAILED.value else "Normal"
            phase = BatchPhase(new.phase).value
            await self.recorder.record(body, kind, phase, ready.message if ready else phase)
            log.info("taskbatch %s/%s: %s -> %s", meta["namespace"], meta["name"], BatchPhase(old.phase).value,
                     BatchPhase(new.phase).value)

    # -- pools ------------------------------------------------------------------------------

    async def reconcile_pool(self, namespace: str, name: str) -> float:
        body = await self.client.get(resources.TASKPOOLS, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return self.settings.resync_seconds
        spec = TaskPoolSpec.model_validate(body["spec"])
        status = TaskPoolStatus.model_validate(body.get("status") or {})
        store = self.store(namespace)
        sessions, counts, error = 0, TaskCounts(), None
        if store is None:
            error = "the operator has no data plane: set GRIDOP_REDIS_URL (chart value redis)"
        else:
            try:
                sessions, raw = await store.pool_counts(name)
                counts = TaskCounts(total=sum(raw.values()), **raw)
            except Exception as exc:  # Redis down or refusing: report it, keep the workers as they are
                error = f"data plane unreachable: {type(exc).__name__}: {exc}"
        replicas, ready = status.workers, status.ready_workers
        if error is None and self.credentials is not None:
            replicas = desired_pool_workers(spec, counts)
            secret = await self.credentials.ensure(namespace)
            ready = await self._apply_deployment(body, spec, replicas, secret)
        if error is None:
            metrics.QUEUE_DEPTH.labels(namespace, f"pool/{name}").set(counts.pending + counts.retrying)
            metrics.BATCH_WORKERS.labels(namespace, f"pool/{name}").set(replicas)
        new = pool_status(body["metadata"], status, sessions, counts, replicas, ready, error, self.clock())
        await self._write_status(resources.TASKPOOLS, body, new.to_kube(),
                                 urgent=[c.status for c in status.conditions] != [c.status for c in new.conditions])
        return 2.0 if counts.pending + counts.retrying + counts.processing else 5.0

    async def _apply_deployment(self, body: Mapping[str, Any], spec: TaskPoolSpec, replicas: int, secret: str) -> int:
        """Create or scale the pool's Deployment (its template is patched when the spec changes it);
        returns its ready replicas."""
        meta = body["metadata"]
        desired = pool_deployment(dict(meta), spec, self.settings, replicas, secret)
        digest = hashlib.sha256(json.dumps(desired["spec"]["template"], sort_keys=True).encode()).hexdigest()[:16]
        desired["metadata"]["annotations"] = {"gridop.io/template-hash": digest}
        current = await self.client.get(resources.DEPLOYMENTS, deployment_name(meta["name"]), meta["namespace"])
        if current is None:
            try:
                await self.client.create(resources.DEPLOYMENTS, desired, meta["namespace"])
            except AlreadyExists:
                pass  # another pass made it: the next one scales it
            return 0
        patch: dict[str, Any] = {}
        if current.get("spec", {}).get("replicas") != replicas:
            patch["spec"] = {"replicas": replicas}
        if (current["metadata"].get("annotations") or {}).get("gridop.io/template-hash") != digest:
            patch = {"metadata": {"annotations": {"gridop.io/template-hash": digest}},
                     "spec": {"replicas": replicas, "template": desired["spec"]["template"]}}
        if patch:
            await self.client.patch(resources.DEPLOYMENTS, deployment_name(meta["name"]), patch, meta["namespace"])
        return int((current.get("status") or {}).get("readyReplicas") or 0)

    async def _write_status(self, resource: Any, body: Mapping[str, Any], after: dict[str, Any], *, urgent: bool) -> bool:
        """Write a status that changed, at most once per `batch_status_interval_seconds` unless urgent;
        returns whether it wrote."""
        meta = body["metadata"]
        key = (meta["namespace"], f"{resource.plural}/{meta['name']}")
        before = body.get("status") or {}
        now = time.monotonic()
        if before == after or (not urgent and now - self._last_write.get(key, 0.0) < self.settings.batch_status_interval_seconds):
            return False
        await self.client.patch(resource, meta["name"], {"status": merge_patch(before, after)}, meta["namespace"],
                                subresource="status")
        self._last_write[key] = now
        return True

    def forget_pool(self, namespace: str, name: str) -> None:
        self._last_write.pop((namespace, f"{resources.TASKPOOLS.plural}/{name}"), None)
        for gauge in (metrics.QUEUE_DEPTH, metrics.BATCH_WORKERS):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, f"pool/{name}")

    async def finalize(self, body: Mapping[str, Any]) -> None:
        """Remove the batch's data-plane keys; the worker Job goes with its owner."""
        meta = body["metadata"]
        store = self.store(meta["namespace"])
        if store is not None:
            removed = await store.delete(meta["name"])
            log.info("taskbatch %s/%s: removed %d data-plane keys", meta["namespace"], meta["name"], removed)
        self._last_write.pop((meta["namespace"], f"{resources.TASKBATCHES.plural}/{meta['name']}"), None)
        for gauge in (metrics.QUEUE_DEPTH, metrics.BATCH_WORKERS):
            with contextlib.suppress(KeyError):
                gauge.remove(meta["namespace"], meta["name"])
        for state in ("pending", "processing", "retrying", "finished", "failed", "cancelled"):
            with contextlib.suppress(KeyError):
                metrics.TASKS.remove(meta["namespace"], meta["name"], state)
