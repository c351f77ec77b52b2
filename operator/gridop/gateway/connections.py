"""The gateway's open console connections: counted (the limits), audited, and closed when due.

Each connection is counted in all and per user (the gateway's two limits), logged as one JSON audit
line and one Event when it opens and when it closes, and closed by the gateway when its session
stops or its pod is replaced, its token expires, it has idled too long, or its required recording
failed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import metrics
from ..api import console as wire
from ..api.v1beta1 import utcnow
from ..settings import Settings
from .activity import Activity
from .authz import Denied, Principal, Unavailable
from .requests import ConsoleRequest
from .streams import Viewer

log = logging.getLogger(__name__)

ACTIVE_PHASES = ("Starting", "Running")


@dataclasses.dataclass(eq=False)
class Connection:
    id: str
    principal: Principal
    request: ConsoleRequest
    namespace: str
    session: str
    pod_uid: str | None
    viewer: Viewer
    peer: str | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    started_at: datetime.datetime = dataclasses.field(default_factory=utcnow)


class Connections:
    def __init__(self, settings: Settings, activity: Activity, session_of: Callable[[str, str], dict[str, Any] | None],
                 clock: Callable[[], datetime.datetime]):
        self.settings = settings
        self.activity = activity
        self.session_of = session_of
        self.clock = clock
        self.by_session: dict[tuple[str, str], set[Connection]] = collections.defaultdict(set)
        self.per_user: collections.Counter[str] = collections.Counter()
        self.open_count = 0

    def check_limits(self, principal: Principal) -> None:
        """Room for one more connection of this user: 503 at the gateway's capacity, 429 per user."""
        if self.open_count >= self.settings.gateway_max_connections:
            raise Unavailable(f"the gateway holds its maximum of {self.settings.gateway_max_connections} connections; retry later")
        if self.per_user[principal.user] >= self.settings.gateway_max_connections_per_user:
            raise Denied(429, f"user {principal.user!r} already has {self.per_user[principal.user]} console connections "
                              "open (the limit)")

    def register(self, conn_id: str, principal: Principal, req: ConsoleRequest, namespace: str, name: str,
                 session: dict[str, Any], viewer: Viewer, request: web.Request) -> Connection:
        conn = Connection(
            id=conn_id, principal=principal, request=req, namespace=namespace, session=name,
            pod_uid=(session.get("status") or {}).get("podUID"), viewer=viewer, peer=request.remote,
        )
        self.by_session[(namespace, name)].add(conn)
        self.per_user[principal.user] += 1
        self.open_count += 1
        metrics.CONSOLE_CONNECTIONS.labels(req.endpoint, viewer.mode).inc()
        metrics.CONSOLE_CONNECTIONS_TOTAL.labels(req.endpoint, viewer.mode).inc()
        tenant = req.tenant or principal.tenant
        log.info(
            "console opened: %s %s/%s by %s (%s)", req.endpoint, namespace, name, principal.user, viewer.mode,
            extra={"fields": {"event": "console.open", "connection": conn_id, "user": principal.user,
                              "auth": principal.kind, "tenant": tenant, "namespace": namespace, "session": name,
                              "endpoint": req.endpoint, "mode": viewer.mode, "peer": request.remote}},
        )
        self.activity.event(session, "Normal", "ConsoleOpened",
                            f"{principal.user} opened {req.endpoint} ({viewer.mode})"
                            f"{f' for tenant {tenant}' if tenant else ''} [{conn_id}]")
        return conn

    async def unregister(self, conn: Connection) -> None:
        """Once its viewer has closed: uncount the connection and audit how it ended."""
        await conn.viewer.closed.wait()
        key = (conn.namespace, conn.session)
        conns = self.by_session.get(key)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self.by_session[key]
        self.per_user[conn.principal.user] -= 1
        if self.per_user[conn.principal.user] <= 0:
            del self.per_user[conn.principal.user]
        self.open_count -= 1
        viewer = conn.viewer
        metrics.CONSOLE_CONNECTIONS.labels(conn.request.endpoint, viewer.mode).dec()
        code, reason = viewer.closing or (wire.CLOSE_NORMAL, "closed")
        duration = time.monotonic() - conn.started
        tenant = conn.request.tenant or conn.principal.tenant
        fields = {
            "event": "console.close", "connection": conn.id, "user": conn.principal.user, "auth": conn.principal.kind,
            "tenant": tenant, "namespace": conn.namespace, "session": conn.session, "endpoint": conn.request.endpoint,
            "mode": viewer.mode, "start": conn.started_at.isoformat(), "duration_seconds": round(duration, 3),
            "bytes_in": viewer.bytes_in, "bytes_out": viewer.bytes_out, "close_code": code, "close_reason": reason,
        }
        if viewer.recording is not None:
            fields["recording"] = str(viewer.recording.path)
        log.info("console closed: %s %s/%s by %s after %.1fs (%d B in, %d B out, %d %s)", conn.request.endpoint,
                 conn.namespace, conn.session, conn.principal.user, duration, viewer.bytes_in, viewer.bytes_out,
                 code, reason, extra={"fields": fields})
        session = self.session_of(conn.namespace, conn.session)
        if session is not None:
            self.activity.event(session, "Normal", "ConsoleClosed",
                                f"{conn.principal.user} closed {conn.request.endpoint} ({viewer.mode}) after "
                                f"{duration:.0f}s: {viewer.bytes_in} B in, {viewer.bytes_out} B out, close {code} "
                                f"({reason}) [{conn.id}]")

    async def close_all(self, code: int, reason: str, wait: float) -> None:
        """Close every connection, and wait up to `wait` seconds for them to be closed."""
        for conns in list(self.by_session.values()):
            for conn in list(conns):
                conn.viewer.close(code, reason)
        waits = [c.viewer.closed.wait() for conns in self.by_session.values() for c in conns]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=wait)

    def session_changed(self, kind: str, obj: dict[str, Any]) -> None:
        """A session's watch event: close its connections if it stopped, went away, or changed pods."""
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        conns = self.by_session.get((meta.get("namespace"), meta.get("name")))  # type: ignore[arg-type]
        if not conns:
            return
        phase = status.get("phase")
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            why = "session deleted"
        elif phase not in ACTIVE_PHASES:
            why = f"session {phase.lower() if phase else 'stopped'}"
        else:
            why = None
        for conn in list(conns):
            reason = why
            if reason is None and conn.pod_uid and status.get("podUID") and status.get("podUID") != conn.pod_uid:
                reason = "session pod replaced; reconnect"
            if reason is not None:
                metrics.CONSOLE_CLOSES.labels(conn.request.endpoint, "session").inc()
                conn.viewer.close(wire.CLOSE_POLICY, reason)

    async def sweep_forever(self) -> None:
        """Token expiry, idle time and failed recordings, checked once a second for every connection."""
        while True:
            await asyncio.sleep(1.0)
            now, mono = self.clock(), time.monotonic()
            idle = self.settings.gateway_idle_timeout_seconds
            for conns in list(self.by_session.values()):
                for conn in list(conns):
                    viewer = conn.viewer
                    if viewer.closing is not None:
                        continue
                    if conn.principal.expires is not None and now >= conn.principal.expires:
                        metrics.CONSOLE_CLOSES.labels(conn.request.endpoint, "token").inc()
                        viewer.close(wire.CLOSE_POLICY, "token expired; reconnect with a fresh token")
                    elif idle and mono - viewer.last_activity >= idle:
                        metrics.CONSOLE_CLOSES.labels(conn.request.endpoint, "idle").inc()
                        viewer.close(wire.CLOSE_POLICY, f"idle for {idle:.0f}s")
                    elif (viewer.recording is not None and viewer.recording.failed
                          and self.settings.gateway_recording_required):
                        viewer.close(wire.CLOSE_UPSTREAM_ERROR, "recording failed; recording is required")
