"""The one controller design every gridop kind follows: watch caches in, a work queue, a few workers.

    informers (the kind, its children by label)  --events-->  keys  -->  WorkQueue  -->  workers
                                                                             ^              |
                                                                             +-- deadline --+

- Events on an object or on one of its children (found by the child's owner label) only queue the
  object's key; bursts collapse into one pass, and no key runs twice at once.
- A pass is `reconcile(namespace, name, due)`: it reads the caches (never the API server), acts,
  and returns when it wants to run again (the key's one timer) or None to keep the current one.
- A pass that raises is backed off by `failed_pass`, the same for every kind.

Each kind supplies its informers and its reconcile function; nothing else differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import aiohttp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from .client import KubeError
from .informer import Informer
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
Key = tuple[str, str]


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


class Reconciler(Protocol):
    async def reconcile(self, namespace: str, name: str, *, due: bool = True) -> float | None: ...


class Controller:
    """One kind's controller.

    `primary` caches the kind itself; `children` maps each child cache to the label that names its
    owner (a child event queues that owner); `others` are caches a pass reads that queue nothing by
    themselves (or whose listeners a subclass adds).
    """

    def __init__(self, kind: str, reconciler: Reconciler, primary: Informer, *,
                 children: dict[Informer, str] | None = None, others: Iterable[Informer] = (), workers: int = 8):
        self.kind = kind
        self.reconciler = reconciler
        self.primary = primary
        self.children = dict(children or {})
        self.informers = [primary, *self.children, *others]
        self.queue: WorkQueue[Key] = WorkQueue()
        self._workers = workers
        self._failures: dict[Key, int] = {}
        primary.add_listener(self._on_primary)
        for informer, label in self.children.items():
            informer.add_listener(self._owner_of(label))

    async def run(self) -> None:
        """Fill the caches, then reconcile until cancelled."""
        for informer in self.informers:
            await informer.start()
        try:
            await asyncio.gather(*(informer.synced.wait() for informer in self.informers))
            log.info("%s caches synced: %s", self.kind,
                     ", ".join(f"{len(i)} {i.resource.plural}" for i in self.informers))
            for obj in self.primary.items():
                self.queue.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
            async with asyncio.TaskGroup() as group:
                for i in range(self._workers):
                    group.create_task(self._work(), name=f"{self.kind.lower()}-worker-{i}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.gather(*(informer.stop() for informer in self.informers))

    @property
    def fresh(self) -> bool:
        return all(informer.fresh for informer in self.informers)

    # -- events -> keys ----------------------------------------------------------------------
    def _on_primary(self, event: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") and meta.get("name"):
            self.on_object(event, obj)
            self.queue.add((meta["namespace"], meta["name"]))

    def on_object(self, event: str, obj: dict[str, Any]) -> None:
        """A hook for a kind that indexes its objects (sessions by node); called before queueing."""

    def _owner_of(self, label: str) -> Callable[[str, dict[str, Any]], None]:
        def listener(event: str, obj: dict[str, Any]) -> None:
            meta = obj.get("metadata") or {}
            owner = (meta.get("labels") or {}).get(label)
            if owner and meta.get("namespace"):
                self.queue.add((meta["namespace"], owner))

        return listener

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
            elif self.primary.get(*key) is None:
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
            return failed_pass(self.kind, namespace, name, exc, failures)
        self._failures.pop(key, None)
        return delay



class TerminatingNamespaces:
    """Namespaces seen being deleted: a controller creates nothing there, quietly, for `hold`
    seconds at a time (a namespace deleted and made again under the same name is served again)."""

    def __init__(self, hold: float = 30.0):
        self.hold = hold
        self._since: dict[str, float] = {}

    def mark(self, namespace: str, what: str) -> None:
        now = asyncio.get_running_loop().time()
        if namespace not in self:
            log.info("namespace %s is being deleted: creating no more %s there", namespace, what)
        self._since[namespace] = now

    def __contains__(self, namespace: object) -> bool:
        since = self._since.get(namespace)  # type: ignore[call-overload]
        if since is None:
            return False
        if asyncio.get_running_loop().time() - since < self.hold:
            return True
        del self._since[namespace]  # type: ignore[arg-type]
        return False
