"""The Kubernetes side of the console gateway, for tests and benchmarks.

kmock emulates the API's objects and watches but not its streaming subresources, so this
front serves those itself and proxies everything else to kmock:

* `pods/{pod}/attach` and `pods/{pod}/exec`: websockets speaking `v5.channel.k8s.io` (and
  `v4.channel.k8s.io`) as the API server does, attached to a **real** pseudo-terminal running a
  real program (`/bin/sh` by default): keystrokes reach its stdin, channel 4 resizes it with
  TIOCSWINSZ, every attached client sees its output, and its exit is reported on channel 3.
* `pods/{pod}/log`: what the terminal printed, with `tailLines` and `follow`, as the kubelet
  serves a container log.
* TokenReview and SubjectAccessReview, answered from tables the test sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import struct
import termios
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"


def _pod_not_found(pod: str) -> web.Response:
    return web.json_response({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                              "message": f'pods "{pod}" not found'}, status=404)


class PtyConsole:
    """A container's console: a real program on a real pseudo-terminal."""

    def __init__(self, argv: Iterable[str] = ("/bin/sh",), env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.env = {"PATH": "/usr/bin:/bin", "PS1": "$ ", "TERM": "xterm", "HOME": "/tmp", **(env or {})}
        self.log = bytearray()
        self.listeners: set[asyncio.Queue[bytes | None]] = set()
        self.proc: asyncio.subprocess.Process | None = None
        self.master = -1
        self.exit_code: int | None = None
        self.exited = asyncio.Event()

    async def start(self) -> None:
        master, slave = pty.openpty()
        self.resize(80, 24, fd=master)
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=slave, stdout=slave, stderr=slave, env=self.env, start_new_session=True,
        )
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        asyncio.get_running_loop().add_reader(master, self._readable)
        asyncio.get_running_loop().create_task(self._wait())

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.log.extend(data)
        for queue in list(self.listeners):
            queue.put_nowait(data)

    async def _wait(self) -> None:
        assert self.proc is not None
        self.exit_code = await self.proc.wait()
        await asyncio.sleep(0.05)  # let the last output drain from the pty
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(self.master)
        self.exited.set()
        for queue in list(self.listeners):
            queue.put_nowait(None)

    def write(self, data: bytes) -> None:
        if self.exited.is_set():
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                continue
            view = view[written:]

    def resize(self, cols: int, rows: int, fd: int | None = None) -> None:
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def tail(self, lines: int | None) -> bytes:
        if lines is None:
            return bytes(self.log)
        if lines == 0:
            return b""
        parts = bytes(self.log).splitlines(keepends=True)
        return b"".join(parts[-lines:])

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.exited.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


