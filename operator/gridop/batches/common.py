"""What the TaskBatch and TaskPool controllers share: the data plane, trimmed child caches, status
writes at a bounded rate, and the finalizer.

Every write's answer goes back into the cache it came from (`Informer.remember`), so the next
pass reads what was written without asking the API server, and the echo of the write on the
watch wakes nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from ..api.v1beta1.common import FINALIZER
from ..kube import Conflict, KubeClient, NotFound, Resource, merge_patch
from ..kube.informer import Informer
from ..kube.meta import metadata_view
from ..settings import Settings
from ..tasks.store import TaskStore, key_prefix
from .credentials import DataPlaneCredentials

log = logging.getLogger(__name__)

NO_DATA_PLANE = "the operator has no data plane: set GRIDOP_REDIS_URL (chart value redis)"


def child_view(*spec_fields: str, status_fields: tuple[str, ...] = ()) -> Any:
    """A cache transform keeping a child's metadata and the few fields a pass compares: the rest of
    the object (its pod template above all) is neither stored nor a reason to wake anyone."""

    def view(obj: dict[str, Any]) -> dict[str, Any]:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        return {
            **metadata_view(obj),
            "spec": {k: spec[k] for k in spec_fields if k in spec},
            "status": {k: status[k] for k in status_fields if k in status},
        }

    return view


class DataPlane:
    """The operator's Redis connection, a task store per namespace, and the namespaces' credentials."""

    def __init__(self, client: KubeClient, settings: Settings, redis: Any | None):
        self.redis = redis
        self._stores: dict[str, TaskStore] = {}
        self.users: list[Informer] = []  # the caches of the kinds that use a namespace's data plane
        self.credentials = (
            DataPlaneCredentials(client, redis, settings.redis_url, acl=settings.redis_acl)
            if redis is not None and settings.redis_url else None
        )

    async def release_if_unused(self, namespace: str) -> None:
        """After a batch or pool is gone: a namespace with none left loses its Redis user."""
        if self.credentials is None or any(
                (obj.get("metadata") or {}).get("namespace") == namespace for cache in self.users for obj in cache.items()):
            return
        try:
            await self.credentials.release(namespace)
        except Exception as exc:  # Redis away: the user stays until the next batch's refresh
            log.warning("could not remove the data-plane user of namespace %s: %s", namespace, exc)

    def store(self, namespace: str) -> TaskStore | None:
        if self.redis is None:
            return None
        if namespace not in self._stores:
            self._stores[namespace] = TaskStore(self.redis, prefix=key_prefix(namespace))
        return self._stores[namespace]


class ObjectWriter:
    """Writes to one kind's own objects (status, finalizer), each answer folded into its cache."""

    def __init__(self, client: KubeClient, cache: Informer, min_interval: float):
        self.client = client
        self.cache = cache
        self.resource: Resource = cache.resource
        self.min_interval = min_interval
        self._written: dict[tuple[str, str], float] = {}  # when the last status write happened

    async def status(self, body: Mapping[str, Any], after: dict[str, Any], *, urgent: bool) -> bool:
        """Write a status that changed, at most once per `min_interval` unless urgent; returns
        whether it wrote."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        patch = merge_patch(body.get("status") or {}, after)
        now = asyncio.get_running_loop().time()
        if not patch or (not urgent and now - self._written.get(key, float("-inf")) < self.min_interval):
            return False
        log.debug("%s %s/%s: status %s", self.resource.kind, meta["namespace"], meta["name"], patch)
        try:
            answer = await self.client.patch(self.resource, meta["name"], {"status": patch}, meta["namespace"],
                                             subresource="status")
        except NotFound:
            return False  # deleted meanwhile: its DELETED event ends its passes
        self.cache.remember(answer)
        self._written[key] = now
        return True

    async def add_finalizer(self, body: Mapping[str, Any]) -> None:
        """Hold the object until its pass has cleaned up after it (with the version read, so a
        concurrent change of the list is never overwritten)."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            return
        await self._set_finalizers(meta, [*finalizers, FINALIZER])

    async def release(self, body: Mapping[str, Any]) -> None:
        """Take gridop's finalizer off a deleted object, letting the API server remove it."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            await self._set_finalizers(meta, [f for f in finalizers if f != FINALIZER])

    async def _set_finalizers(self, meta: Mapping[str, Any], finalizers: list[str]) -> None:
        try:
            answer = await self.client.patch(
                self.resource, meta["name"],
                {"metadata": {"finalizers": finalizers or None, "resourceVersion": meta["resourceVersion"]}},
                meta["namespace"])
        except (Conflict, NotFound):
            return  # changed or gone meanwhile: the watch brings the new version, and a new pass
        if answer:
            self.cache.remember(answer)

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)
