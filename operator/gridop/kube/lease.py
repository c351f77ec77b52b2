"""Leader election on a coordination.k8s.io Lease, so only one operator replica acts at a time.

The holder renews the Lease every `renew_seconds` (5 s); a standby looks every `retry_seconds`
(1 s) and takes it over once it has seen no renewal for `lease_seconds` (15 s) by its own clock,
as client-go does: the holder's renewTime is compared with the last one seen, never with the
standby's clock, so clocks that disagree cannot make two leaders. After a leader dies, a standby
leads 15-17 s after the last renewal (10-17 s after the death). A leader that stops cleanly
releases the Lease, and a standby takes over at its next look (within `retry_seconds`).
Updates carry the resourceVersion they read, so two candidates racing for an expired Lease
cannot both win.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .client import AlreadyExists, Conflict, KubeClient, KubeError
from .resources import LEASES

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _fmt(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_time(t: datetime.datetime | None = None) -> str:
    """A Lease's MicroTime (acquireTime, renewTime): `t`, or now."""
    return _fmt(t or _now())


class LapseWatch:
    """Whether Leases held by others have lapsed, judged by this process's own clock (client-go's
    rule): a holder's record counts from when it was first seen to change, so clocks that disagree
    cannot make two holders."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic):
        self.monotonic = monotonic
        self._seen: dict[str, tuple[tuple[object, ...], float]] = {}  # lease -> (record, first seen)

    def lapsed(self, name: str, spec: dict[str, Any], default_seconds: float) -> bool:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseTransitions"))
        seen = self._seen.get(name)
        if seen is None or seen[0] != record:
            self._seen[name] = seen = (record, self.monotonic())
        return self.monotonic() - seen[1] > float(spec.get("leaseDurationSeconds") or default_seconds)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        retry_seconds: float = 1.0,
        clock: Callable[[], datetime.datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._lapses = LapseWatch(monotonic)

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True while we hold it."""
        now = self.clock()
        lease = await self.client.get(LEASES, self.name, self.namespace)
        if lease is None:
            body = {
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, acquired=now, transitions=0),
            }
            try:
                await self.client.create(LEASES, body, self.namespace)
                return True
            except AlreadyExists:
                return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        expired = self._lapses.lapsed(self.name, spec, self.lease_seconds)
        if holder not in (None, "", self.identity) and not expired:
            return False
        taking_over = holder != self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if taking_over else 0)
        acquired = now if taking_over else (_parse(spec.get("acquireTime")) or now)
        update = {
            "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
            "spec": self._spec(now, acquired=acquired, transitions=transitions),
        }
        try:
            await self.client.patch(LEASES, self.name, update, self.namespace)
        except Conflict:
            return False
        if taking_over:
            log.info("acquired leadership lease %s/%s (previous holder: %s)", self.namespace, self.name, holder or "none")
        return True

    def _spec(self, now: datetime.datetime, *, acquired: datetime.datetime, transitions: int) -> dict[str, object]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": _fmt(acquired),
            "renewTime": _fmt(now),
            "leaseTransitions": transitions,
        }

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        logged = False
        while True:
            try:
                if await self.try_acquire():
                    return
            except (KubeError, OSError) as exc:
                log.warning("leader election attempt failed: %s", exc)
            if not logged:
                log.info("waiting for leadership lease %s/%s", self.namespace, self.name)
                logged = True
            await asyncio.sleep(self.retry_seconds)

    async def hold(self, on_lost: Callable[[], Awaitable[None] | None]) -> None:
        """Renew until cancelled; call `on_lost` once a renewal has not succeeded for a full lease."""
        last_ok = self.clock()
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self.try_acquire():
                    last_ok = self.clock()
                    continue
                reason = "another replica holds the lease"
            except (KubeError, OSError) as exc:
                reason = f"renewal failed: {exc}"
                if self.clock() - last_ok < datetime.timedelta(seconds=self.lease_seconds):
                    log.warning("leader lease %s; retrying", reason)
                    continue
            log.error("lost leadership lease %s/%s: %s", self.namespace, self.name, reason)
            result = on_lost()
            if asyncio.iscoroutine(result):
                await result
            return

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        try:
            lease = await self.client.get(LEASES, self.name, self.namespace)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                patch = {"metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                         "spec": {"holderIdentity": None, "renewTime": None}}
                await self.client.patch(LEASES, self.name, patch, self.namespace)
        except (KubeError, OSError) as exc:
            log.warning("could not release the leader lease: %s", exc)
