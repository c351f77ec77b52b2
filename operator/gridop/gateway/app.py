"""`gridop gateway`: the console websocket service (aiohttp).

    GET /interact/{namespace}/{session}[?mode=monitor]    GET /interact/{session-or-node}
    GET /tail/{namespace}/{session}                        GET /tail/{session-or-node}

Every request goes through the same decision before the websocket upgrade, each step with its
own HTTP status: origin (403), bearer token (401, or 503 when it cannot be checked), request
shape (400), permission on the session (403, before the session is looked up), existence (404),
ownership and tenant (403), session state (409), limits (409 second writer, 429 per user, 503
at capacity), upstream stream (502/503). Only then is the client's websocket accepted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import pathlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict

from .. import metrics
from ..api import console as wire
from ..api.v1alpha1 import utcnow
from ..auth.keystore import PublicKeySource
from ..kube import KubeClient, KubeError, resources
from ..kube.events import EventRecorder
from ..kube.informer import Informer
from ..sessions.plan import LAST_ACTIVE_ANNOTATION
from ..settings import Settings
from . import channels
from .authz import Authorizer, Denied, KubeReviewer, Principal, Unavailable
from .recording import Recording, header, recording_path
from .requests import BadRequest, ConsoleRequest, bearer_token, offered_protocols, parse_request
from .streams import ConsoleHub, UpstreamError, Viewer, pump_logs

log = logging.getLogger(__name__)

MAX_CLIENT_FRAME = 64 * 1024
ACTIVE_PHASES = ("Starting", "Running")
SERVICE_PREFIX = "/apis/console-operator/console-operator"
MAX_HEADER_BYTES = 64 * 1024  # a request's headers, all told (a long token in Sec-WebSocket-Protocol fits)
PARSE_LIMIT_BYTES = 256 * 1024  # a header line the HTTP layer reads at all (past it: a bare 400)
TAIL_OPEN_WAIT = 0.5  # how long a tail waits for the log's first answer before upgrading anyway


@contextlib.contextmanager
def _upstream_failures(endpoint: str, what: str) -> Iterator[None]:
    """The API refused the stream: 502 with its message; the API is unreachable: 503."""
    try:
        yield
    except KubeError as exc:
        metrics.CONSOLE_UPSTREAM_ERRORS.labels(endpoint, str(exc.status)).inc()
        raise UpstreamError(502, f"{what}: {exc.api_message or exc}") from exc
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        metrics.CONSOLE_UPSTREAM_ERRORS.labels(endpoint, "unreachable").inc()
        raise UpstreamError(503, f"the Kubernetes API is unreachable: {exc}") from exc


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


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Every answer is JSON, also for a path or method the gateway does not serve, and for headers
    too large to read (431, before anything else looks at them)."""
    size = sum(len(name) + len(value) for name, value in request.raw_headers)
    if size > MAX_HEADER_BYTES:
        return web.json_response({"message": f"the request's headers are {size} bytes; the gateway reads at most "
                                  f"{MAX_HEADER_BYTES}"}, status=431)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"message": f"no such endpoint {request.path!r}: the gateway serves "
                                  "/interact/{namespace}/{session} and /tail/{namespace}/{session}"}, status=404)
    except web.HTTPMethodNotAllowed as exc:
        return web.json_response({"message": f"{request.method} is not allowed here; use GET (a websocket upgrade)"},
                                 status=405, headers={"Allow": ", ".join(sorted(exc.allowed_methods))})


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (an oversized header, say) with a traceback at ERROR:
    any client could fill the log with them. One line at INFO says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, aiohttp.http_exceptions.BadHttpMessage):
            record.msg, record.args = "refused a malformed request (%s)", (str(exc).splitlines()[0][:200],)
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
        return True


HTTP_LOG = logging.getLogger("gridop.gateway.http")
HTTP_LOG.addFilter(_MalformedRequests())


