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
import contextlib
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
from ..api.v1beta1 import utcnow
from ..auth.keystore import PublicKeySource
from ..kube import KubeClient, KubeError, resources
from ..kube.informer import Informer
from ..settings import Settings
from . import channels
from .activity import Activity
from .authz import Authorizer, Denied, KubeReviewer, Principal, Unavailable
from .connections import ACTIVE_PHASES, Connection, Connections
from .recording import Recording, header, recording_path
from .requests import BadRequest, ConsoleRequest, bearer_token, offered_protocols, parse_request
from .streams import ConsoleHub, UpstreamError, Viewer, pump_logs
from .writers import WriterLock, WriterLocks

log = logging.getLogger(__name__)

MAX_CLIENT_FRAME = 64 * 1024
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
        self.hubs: dict[tuple[str, str], ConsoleHub] = {}
        self.activity = Activity(client, settings, clock)
        self.connections = Connections(settings, self.activity, self.sessions.get, clock)
        self.writers = WriterLocks(client, settings.operator_namespace, f"{settings.pod_name}/{uuid.uuid4().hex[:8]}",
                                   lease_seconds=settings.gateway_writer_lease_seconds,
                                   renew_seconds=settings.gateway_writer_lease_seconds / 3)
        self._janitor: asyncio.Task[None] | None = None
        self.sessions.add_listener(self.connections.session_changed)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.sessions.start()
        self._janitor = asyncio.create_task(self.connections.sweep_forever())
        self.activity.start()

    async def stop(self) -> None:
        await self.connections.close_all(wire.CLOSE_GOING_AWAY, "gateway shutting down; reconnect", wait=5)
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        for hub in list(self.hubs.values()):
            await hub.shutdown()
        await self.sessions.stop()
        await self.activity.stop()  # the closing Events of the connections just closed, first

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
        self.connections.check_limits(principal)
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
        lock: WriterLock | None = None
        try:
            if req.mode == wire.MODE_INTERACTIVE:  # one writer across every replica
                lock = await self.writers.acquire(namespace, name, principal.user)
            await hub.open()
            if req.mode == wire.MODE_INTERACTIVE and hub.writer is not None:  # lost a race while connecting
                raise Denied(409, f"session {name!r} already has a writer ({hub.writer_user}); connect with ?mode=monitor to watch")
            conn_id = uuid.uuid4().hex[:12]
            recording = None
            if self.settings.gateway_recording_dir and req.mode == wire.MODE_INTERACTIVE:
                recording = await self._open_recording(namespace, name, principal, conn_id)
        except BaseException:
            if lock is not None:
                await lock.release()
            if not hub.viewers:  # nobody joined: don't keep the upstream open for no one
                self._hub_empty(hub)
                self.activity.spawn(hub.shutdown())
            raise
        await ws.prepare(request)
        viewer = self._viewer(request, ws, req, recording)
        hub.join(viewer, principal.user)
        conn = self.connections.register(conn_id, principal, req, namespace, name, session, viewer, request)
        if req.mode == wire.MODE_INTERACTIVE:
            self.activity.touch(namespace, name)
        watching = asyncio.create_task(self._writer_lost(lock, viewer)) if lock is not None else None
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self._client_message(hub, viewer, conn, msg)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            if watching is not None:
                watching.cancel()
            hub.leave(viewer)  # first: the next writer on this replica takes over this one's lock
            if viewer.closing is None:
                viewer.close(wire.CLOSE_NORMAL, hub.ended or "client closed")
            if lock is not None:
                await lock.release()
            await self.connections.unregister(conn)
        return ws

    async def _writer_lost(self, lock: WriterLock, viewer: Viewer) -> None:
        """A writer whose lock could not be kept (cut off from the API for a whole lease) stops
        writing: another replica may have a writer now."""
        await lock.lost.wait()
        viewer.close(wire.CLOSE_POLICY, "the session's writer lock was lost; reconnect")

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
        self.activity.touch(conn.namespace, conn.session)

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
        conn = self.connections.register(uuid.uuid4().hex[:12], principal, req, namespace, name, session, viewer, request)

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
            await self.connections.unregister(conn)
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
