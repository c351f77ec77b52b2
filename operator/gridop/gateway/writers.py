"""One writer per session across every gateway replica: a Lease per session's writer.

A replica that accepts an interactive (writing) console takes the session's writer Lease in the
gateway's own namespace, renews it while the writer is connected and deletes it when the writer
leaves. Another replica asked for a writer of that session finds the Lease held and refuses (409).
A replica that dies cannot hold a writer for long: its Lease is not renewed, and after
`lease_seconds` by the asking replica's own clock (counted from the last renewal it saw, so clocks
that disagree cannot make two writers) it is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable

from ..kube import AlreadyExists, Conflict, KubeClient, KubeError, NotFound, resources
from ..kube.lease import LapseWatch, lease_time
from .authz import Denied, Unavailable

log = logging.getLogger(__name__)

SESSION_ANNOTATION = "gridop.io/session"
USER_ANNOTATION = "gridop.io/writer"


def lease_name(namespace: str, session: str) -> str:
    return f"console-writer-{hashlib.sha256(f'{namespace}/{session}'.encode()).hexdigest()[:20]}"


class WriterLock:
    """A held writer Lease: renewed until released; `on_lost` is called if it cannot be kept."""

    def __init__(self, locks: WriterLocks, name: str, version: str):
        self.locks, self.name, self.version = locks, name, version
        self.lost = asyncio.Event()
        # Writers on this replica holding it: more than one only while a leaving writer's
        # connection winds down and the next one (let in by the replica's own hub) takes over.
        self.holders = 1
        self._renewing = asyncio.create_task(self._renew())
        locks.local[name] = self

    async def _renew(self) -> None:
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self.locks.renew_seconds)
            try:
                answer = await self.locks.client.patch(
                    resources.LEASES, self.name,
                    {"metadata": {"resourceVersion": self.version}, "spec": {"renewTime": lease_time()}},
                    self.locks.namespace)
                self.version = answer["metadata"]["resourceVersion"]
                failing_since = None
            except (Conflict, NotFound):
                self.lost.set()  # taken over (we were cut off for a whole lease) or deleted
                return
            except (KubeError, OSError, TimeoutError) as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= self.locks.lease_seconds:
                    log.warning("console writer lease %s could not be renewed for %.0fs (%s)", self.name,
                                self.locks.lease_seconds, exc)
                    self.lost.set()
                    return

    async def release(self) -> None:
        self.holders -= 1
        if self.holders > 0:
            return  # handed over to the next writer on this replica
        if self.locks.local.get(self.name) is self:
            del self.locks.local[self.name]
        done = self.locks.releasing[self.name] = asyncio.get_running_loop().create_future()
        try:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            if not self.lost.is_set():
                await self.locks.client.delete(resources.LEASES, self.name, self.locks.namespace)
        except (KubeError, OSError, TimeoutError) as exc:  # it expires by itself
            log.warning("could not release console writer lease %s: %s", self.name, exc)
        finally:
            done.set_result(None)
            if self.locks.releasing.get(self.name) is done:
                del self.locks.releasing[self.name]


class WriterLocks:
    def __init__(self, client: KubeClient, namespace: str, identity: str, *, lease_seconds: float = 15.0,
                 renew_seconds: float = 5.0, monotonic: Callable[[], float] = time.monotonic):
        self.client, self.namespace, self.identity = client, namespace, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self._lapses = LapseWatch(monotonic)
        self.local: dict[str, WriterLock] = {}  # the writer Leases this replica holds
        self.releasing: dict[str, asyncio.Future[None]] = {}  # ... and those it is giving up

    async def acquire(self, namespace: str, session: str, user: str) -> WriterLock:
        """The session's writer Lease for `user` on this replica; Denied (409) while another holds it.
        (One writer per session on this replica is the replica's own hub's to enforce, before this.)"""
        name = lease_name(namespace, session)
        held_here = self.local.get(name)
        if held_here is not None and not held_here.lost.is_set():
            held_here.holders += 1
            return held_here
        if name in self.releasing:  # a writer of this replica is leaving: its Lease goes first
            await asyncio.shield(self.releasing[name])
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "acquireTime": lease_time(), "renewTime": lease_time()}
        meta = {"name": name, "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "gridop", "app.kubernetes.io/component": "console-writer"},
                "annotations": {SESSION_ANNOTATION: f"{namespace}/{session}", USER_ANNOTATION: user}}
        try:
            try:
                answer = await self.client.create(resources.LEASES, {"metadata": meta, "spec": spec}, self.namespace)
                return WriterLock(self, name, answer["metadata"]["resourceVersion"])
            except AlreadyExists:
                pass
            current = await self.client.get(resources.LEASES, name, self.namespace)
            if current is None:  # released meanwhile: try once more from the start
                answer = await self.client.create(resources.LEASES, {"metadata": meta, "spec": spec}, self.namespace)
                return WriterLock(self, name, answer["metadata"]["resourceVersion"])
            held = current.get("spec") or {}
            ours = held.get("holderIdentity") == self.identity  # left behind by this replica (a failed release)
            if not ours and not self._lapses.lapsed(name, held, self.lease_seconds):
                writer = (current["metadata"].get("annotations") or {}).get(USER_ANNOTATION, "someone")
                raise Denied(409, f"session {session!r} already has a writer ({writer}, on another gateway replica); "
                                  "connect with ?mode=monitor to watch")
            answer = await self.client.patch(
                resources.LEASES, name,
                {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"],
                              "annotations": meta["annotations"]}, "spec": spec}, self.namespace)
            self._lapses.forget(name)
            log.info("took over the console writer lease of %s/%s (its replica stopped renewing it)", namespace, session)
            return WriterLock(self, name, answer["metadata"]["resourceVersion"])
        except (AlreadyExists, Conflict):
            raise Denied(409, f"session {session!r} already has a writer (on another gateway replica); connect "
                              "with ?mode=monitor to watch") from None
        except (KubeError, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot take the session's writer lock ({exc}); retry") from exc