class Gateway:
    def __init__(self, settings: Settings, client: KubeClient, *, clock: Callable[[], datetime.datetime] = utcnow):
        self.settings = settings
        self.client = client
        self.clock = clock
        self.sessions = Informer(client, resources.GRIDSESSIONS, settings.watch_namespaces or None)
        self.keys = PublicKeySource(client, settings.operator_namespace, settings.signing_secret)
        self.authorizer = Authorizer(
            keys=self.keys.get, reviewer=KubeReviewer(client), issuer=settings.token_issuer,
            audience=settings.token_audience, token_audiences=settings.gateway_token_audiences,
            cache_seconds=settings.gateway_auth_cache_seconds,
        )
        self.events = EventRecorder(client, component="gridop-gateway")
        self.hubs: dict[tuple[str, str], ConsoleHub] = {}
        self.connections: dict[tuple[str, str], set[Connection]] = collections.defaultdict(set)
        self.per_user: collections.Counter[str] = collections.Counter()
        self.open_count = 0
        self._touched: dict[tuple[str, str], float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        # Events go out through a bounded queue and a few posters: a burst of connections must not
        # become a burst of API writes. Beyond the queue they are shed (the JSON audit line stays).
        self._events: asyncio.Queue[tuple[dict[str, Any], str, str, str]] = asyncio.Queue(maxsize=1000)
        self._posters: list[asyncio.Task[None]] = []
        self._shed = 0
        self.sessions.add_listener(self._session_changed)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.sessions.start()
        self._janitor = asyncio.create_task(self._sweep_forever())
        self._posters = [asyncio.create_task(self._post_events()) for _ in range(4)]

    async def stop(self) -> None:
        for conns in list(self.connections.values()):
            for conn in list(conns):
                conn.viewer.close(wire.CLOSE_GOING_AWAY, "gateway shutting down; reconnect")
        waits = [c.viewer.closed.wait() for conns in self.connections.values() for c in conns]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=5)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._events.join(), 5)  # the closing Events of the connections just closed
        for task in [self._janitor, *self._posters]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for hub in list(self.hubs.values()):
            await hub.shutdown()
        await self.sessions.stop()
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)

    @property
    def ready(self) -> bool:
        return self.sessions.fresh

    def application(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors])
        for endpoint in ("interact", "tail"):
            handler = self._handler(endpoint)
            # Also under the console service's API-gateway prefix, for clients that keep it when no
            # ingress strips it.
            for prefix in ("", SERVICE_PREFIX):
                app.router.add_get(f"{prefix}/{endpoint}/{{namespace}}/{{target}}", handler)
                app.router.add_get(f"{prefix}/{endpoint}/{{target}}", handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    # -- the decision --------------------------------------------------------------------------
    def _handler(self, endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await self._serve(endpoint, request)
            except (Denied, UpstreamError) as exc:
                return self._refuse(endpoint, exc.status, exc.message)
            except BadRequest as exc:
                return self._refuse(endpoint, 400, str(exc))
            except Unavailable as exc:
                return self._refuse(endpoint, 503, str(exc))

        return handle

    def _refuse(self, endpoint: str, status: int, message: str) -> web.Response:
        metrics.CONSOLE_DENIALS.labels(endpoint, str(status)).inc()
        return web.json_response({"message": message}, status=status)

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is None:
            return  # not a browser: nothing to forge
        allowed = self.settings.gateway_allowed_origins
        if "*" in allowed or origin in allowed:
            return
        if urlsplit(origin).netloc and urlsplit(origin).netloc == request.host:
            return  # same origin as the gateway itself
        raise Denied(403, f"origin {origin!r} is not allowed; add it to the gateway's allowed origins")

    def _resolve(self, req: ConsoleRequest) -> tuple[str, str, dict[str, Any] | None]:
        """(namespace, session name, session or None), from the watch cache; 503 when it is stale."""
        if not self.sessions.fresh:
            raise Unavailable("the gateway's view of sessions is not in sync with the Kubernetes API; retry shortly")
        namespace = req.namespace or self.settings.gateway_default_namespace
        if not self.sessions.serves(namespace):
            return namespace, req.target, None
        found = self.sessions.get(namespace, req.target)
        if found is None and req.namespace is None:
            # The seed addresses consoles by node: a session running on that node, in the default namespace.
            on_node = [
                s for s in self.sessions.items()
                if s["metadata"].get("namespace") == namespace
                and (s.get("status") or {}).get("nodeName") == req.target
                and (s.get("status") or {}).get("phase") in ACTIVE_PHASES
            ]
            if len(on_node) > 1:
                raise Denied(409, f"{len(on_node)} sessions run on node {req.target!r}; "
                                  f"address one as /{req.endpoint}/{{namespace}}/{{session}}")
            if on_node:
                return namespace, on_node[0]["metadata"]["name"], on_node[0]
        return namespace, req.target, found

    async def _serve(self, endpoint: str, request: web.Request) -> web.StreamResponse:
        self._check_origin(request)
        offered = offered_protocols(request.headers)
        principal = await self.authorizer.authenticate(bearer_token(request.headers, offered))
        req = parse_request(
            endpoint, request.match_info.get("namespace"), request.match_info["target"],
            dict(request.query), request.headers,
        )
        ws = web.WebSocketResponse(
            protocols=(wire.SUBPROTOCOL,), heartbeat=self.settings.gateway_ping_seconds,
            max_msg_size=MAX_CLIENT_FRAME, autoping=True,
            compress=False,  # deflate costs ~300 KiB per connection and CPU per frame; consoles are small
        )
        if not ws.can_prepare(request).ok:
            raise BadRequest("this endpoint speaks websocket only: send a websocket upgrade request")
        namespace, name, session = self._resolve(req)
        await self.authorizer.may_reach(principal, namespace, name, req)
        if session is None:
            raise Denied(404, f"session {name!r} not found in namespace {namespace!r}")
        self.authorizer.check_session(principal, session, req)
        status = session.get("status") or {}
        phase, pod = status.get("phase", "Pending"), status.get("podName")
        if endpoint == "interact" and (phase != "Running" or not pod):
            raise Denied(409, f"session {name!r} is {phase}: its console opens when it is Running")
        if endpoint == "tail" and not pod:
            raise Denied(409, f"session {name!r} is {phase} and has no pod whose console could be tailed")
        if self.open_count >= self.settings.gateway_max_connections:
            raise Unavailable(f"the gateway holds its maximum of {self.settings.gateway_max_connections} connections; retry later")
        if self.per_user[principal.user] >= self.settings.gateway_max_connections_per_user:
            raise Denied(429, f"user {principal.user!r} already has {self.per_user[principal.user]} console connections open (the limit)")
        if endpoint == "interact":
            return await self._interact(request, ws, req, principal, namespace, name, session)
        return await self._tail(request, ws, req, principal, namespace, name, session)

    # -- interact ----------------------------------------------------------------------------
    async def _interact(
        self, request: web.Request, ws: web.WebSocketResponse, req: ConsoleRequest, principal: Principal,
        namespace: str, name: str, session: dict[str, Any],
    ) -> web.StreamResponse:
        key = (namespace, name)
        hub = self.hubs.get(key)
        if hub is not None and req.mode == wire.MODE_INTERACTIVE and hub.writer is not None:
            raise Denied(409, f"session {name!r} already has a writer ({hub.writer_user}); connect with ?mode=monitor to watch")
        if hub is None:
            hub = ConsoleHub(key, lambda: self._attach(namespace, session), self._hub_empty,
                             owns_process=bool(self.settings.gateway_console_command))
            self.hubs[key] = hub
        try:
            await hub.open()
            if req.mode == wire.MODE_INTERACTIVE and hub.writer is not None:  # lost a race while connecting
                raise Denied(409, f"session {name!r} already has a writer ({hub.writer_user}); connect with ?mode=monitor to watch")
            conn_id = uuid.uuid4().hex[:12]
            recording = None
            if self.settings.gateway_recording_dir and req.mode == wire.MODE_INTERACTIVE:
                recording = await self._open_recording(namespace, name, principal, conn_id)
        except BaseException:
            if not hub.viewers:  # nobody joined: don't keep the upstream open for no one
                self._hub_empty(hub)
                self._spawn(hub.shutdown())
            raise
        await ws.prepare(request)
        viewer = self._viewer(request, ws, req, recording)
        hub.join(viewer, principal.user)
        conn = self._register(conn_id, principal, req, namespace, name, session, viewer, request)
        if req.mode == wire.MODE_INTERACTIVE:
            self._touch(namespace, name)
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self._client_message(hub, viewer, conn, msg)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            hub.leave(viewer)
            if viewer.closing is None:
                viewer.close(wire.CLOSE_NORMAL, hub.ended or "client closed")
            await self._unregister(conn)
        return ws

    async def _attach(self, namespace: str, session: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        pod = (session.get("status") or {})["podName"]
        command = self.settings.gateway_console_command
        params: MultiDict[str] = MultiDict(
            container=self.settings.gateway_console_container, stdin="true", stdout="true", stderr="false", tty="true",
        )
        for part in command:
            params.add("command", part)
        verb = "exec" if command else "attach"
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/{verb}"
        with _upstream_failures("interact", f"cannot {verb} to pod {pod!r}"):
            ws = await self.client.websocket(path, params, channels.PROTOCOLS, heartbeat=self.settings.gateway_ping_seconds)
        if ws.protocol not in channels.PROTOCOLS:
            await ws.close()
            raise UpstreamError(502, f"the Kubernetes API answered {verb} with no channel protocol "
                                     f"(offered {', '.join(channels.PROTOCOLS)})")
        return ws

    def _hub_empty(self, hub: ConsoleHub) -> None:
        if self.hubs.get(hub.key) is hub:
            del self.hubs[hub.key]

    async def _client_message(self, hub: ConsoleHub, viewer: Viewer, conn: Connection, msg: aiohttp.WSMessage) -> None:
        viewer.last_activity = time.monotonic()
        control = viewer.framing == "v1" and msg.type == aiohttp.WSMsgType.TEXT
        if control:
            try:
                message = json.loads(msg.data)
                kind = message.get("type") if isinstance(message, dict) else None
            except ValueError:
                kind, message = None, {}
            if kind == "resize":
                cols, rows = message.get("cols"), message.get("rows")
                if not (isinstance(cols, int) and isinstance(rows, int) and 0 < cols <= 10000 and 0 < rows <= 10000):
                    viewer.notice("resize needs integer cols and rows between 1 and 10000")
                elif viewer.mode == wire.MODE_INTERACTIVE:
                    await hub.resize(cols, rows)
                    if viewer.recording is not None:
                        viewer.recording.resize(cols, rows)
            else:
                viewer.notice('unknown control message; send {"type": "resize", "cols": C, "rows": R}')
            return
        data = msg.data.encode() if msg.type == aiohttp.WSMsgType.TEXT else bytes(msg.data)
        if viewer.framing == "seed" and msg.type == aiohttp.WSMsgType.TEXT and not data.endswith((b"\r", b"\n")):
            # The console service's own client sends each typed line as a text frame without its
            # newline (and Enter alone as an empty frame): the line ends here, as that service does.
            data += b"\n"
        if viewer.mode != wire.MODE_INTERACTIVE:
            viewer.notice("monitor mode: input is not forwarded to the console")
            return
        viewer.bytes_in += len(data)
        metrics.CONSOLE_BYTES.labels("interact", "in").inc(len(data))
        await hub.send_input(data)
        self._touch(conn.namespace, conn.session)

    # -- tail --------------------------------------------------------------------------------
    async def _tail(
        self, request: web.Request, ws: web.WebSocketResponse, req: ConsoleRequest, principal: Principal,
        namespace: str, name: str, session: dict[str, Any],
    ) -> web.StreamResponse:
        pod = (session.get("status") or {})["podName"]
        params = {"container": self.settings.gateway_console_container, "tailLines": str(req.lines)}
        if req.follow:
            params["follow"] = "true"

        async def open_log() -> aiohttp.ClientResponse:
            with _upstream_failures("tail", f"cannot read the log of pod {pod!r}"):
                return await self.client.open_stream(f"/api/v1/namespaces/{namespace}/pods/{pod}/log", params)

        # The API server sends a log's headers with its first byte: a followed log that is still
        # empty answers nothing until the console prints. A refusal comes at once and is answered
        # before the upgrade; past a moment of silence the websocket opens, and the log follows.
        opening = asyncio.ensure_future(open_log())
        await asyncio.wait({opening}, timeout=TAIL_OPEN_WAIT)
        if opening.done():
            opening.result()  # an UpstreamError here is refused over HTTP
        try:
            await ws.prepare(request)
        except BaseException:
            opening.cancel()
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result().release()
            raise
        viewer = self._viewer(request, ws, req, None)
        conn = self._register(uuid.uuid4().hex[:12], principal, req, namespace, name, session, viewer, request)

        async def drain_client() -> None:
            async for msg in ws:  # tail takes no input; this notices the client leaving
                if msg.type == aiohttp.WSMsgType.ERROR:
                    break

        async def pump() -> str:
            return await pump_logs(await opening, viewer)  # (it releases the response)

        pumping = asyncio.create_task(pump())
        reader = asyncio.create_task(drain_client())
        try:
            done, _ = await asyncio.wait({pumping, reader}, return_when=asyncio.FIRST_COMPLETED)
            if pumping in done:
                try:
                    reason = pumping.result()
                    code = wire.CLOSE_NORMAL
                    reason = reason if req.follow else "end of log"
                except UpstreamError as exc:
                    reason, code = exc.message, wire.CLOSE_UPSTREAM_ERROR
                viewer.close(code, reason)
                await viewer.closed.wait()
        finally:
            for task in (pumping, reader, opening):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await asyncio.gather(pumping, reader, return_exceptions=True)
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result().release()  # idempotent: also when pump_logs never got it
            if viewer.closing is None:
                viewer.close(wire.CLOSE_NORMAL, "client closed")
            await self._unregister(conn)
        return ws

    # -- connections -------------------------------------------------------------------------
    def _viewer(self, request: web.Request, ws: web.WebSocketResponse, req: ConsoleRequest, recording: Recording | None) -> Viewer:
        framing = "v1" if ws.ws_protocol == wire.SUBPROTOCOL else "seed"
        viewer = Viewer(
            ws, endpoint=req.endpoint, mode=req.mode if req.endpoint == "interact" else "tail",
            framing=framing, limit_bytes=self.settings.gateway_buffer_bytes,
            transport=request.transport, recording=recording,
        )
        viewer.start()
        return viewer

    def _register(
        self, conn_id: str, principal: Principal, req: ConsoleRequest, namespace: str, name: str,
        session: dict[str, Any], viewer: Viewer, request: web.Request,
    ) -> Connection:
        conn = Connection(
            id=conn_id, principal=principal, request=req, namespace=namespace, session=name,
            pod_uid=(session.get("status") or {}).get("podUID"), viewer=viewer, peer=request.remote,
        )
        self.connections[(namespace, name)].add(conn)
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
        self._event(session, "Normal", "ConsoleOpened",
                    f"{principal.user} opened {req.endpoint} ({viewer.mode}){f' for tenant {tenant}' if tenant else ''} [{conn_id}]")
        return conn

    async def _unregister(self, conn: Connection) -> None:
        await conn.viewer.closed.wait()
        key = (conn.namespace, conn.session)
        conns = self.connections.get(key)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self.connections[key]
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
        session = self.sessions.get(conn.namespace, conn.session)
        if session is not None:
            self._event(session, "Normal", "ConsoleClosed",
                        f"{conn.principal.user} closed {conn.request.endpoint} ({viewer.mode}) after {duration:.0f}s: "
                        f"{viewer.bytes_in} B in, {viewer.bytes_out} B out, close {code} ({reason}) [{conn.id}]")

    async def _open_recording(self, namespace: str, name: str, principal: Principal, conn_id: str) -> Recording | None:
        assert self.settings.gateway_recording_dir
        now = self.clock()
        path = recording_path(pathlib.Path(self.settings.gateway_recording_dir), namespace, name, principal.user, conn_id, now)
        try:
            return await Recording.open(path, header(width=80, height=24, user=principal.user, session=name,
                                                     namespace=namespace, tenant=principal.tenant, now=now))
        except OSError as exc:
            if self.settings.gateway_recording_required:
                raise Unavailable(f"cannot record this console ({exc.strerror or exc}); recording is required") from exc
            log.warning("recording of %s/%s unavailable, continuing without: %s", namespace, name, exc)
            return None

    # -- what ends connections ---------------------------------------------------------------------
    def _session_changed(self, kind: str, obj: dict[str, Any]) -> None:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        key = (meta.get("namespace"), meta.get("name"))
        conns = self.connections.get(key)  # type: ignore[arg-type]
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

    async def _sweep_forever(self) -> None:
        """Token expiry, idle time and failed recordings, checked once a second for every connection."""
        while True:
            await asyncio.sleep(1.0)
            now, mono = self.clock(), time.monotonic()
            idle = self.settings.gateway_idle_timeout_seconds
            for conns in list(self.connections.values()):
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
                    elif viewer.recording is not None and viewer.recording.failed and self.settings.gateway_recording_required:
                        viewer.close(wire.CLOSE_UPSTREAM_ERROR, "recording failed; recording is required")

    # -- activity and audit ------------------------------------------------------------------------
    def _touch(self, namespace: str, name: str) -> None:
        """Refresh the session's last-active annotation, at most once per interval per session."""
        now = time.monotonic()
        key = (namespace, name)
        if now - self._touched.get(key, float("-inf")) < self.settings.gateway_activity_interval_seconds:
            return
        self._touched[key] = now
        stamp = self.clock().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"metadata": {"annotations": {LAST_ACTIVE_ANNOTATION: stamp}}}

        async def write() -> None:
            try:
                await self.client.patch(resources.GRIDSESSIONS, name, patch, namespace)
            except (TimeoutError, KubeError, aiohttp.ClientError, OSError) as exc:
                self._touched.pop(key, None)  # try again on the next keystroke
                log.warning("could not record activity on session %s/%s: %s", namespace, name, exc)

        self._spawn(write())

    def _event(self, session: dict[str, Any], type_: str, reason: str, message: str) -> None:
        body = {"apiVersion": session.get("apiVersion"), "kind": session.get("kind"), "metadata": session.get("metadata", {})}
        try:
            self._events.put_nowait((body, type_, reason, message))
        except asyncio.QueueFull:
            self._shed += 1
            if self._shed in (1, 10, 100) or self._shed % 1000 == 0:
                log.warning("the API is slow to take Events: %d console Events shed (the audit log lines are kept)", self._shed)

    async def _post_events(self) -> None:
        while True:
            body, type_, reason, message = await self._events.get()
            try:
                await self.events.record(body, type_, reason, message)
            finally:
                self._events.task_done()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def run_gateway(
    settings: Settings,
    access: Any = None,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    host: str | None = None,
    with_metrics: bool = True,
) -> None:
    """Serve until `stop_flag` (or SIGTERM/SIGINT when run from the command line)."""
    from ..kube import load_cluster_access

    access = access or load_cluster_access()
    host = host or settings.gateway_host or None  # None: every address, IPv4 and IPv6
    client = await KubeClient.connect(access)
    gateway = Gateway(settings, client)
    stop = stop_flag or asyncio.Event()
    runner = web.AppRunner(gateway.application(), access_log=None, shutdown_timeout=5, logger=HTTP_LOG,
                           max_line_size=PARSE_LIMIT_BYTES, max_field_size=PARSE_LIMIT_BYTES)
    metrics_runner: web.AppRunner | None = None
    try:
        await gateway.start()
        await runner.setup()
        await web.TCPSite(runner, host, settings.gateway_port).start()
        if with_metrics:
            metrics_runner = await metrics.serve_health(settings.metrics_port, lambda: gateway.ready)
        log.info("console gateway listening on %s:%d", host or "*", settings.gateway_port)
        if ready_flag is not None:
            ready_flag.set()
        await stop.wait()
    finally:
        await gateway.stop()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await client.close()
