"""ConsoleClient: interact with and tail a session's console through the gateway.

    client = ConsoleClient("wss://grid.example.com/console", token=token, tenant="acme", namespace="team-a")
    async for line in client.tail("drone-sim", lines=100, follow=True):
        print(line, end="")
    await client.interact("drone-sim")          # wires this terminal (raw mode, resize) to the console

A refused connection raises `ConsoleError` with the gateway's HTTP status and its one-line message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..api import console as wire

DETACH_KEY = b"\x1d"  # Ctrl-]: leave the console, as telnet does
QUIET_AFTER_INPUT = 1.0  # at the end of piped input: leave once the console has been quiet this long
RECONNECT_SECONDS = 30.0  # how long a followed tail tries to reach another gateway replica
RECONNECT_PAUSE = 0.2  # the first wait before reconnecting (doubling, up to 2 s)
RESUME_LINES = 200  # lines a followed tail asks for again after a reconnect, to find its place
SEAM_WAIT = 1.0  # how long the lines asked for again may pause before the tail goes on without the rest

log = logging.getLogger(__name__)


def _overlap(shown: list[str], again: list[str]) -> int:
    """How many of the lines received again (`again`) repeat the end of what was shown: the longest
    k with again[:k] == shown[-k:]."""
    for k in range(min(len(shown), len(again)), 0, -1):
        if again[:k] == shown[-k:]:
            return k
    return 0


class ConsoleError(Exception):
    """The gateway refused or ended the console; `status` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _ws_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"gateway url {url!r} must be ws://, wss://, http:// or https:// with a host")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class ConsoleStream:
    """An open interact connection: `send`, `resize`, and iterate the console's output (bytes)."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.notices: list[str] = []

    async def send(self, data: bytes | str) -> None:
        await self.ws.send(data.encode() if isinstance(data, str) else data)

    async def resize(self, cols: int, rows: int) -> None:
        await self.ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for message in self.ws:
                if isinstance(message, str):  # control message from the gateway
                    with contextlib.suppress(ValueError):
                        self.notices.append(str(json.loads(message).get("message")))
                    continue
                yield message
        except ConnectionClosed:
            return

    @property
    def close_reason(self) -> str:
        return self.ws.close_reason or "connection closed"

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


class ConsoleClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        tenant: str | None = None,
        namespace: str | None = None,
        open_timeout: float = 15.0,
    ):
        self.base = _ws_base(url)
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("token must be a non-empty string")
        self.token = token.strip() if token else None
        self.tenant = tenant
        self.namespace = namespace
        self.open_timeout = open_timeout

    def url(self, endpoint: str, session: str) -> str:
        path = f"/{endpoint}/{self.namespace}/{session}" if self.namespace else f"/{endpoint}/{session}"
        return self.base + path

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.tenant:
            headers[wire.TENANT_HEADER] = self.tenant
        return headers

    async def _connect(self, url: str, headers: dict[str, str]) -> ClientConnection:
        try:
            return await connect(
                url, additional_headers=headers, subprotocols=[wire.SUBPROTOCOL],  # type: ignore[list-item]
                compression=None, open_timeout=self.open_timeout, max_size=None, proxy=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            message = f"gateway answered {status}"
            with contextlib.suppress(ValueError, AttributeError):
                message = str(json.loads(exc.response.body or b"{}").get("message") or message)
            raise ConsoleError(status, message) from None
        except InvalidURI as exc:
            raise ValueError(f"gateway url: {exc}") from None
        except (TimeoutError, OSError, InvalidHandshake) as exc:
            raise ConsoleError(0, f"cannot reach the console gateway at {self.base}: {exc}") from None

    def _interact_url(self, session: str, mode: str) -> str:
        if mode not in wire.MODES:
            raise ValueError(f"mode must be one of {', '.join(wire.MODES)}, got {mode!r}")
        return self.url("interact", session) + ("?mode=monitor" if mode == wire.MODE_MONITOR else "")

    async def open(self, session: str, *, mode: str = wire.MODE_INTERACTIVE) -> ConsoleStream:
        return ConsoleStream(await self._connect(self._interact_url(session, mode), self._headers()))

    async def tail(self, session: str, lines: int | None = None, follow: bool = False) -> AsyncIterator[str]:
        """The console log, line by line (with line endings), then new lines while `follow`.

        A followed tail outlives a gateway replica that stops (close code 1001, a rolling update or
        a drain): it reconnects with backoff for up to `RECONNECT_SECONDS`, asks again for the last
        lines it showed, and skips those (a line written twice in a row at the seam may be skipped
        once, where the log cannot tell them apart)."""
        if lines is not None and (not isinstance(lines, int) or isinstance(lines, bool) or lines < 0):
            raise ValueError(f"lines must be a non-negative integer, got {lines!r}")
        shown: collections.deque[str] = collections.deque(maxlen=RESUME_LINES)
        ask = lines
        again = False
        while True:
            headers = {wire.FOLLOW_HEADER: "true" if follow else "false"}
            if ask is not None:
                headers[wire.LINES_HEADER] = str(ask)
            url, full = self.url("tail", session), self._headers(headers)
            ws = await (self._reconnect(url, full) if again else self._connect(url, full))
            # After a reconnect, the lines asked for again: held until all are here (or the stream
            # pauses), then the longest run that repeats the end of what was shown is skipped.
            seam: list[str] | None = list(shown) if again and shown else None
            held: list[str] = []
            pending = ""
            try:
                while True:
                    try:
                        async with asyncio.timeout(SEAM_WAIT if seam is not None else None):
                            message = await ws.recv()
                    except TimeoutError:
                        message = ""
                    pending += message if isinstance(message, str) else message.decode(errors="replace")
                    *complete, pending = pending.split("\n")
                    fresh = [text + "\n" for text in complete]
                    if seam is not None:
                        held += fresh
                        if len(held) < len(seam) and message:
                            continue
                        fresh, seam = held[_overlap(seam, held):], None
                    for line in fresh:
                        shown.append(line)
                        yield line
            except ConnectionClosed:
                pass
            finally:
                await ws.close()
            if not (follow and ws.close_code == wire.CLOSE_GOING_AWAY):
                break
            log.info("console gateway went away (%s); reconnecting", ws.close_reason or "1001")
            again, ask = True, len(shown)
        if pending:
            yield pending
        if ws.close_code not in (None, wire.CLOSE_NORMAL, 1005):
            raise ConsoleError(0, ws.close_reason or f"console closed with code {ws.close_code}")

    async def _reconnect(self, url: str, headers: dict[str, str]) -> ClientConnection:
        """Connect again after the gateway went away: with backoff, while nothing answers or the
        gateway says it is unavailable, for up to RECONNECT_SECONDS; any other refusal at once."""
        deadline = asyncio.get_running_loop().time() + RECONNECT_SECONDS
        pause = RECONNECT_PAUSE
        while True:
            await asyncio.sleep(pause)
            try:
                return await self._connect(url, headers)
            except ConsoleError as exc:
                if exc.status not in (0, 502, 503) or asyncio.get_running_loop().time() + pause > deadline:
                    raise
            pause = min(2.0, pause * 2)

    async def interact(
        self,
        session: str,
        *,
        mode: str = wire.MODE_INTERACTIVE,
        stdin_fd: int | None = None,
        stdout: BinaryIO | None = None,
        detach_key: bytes = DETACH_KEY,
    ) -> str:
        """Wire a terminal to the console until it ends or `detach_key` is typed; returns why it ended.

        A gateway replica that stops (close code 1001) does not end it: it reconnects with backoff
        for up to `RECONNECT_SECONDS` (the stopping replica freed the writer), and what is typed
        meanwhile is sent once it is back."""
        url, headers = self._interact_url(session, mode), self._headers()
        stream = ConsoleStream(await self._connect(url, headers))
        connected = asyncio.Event()
        connected.set()
        stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        out = stdout or sys.stdout.buffer
        loop = asyncio.get_running_loop()
        detached = asyncio.Event()
        inputs: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the end of input
        last_output = [loop.time()]
        restore: Any = None
        is_tty = os.isatty(stdin_fd)
        if is_tty:
            import termios
            import tty

            restore = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd)

        def readable() -> None:
            try:
                data = os.read(stdin_fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(stdin_fd)
                inputs.put_nowait(None)
                return
            if detach_key and detach_key in data:
                data = data[: data.index(detach_key)]
                if data:
                    inputs.put_nowait(data)
                detached.set()
                return
            inputs.put_nowait(data)

        async def send_size() -> None:
            with contextlib.suppress(OSError, ConnectionClosed):
                size = os.get_terminal_size(stdin_fd)
                await stream.resize(size.columns, size.lines)

        async def pump_input() -> None:
            """Send what is typed or piped. At the end of piped input, wait for the console to go
            quiet (its answer to the last line), then end: the console itself stays open."""
            while True:
                data = await inputs.get()
                if data is None:
                    while loop.time() - last_output[0] < QUIET_AFTER_INPUT:  # noqa: ASYNC110  (a timer that output pushes back)
                        await asyncio.sleep(QUIET_AFTER_INPUT - (loop.time() - last_output[0]))
                    return
                while True:
                    await connected.wait()
                    try:
                        await stream.send(data)
                        break
                    except ConnectionClosed:
                        if stream.close_code != wire.CLOSE_GOING_AWAY:
                            raise
                        connected.clear()  # the output side reconnects; send it there
                last_output[0] = loop.time()

        async def pump_output() -> None:
            nonlocal stream
            while True:
                async for data in stream:
                    last_output[0] = loop.time()
                    out.write(data)
                    out.flush()
                if stream.close_code != wire.CLOSE_GOING_AWAY:
                    return
                connected.clear()
                log.info("console gateway went away (%s); reconnecting", stream.close_reason or "1001")
                await stream.close()
                stream = ConsoleStream(await self._reconnect(url, headers))
                connected.set()
                if is_tty:
                    await send_size()

        async def read_file() -> None:
            """stdin redirected from a file, which the loop cannot watch: read it in a thread."""
            while data := await asyncio.to_thread(os.read, stdin_fd, 65536):
                inputs.put_nowait(data)
            inputs.put_nowait(None)

        reading: asyncio.Task[None] | None = None
        try:
            loop.add_reader(stdin_fd, readable)
        except PermissionError:
            reading = asyncio.create_task(read_file())
        if is_tty:
            loop.add_signal_handler(signal.SIGWINCH, lambda: loop.create_task(send_size()))
            await send_size()
        tasks = [asyncio.create_task(pump_output()), asyncio.create_task(pump_input()), asyncio.create_task(detached.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = ("detached" if tasks[2] in done else "end of input" if tasks[1] in done and not tasks[0].done()
                      else stream.close_reason)
            if tasks[1] in done:
                tasks[1].result()  # a failed send surfaces here
        except ConnectionClosed:
            reason = stream.close_reason
        finally:
            for task in [*tasks, *([reading] if reading else [])]:
                task.cancel()
            loop.remove_reader(stdin_fd)
            if is_tty:
                loop.remove_signal_handler(signal.SIGWINCH)
                import termios

                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, restore)
            await stream.close()
        code = stream.close_code
        if reason not in ("detached", "end of input") and code not in (None, wire.CLOSE_NORMAL, 1005):
            raise ConsoleError(0, reason)
        return reason


__all__ = ["DETACH_KEY", "ConsoleClient", "ConsoleError", "ConsoleStream"]