class ApiFront:
    """An aiohttp server: streaming subresources and reviews here, everything else to kmock."""

    def __init__(self, kmock_url: str):
        self.kmock_url = kmock_url.rstrip("/")
        self.consoles: dict[tuple[str, str], PtyConsole] = {}
        self.execs: list[PtyConsole] = []  # processes started by exec calls
        self.tokens: dict[str, dict[str, Any]] = {}  # token -> TokenReview status.user
        self.token_audiences: dict[str, list[str]] = {}
        self.allowed: set[tuple[str, str, str, str]] = set()  # (user, verb, namespace, name or "*")
        self.reviews_down = False
        self.protocols = [V5, V4]
        self.access_reviews: list[dict[str, Any]] = []
        self.attaches = 0
        self.negotiated: list[str | None] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/attach", self.attach)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/exec", self.exec)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/log", self.logs)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self.access_review)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for console in self.consoles.values():
            await console.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def add_console(self, namespace: str, pod: str, argv: Iterable[str] = ("/bin/sh",)) -> PtyConsole:
        console = PtyConsole(argv)
        await console.start()
        self.consoles[(namespace, pod)] = console
        return console

    # -- streaming subresources ---------------------------------------------------------------
    async def exec(self, request: web.Request) -> web.StreamResponse:
        """As a kubelet execs: a new process per call, on a terminal of its own. It lives on after
        the stream ends unless its stdin is closed (v5's half-close), as exec'd shells do."""
        if (request.match_info["ns"], request.match_info["pod"]) not in self.consoles:
            return _pod_not_found(request.match_info["pod"])
        console = PtyConsole(request.query.getall("command", ["/bin/sh"]))
        await console.start()
        self.execs.append(console)
        return await self.attach(request, console)

    async def attach(self, request: web.Request, console: PtyConsole | None = None) -> web.StreamResponse:
        console = console or self.consoles.get((request.match_info["ns"], request.match_info["pod"]))
        if console is None:
            return _pod_not_found(request.match_info["pod"])
        exec_ = console not in self.consoles.values()
        ws = web.WebSocketResponse(protocols=self.protocols)
        await ws.prepare(request)
        self.attaches += 1
        protocol = ws.ws_protocol
        self.negotiated.append(protocol)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        console.listeners.add(queue)

        async def output() -> None:
            while True:
                data = await queue.get()
                if data is None:
                    status: dict[str, Any] = {"metadata": {}, "status": "Success"}
                    if console.exit_code:
                        status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                                  "message": f"command terminated with non-zero exit code: {console.exit_code}",
                                  "details": {"causes": [{"reason": "ExitCode", "message": str(console.exit_code)}]}}
                    await ws.send_bytes(b"\x03" + json.dumps(status).encode())
                    await ws.close()
                    return
                await ws.send_bytes(b"\x01" + data)

        sender = asyncio.create_task(output())
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                channel, data = msg.data[0], msg.data[1:]
                if channel == 0:
                    console.write(data)
                elif channel == 4:
                    size = json.loads(data)
                    console.resize(int(size["Width"]), int(size["Height"]))
                elif channel == 255 and protocol == V5 and exec_ and data == b"\x00":
                    console.write(b"\x04")  # stdin closed: the terminal's end of input
                elif channel == 255 and protocol == V5:
                    pass  # stdin half-close: a shared console keeps its stdin open
        finally:
            console.listeners.discard(queue)
            sender.cancel()
        return ws

    async def logs(self, request: web.Request) -> web.StreamResponse:
        console = self.consoles.get((request.match_info["ns"], request.match_info["pod"]))
        if console is None:
            return _pod_not_found(request.match_info["pod"])
        lines = request.query.get("tailLines")
        follow = request.query.get("follow") == "true"
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        if follow:
            console.listeners.add(queue)
        try:
            # As a real API server proxies a kubelet's log: the response's headers go out with its
            # first byte, so a followed log that is still empty answers nothing at all yet.
            first = console.tail(int(lines) if lines is not None else None)
            if first or not follow:
                await resp.prepare(request)
                await resp.write(first)
            while follow and not (console.exited.is_set() and queue.empty()):
                data = await queue.get()
                if data is None:
                    break
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(data)
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            pass  # the reader (the gateway) went away
        finally:
            console.listeners.discard(queue)
        return resp

    # -- reviews ------------------------------------------------------------------------------------
    async def token_review(self, request: web.Request) -> web.Response:
        if self.reviews_down:
            return web.json_response({"kind": "Status", "status": "Failure", "code": 503, "message": "etcd unavailable"}, status=503)
        body = await request.json()
        token = body["spec"]["token"]
        user = self.tokens.get(token)
        status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        if user is not None:
            status = {"authenticated": True, "user": user,
                      "audiences": self.token_audiences.get(token, ["https://kubernetes.default.svc"])}
            wanted = body["spec"].get("audiences")
            if wanted and not set(wanted) & set(status["audiences"]):
                status = {"authenticated": False, "error": "token audiences are invalid"}
        return web.json_response({**body, "status": status}, status=201)

    async def access_review(self, request: web.Request) -> web.Response:
        if self.reviews_down:
            return web.json_response({"kind": "Status", "status": "Failure", "code": 503, "message": "etcd unavailable"}, status=503)
        body = await request.json()
        self.access_reviews.append(body["spec"])
        attrs = body["spec"]["resourceAttributes"]
        ok = attrs.get("group") == "gridop.io" and attrs.get("resource") == "gridsessions" and attrs.get("subresource") == "console"
        user = body["spec"]["user"]
        allowed = ok and any(
            (user, attrs["verb"], attrs["namespace"], name) in self.allowed for name in (attrs.get("name"), "*")
        )
        return web.json_response({**body, "status": {"allowed": allowed}}, status=201)

    # -- everything else: the emulator ----------------------------------------------------------------
    async def proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with self._session.request(
            request.method, self.kmock_url + request.rel_url.path, params=request.rel_url.query,
            data=body or None, headers=headers,
        ) as upstream:
            resp = web.StreamResponse(status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/json")})
            await resp.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            except (ConnectionError, aiohttp.ClientPayloadError):
                pass
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
            return resp
