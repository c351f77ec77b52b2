"""The GridSession controller: watch caches in, a coalescing work queue, a few workers.

Events on a session, its children or its node only queue the session's key; a worker runs one
pass per key at a time (bursts collapse into one pass), and the pass's own deadline becomes the
key's timer. Nothing here reads the API server: the caches are the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from ..kube import KubeError
from ..kube.workqueue import WorkQueue
from .cache import SessionCache
from .plan import SESSION_LABEL
from .reconciler import Key, SessionReconciler

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


def transient(exc: BaseException) -> bool:
    """Failures that an outage of the API server (or Redis) explains: one log line, no traceback."""
    if isinstance(exc, KubeError):
        return exc.status >= 500 or exc.status in (409, 429)
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | aiohttp.ClientError | OSError | TimeoutError)


def failed_pass(kind: str, namespace: str, name: str, exc: Exception, failures: int) -> float:
    """Account for a pass that raised (its `failures`-th in a row): count it, log it (an outage in
    one line, a bug with its traceback) and return the backoff before the next try."""
    delay = min(MAX_BACKOFF, 2.0**failures)
    metrics.RECONCILE_ERRORS.labels(kind, type(exc).__name__).inc()
    if transient(exc):
        log.warning("%s %s/%s: reconcile failed (%s: %s); retry in %.0fs", kind, namespace, name,
                    type(exc).__name__, exc, delay)
    else:
        log.error("%s %s/%s: reconcile failed (retry in %.0fs)", kind, namespace, name, delay, exc_info=exc)
    return delay


class SessionController:
    def __init__(self, reconciler: SessionReconciler, cache: SessionCache, *, workers: int = 8):
        self.reconciler = reconciler
        self.cache = cache
        self.queue: WorkQueue[Key] = WorkQueue()
        self._workers = workers
        self._failures: dict[Key, int] = {}
        self._by_node: dict[str, set[Key]] = {}  # node name -> sessions placed on or pinned to it
        self._nodes_of: dict[Key, tuple[str, ...]] = {}
        self._selecting: set[Key] = set()  # sessions waiting for a node that matches their selector

    async def run(self) -> None:
        """Fill the caches, then reconcile until cancelled."""
        c = self.cache
        c.sessions.add_listener(self._on_session)
        for informer in (c.pods, c.services, c.config_maps, c.secrets):
            informer.add_listener(self._on_child)
        c.nodes.add_listener(self._on_node)
        await c.start()
        try:
            await c.synced()
            log.info("session caches synced: %d sessions, %d pods, %d nodes", len(c.sessions), len(c.pods), len(c.nodes))
            for obj in c.sessions.items():
                self.queue.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
            async with asyncio.TaskGroup() as group:
                for i in range(self._workers):
                    group.create_task(self._work(), name=f"session-worker-{i}")
        finally:
            with contextlib.suppress(Exception):
                await c.stop()

    # -- events -> keys ----------------------------------------------------------------------
    def _on_session(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if kind == "DELETED":
            self._index(key, ())  # type: ignore[arg-type]
            self._selecting.discard(key)  # type: ignore[arg-type]
        else:
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            nodes = tuple(n for n in {spec.get("node"), status.get("nodeName")} if n)
            self._index(key, nodes)  # type: ignore[arg-type]
            if spec.get("nodeSelector") and not status.get("podName"):
                self._selecting.add(key)  # type: ignore[arg-type]
            else:
                self._selecting.discard(key)  # type: ignore[arg-type]
        self.queue.add(key)  # type: ignore[arg-type]

    def _index(self, key: Key, nodes: tuple[str, ...]) -> None:
        old = self._nodes_of.get(key, ())
        if old == nodes:
            return
        for n in old:
            keys = self._by_node.get(n)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_node[n]
        for n in nodes:
            self._by_node.setdefault(n, set()).add(key)
        if nodes:
            self._nodes_of[key] = nodes
        else:
            self._nodes_of.pop(key, None)

    def _on_child(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SESSION_LABEL)
        if owner and meta.get("namespace"):
            self.queue.add((meta["namespace"], owner))

    def _on_node(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        for key in list(self._by_node.get(name, ())) + list(self._selecting):
            self.queue.add(key)

    # -- workers -----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            key, due = await self.queue.get()
            try:
                delay = await self._pass(key, due)
            finally:
                self.queue.done(key)
            if delay is not None:
                self.queue.requeue_after(key, delay)
            elif self.cache.sessions.get(*key) is None:
                self.queue.forget(key)
                self._failures.pop(key, None)

    async def _pass(self, key: Key, due: bool) -> float | None:
        namespace, name = key
        try:
            delay = await self.reconciler.reconcile(namespace, name, due=due)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad pass must not kill the worker; back off and retry
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            return failed_pass("GridSession", namespace, name, exc, failures)
        self._failures.pop(key, None)
        return delay
