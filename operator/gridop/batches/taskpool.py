"""The TaskPool controller: a worker Deployment scaled on the pool's queue depth.

A pass reads the pool and its Deployment from the caches (never the API server), reads the
counters of the pool's sessions from Redis (its workers sweep them), scales the Deployment (and
patches its template when the spec changed it), and writes the status at a bounded rate. A pool
asks for its next pass a second later, busy or idle (tasks sent to an idle pool reach it through
Redis, where no watch event announces them); the key's timer brings it.

Pools hold no data of their own beyond their sessions, which their clients own: a pool carries no
finalizer (one left by an earlier gridop version is taken off when the pool is deleted).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from .. import metrics
from ..api.v1beta1 import utcnow
from ..api.v1beta1.taskbatch import TaskCounts
from ..api.v1beta1.taskpool import TaskPoolSpec, TaskPoolStatus
from ..kube import AlreadyExists, KubeClient, KubeError, resources
from ..kube.controller import Controller, TerminatingNamespaces
from ..kube.informer import Informer
from ..kube.meta import TEMPLATE_HASH
from ..settings import Settings
from .common import NO_DATA_PLANE, DataPlane, ObjectWriter, child_view
from .taskpool_rules import desired_pool_workers, pool_status
from .workers import POOL_LABEL, deployment_name, pool_deployment

log = logging.getLogger(__name__)

RESYNC = 1.0  # seconds between a pool's passes: how soon new work scales its workers


class TaskPoolReconciler:
    def __init__(self, client: KubeClient, settings: Settings, data: DataPlane, *,
                 namespaces: list[str] | None = None, clock: Any = utcnow):
        self.client = client
        self.settings = settings
        self.data = data
        self.clock = clock
        scoped: dict[str, Any] = {"namespaces": namespaces or None}
        self.pools = Informer(client, resources.TASKPOOLS, **scoped)
        self.deployments = Informer(client, resources.DEPLOYMENTS, label_selector=POOL_LABEL,
                                    transform=child_view("replicas", status_fields=("readyReplicas",)), **scoped)
        self.writer = ObjectWriter(client, self.pools, settings.batch_status_interval_seconds)
        self._terminating = TerminatingNamespaces()
        data.users.append(self.pools)

    def controller(self) -> Controller:
        return Controller("TaskPool", self, self.pools, children={self.deployments: POOL_LABEL})

    async def reconcile(self, namespace: str, name: str, *, due: bool = True) -> float | None:
        body = self.pools.get(namespace, name)
        if body is None:
            self.forget(namespace, name)
            await self._forget_data(namespace, name)
            return None
        if body["metadata"].get("deletionTimestamp"):
            await self.writer.release(body)  # a finalizer an earlier gridop version put there
            self.forget(namespace, name)
            return None
        started = time.perf_counter()
        spec = TaskPoolSpec.model_validate(body["spec"])
        status = TaskPoolStatus.model_validate(body.get("status") or {})
        store = self.data.store(namespace)
        sessions, counts, error = 0, TaskCounts(), None
        if store is None:
            error = NO_DATA_PLANE
        else:
            try:
                sessions, raw = await store.pool_counts(name)
                counts = TaskCounts(total=sum(raw.values()), **raw)
            except Exception as exc:  # Redis down or refusing: report it, keep the workers as they are
                error = f"data plane unreachable: {type(exc).__name__}: {exc}"
        replicas, ready = status.workers, status.ready_workers
        if error is None and self.data.credentials is not None:
            replicas = desired_pool_workers(spec, counts)
            ready = await self._apply_deployment(body, spec, replicas)
        if error is None:
            metrics.QUEUE_DEPTH.labels(namespace, f"pool/{name}").set(counts.pending + counts.retrying)
            metrics.BATCH_WORKERS.labels(namespace, f"pool/{name}").set(replicas)
        new = pool_status(body["metadata"], status, sessions, counts, replicas, ready, error, self.clock())
        await self.writer.status(body, new.to_kube(),
                                 urgent=[c.status for c in status.conditions] != [c.status for c in new.conditions])
        metrics.RECONCILE_SECONDS.labels("TaskPool").observe(time.perf_counter() - started)
        return RESYNC

    async def _apply_deployment(self, body: Mapping[str, Any], spec: TaskPoolSpec, replicas: int) -> int:
        """Create or scale the pool's Deployment (its template is patched when the spec changes it);
        returns its ready replicas."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], deployment_name(meta["name"])
        current = self.deployments.get(namespace, name)
        if namespace in self._terminating:
            return int(((current or {}).get("status") or {}).get("readyReplicas") or 0)
        assert self.data.credentials is not None
        try:
            secret = await self.data.credentials.ensure(namespace)
            desired = pool_deployment(dict(meta), spec, self.settings, replicas, secret)
            if current is None:
                self.deployments.remember(await self.client.create(resources.DEPLOYMENTS, desired, namespace))
                return 0
            digest = desired["metadata"]["annotations"][TEMPLATE_HASH]
            patch: dict[str, Any] = {}
            if (current.get("spec") or {}).get("replicas") != replicas:
                patch["spec"] = {"replicas": replicas}
            if (current["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != digest:
                patch = {"metadata": {"annotations": {TEMPLATE_HASH: digest}},
                         "spec": {"replicas": replicas, "template": desired["spec"]["template"]}}
            if patch:
                self.deployments.remember(await self.client.patch(resources.DEPLOYMENTS, name, patch, namespace))
        except AlreadyExists:
            return 0  # made by an earlier leader and not cached yet: its watch event brings it, and a pass
        except KubeError as exc:
            if not exc.being_terminated:
                raise
            self._terminating.mark(namespace, "pool workers")
        return int(((current or {}).get("status") or {}).get("readyReplicas") or 0)

    async def _forget_data(self, namespace: str, name: str) -> None:
        """The pool is gone: its own data-plane keys go, and its namespace's Redis user when unused."""
        store = self.data.store(namespace)
        if store is not None:
            try:
                await store.forget_pool(name)
            except Exception as exc:  # Redis away: two small keys stay behind
                log.warning("taskpool %s/%s: could not remove its data-plane keys: %s", namespace, name, exc)
        await self.data.release_if_unused(namespace)

    def forget(self, namespace: str, name: str) -> None:
        self.writer.forget(namespace, name)
        for gauge in (metrics.QUEUE_DEPTH, metrics.BATCH_WORKERS):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, f"pool/{name}")
