"""The two legs of a console connection and what joins them.

* `Viewer`: the client's websocket. Output is queued in a bounded buffer and sent by its own
  task; when its backlog passes the limit it is dropped with a policy close that says why.
* `ConsoleHub`: one upstream attach (or exec) per session, shared by every viewer of that
  session on this gateway: at most one writer whose keystrokes reach stdin, any number of
  monitors. Output is fanned out to all of them, paced by the slowest viewer that keeps up: the
  hub stops reading the upstream while a viewer is backlogged (the console then blocks on its
  terminal, as it would on a real one), so viewers that merely jitter stay together. A viewer
  that holds the others back for `HOLD_SECONDS` without catching up stops setting the pace and
  is dropped once a whole buffer behind: one slow viewer slows the others for at most that long.
* `pump_logs`: a tail connection's own pod-log stream (tailLines, follow) into its viewer, read
  only as fast as the viewer takes it.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from .. import metrics
from ..api import console as wire
from . import channels
from .recording import Recording

log = logging.getLogger(__name__)

HOLD_SECONDS = 2.0  # how long one backlogged viewer may hold back viewers that wait for output


class UpstreamError(Exception):
    """The Kubernetes API refused or broke the console stream; `status` is what the client gets."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Viewer:
    """One client websocket with a bounded output buffer and a sender task."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        endpoint: str,
        mode: str,
        framing: str,  # "seed" | "v1"
        limit_bytes: int,
        transport: asyncio.BaseTransport | None = None,
        recording: Recording | None = None,
    ):
        self.ws = ws
        self.endpoint = endpoint
        self.mode = mode
        self.framing = framing
        self.limit = limit_bytes
        self.mark = max(1, limit_bytes // 4)  # backlogged above this: the upstream may pause for it
        self.holding_since: float | None = None  # when it began holding back a viewer that waits (hub's clock)
        self.on_drain: Callable[[], None] | None = None  # the hub's "some viewer caught up"
        self._below_mark = asyncio.Event()
        self.recording = recording
        self._transport = transport
        self._queue: collections.deque[tuple[bytes | str, int]] = collections.deque()  # (frame, counted size)
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_activity = time.monotonic()
        self.closing: tuple[int, str] | None = None
        self.closed = asyncio.Event()
        self._finishing = False
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop())

    # -- output --------------------------------------------------------------------------
    def offer(self, data: bytes) -> None:
        """Queue console output; drop the viewer when its backlog passes the limit."""
        if self.closing is not None or not data:
            return
        if self.recording is not None:
            self.recording.output(data)
        if self.endpoint == "tail" or self.framing == "seed":
            item: bytes | str = self._decoder.decode(data)
            size = len(data)
            if not item:
                return
        else:
            item, size = data, len(data)
        if self._queued + size > self.limit:
            metrics.CONSOLE_CLOSES.labels(self.endpoint, "slow").inc()
            self.close(wire.CLOSE_POLICY, f"too slow: more than {self.limit} bytes of output waiting; reconnect")
            return
        self._queue.append((item, size))
        self._queued += size
        self._wakeup.set()

    @property
    def backlogged(self) -> bool:
        return self.closing is None and self._queued >= self.mark

    @property
    def queued(self) -> int:
        return self._queued

    async def drained(self) -> None:
        """Wait until the backlog is below the mark (or the viewer is closing)."""
        while self.backlogged:
            self._below_mark.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._below_mark.wait(), 1.0)

    def notice(self, message: str) -> None:
        """A control message to v1 clients (seed clients only understand console bytes)."""
        if self.framing == "v1" and self.closing is None:
            self._queue.append((json.dumps({"type": "notice", "message": message}), 0))
            self._wakeup.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    item, size = self._queue.popleft()
                    self._queued -= size
                    if isinstance(item, str):
                        await self.ws.send_str(item)
                    else:
                        await self.ws.send_bytes(item)
                    if self._queued < self.mark:
                        self._below_mark.set()
                        if self.on_drain is not None:
                            self.on_drain()
                    self.bytes_out += size
                    metrics.CONSOLE_BYTES.labels(self.endpoint, "out").inc(size)
                    self.last_activity = time.monotonic()
                if self.closing is not None:
                    break
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass  # the client went away; the handler's receive loop notices too
        finally:
            await self._finish()

    # -- closing -------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """Close after what is queued (a dropped slow viewer: at once)."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if reason.startswith("too slow"):
            self._queue.clear()
            self._queued = 0
            if self._sender is not None:
                self._sender.cancel()  # it may be blocked writing to this very client; its finally closes
                return
        self._wakeup.set()
        if self._sender is None:
            asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        if self._finishing:
            return
        self._finishing = True
        code, reason = self.closing or (wire.CLOSE_NORMAL, "closed")
        try:
            # The close frame may not get out to a client that stopped reading: bounded wait, then abort.
            # A close reason is at most 123 bytes; cut on a character boundary.
            message = reason.encode()[:123].decode(errors="ignore").encode()
            await asyncio.wait_for(self.ws.close(code=code, message=message), 2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            if self._transport is not None:
                self._transport.abort()  # type: ignore[attr-defined]
        finally:
            if self.recording is not None:
                await self.recording.close()
            self.closed.set()


class ConsoleHub:
    """One session's upstream console, shared by this gateway's viewers of that session."""

    def __init__(
        self,
        key: tuple[str, str],
        connect: Callable[[], Any],
        on_empty: Callable[[ConsoleHub], None],
        *,
        owns_process: bool = False,
    ):
        self.key = key
        # The upstream runs a process of its own (an exec, not an attach): when the hub closes, its
        # stdin is closed first, so the process ends instead of living on in the pod.
        self.owns_process = owns_process
        self._connect = connect
        self._on_empty = on_empty
        self.viewers: set[Viewer] = set()
        self.writer: Viewer | None = None
        self.writer_user: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.protocol: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self.ended: str | None = None
        self.size: tuple[int, int] | None = None
        self._drained = asyncio.Event()

    async def open(self) -> None:
        """Connect upstream once; viewers joining meanwhile wait for the same attempt."""
        if self._ws is not None and not self._ws.closed:
            return
        if self._opening is not None:
            await asyncio.shield(self._opening)
            return
        self._opening = asyncio.get_running_loop().create_future()
        try:
            self._ws = await self._connect()
            self.protocol = self._ws.protocol
            metrics.CONSOLE_UPSTREAMS.inc()
            self._reader = asyncio.create_task(self._read())
            self._opening.set_result(None)
        except BaseException as exc:
            self._opening.set_exception(exc)
            self._opening.exception()  # retrieved here; concurrent joiners re-raise it
            raise
        finally:
            self._opening = None

    def join(self, viewer: Viewer, user: str) -> None:
        """Add a viewer; a second interactive viewer is refused (409) by the caller's check."""
        self.viewers.add(viewer)
        viewer.on_drain = self._drained.set
        if viewer.mode == wire.MODE_INTERACTIVE:
            self.writer, self.writer_user = viewer, user

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if self.writer is viewer:
            self.writer, self.writer_user = None, None
        if not self.viewers:
            self._on_empty(self)
            asyncio.get_running_loop().create_task(self.shutdown())

    async def send_input(self, data: bytes) -> None:
        if self._ws is not None and not self._ws.closed and data:
            await self._ws.send_bytes(channels.stdin(data))

    async def resize(self, cols: int, rows: int) -> None:
        self.size = (cols, rows)
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_bytes(channels.resize(cols, rows))

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "console ended"
        code = wire.CLOSE_NORMAL
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    frame = channels.decode(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:  # some proxies re-frame as text
                    frame = channels.decode(msg.data.encode())
                else:
                    break
                if frame.channel in (channels.STDOUT, channels.STDERR):
                    for viewer in list(self.viewers):
                        viewer.offer(frame.data)
                    await self._paced()
                elif frame.channel == channels.ERROR:
                    reason = channels.status_message(channels.parse_status(frame.data))
                    break
            if self._ws.close_code not in (None, 1000) and reason == "console ended":
                reason, code = f"upstream closed with code {self._ws.close_code}", wire.CLOSE_UPSTREAM_ERROR
        except (aiohttp.ClientError, ConnectionError, channels.ChannelError) as exc:
            metrics.CONSOLE_UPSTREAM_ERRORS.labels("interact", type(exc).__name__).inc()
            reason, code = f"upstream stream failed: {exc}", wire.CLOSE_UPSTREAM_ERROR
        except asyncio.CancelledError:
            return
        self.ended = reason
        self._on_empty(self)
        for viewer in list(self.viewers):
            viewer.close(code, reason)
        await self._close_upstream()

    async def _paced(self) -> None:
        """Hold the upstream while a viewer that still sets the pace is backlogged (or all are)."""
        while True:
            wait = self.pace_wait(time.monotonic())
            if wait is None:
                return
            self._drained.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), wait)

    def pace_wait(self, now: float) -> float | None:
        """How long to wait for viewers to drain before reading on (None: read on now).

        A backlogged viewer holds the pace until it has held back, for HOLD_SECONDS without once
        catching up, another viewer that is not backlogged: then it is slow, the others
        go on, and its buffer fills until it is dropped. Viewers that merely jitter catch up (or
        swap places) long before, so they are never dropped for one another.
        """
        viewers = [v for v in self.viewers if v.closing is None]
        if not viewers:
            return None
        sizes = sorted(v.queued for v in viewers)
        wait: float | None = None
        for v in viewers:
            least_other = (sizes[1] if v.queued == sizes[0] else sizes[0]) if len(sizes) > 1 else None
            if least_other is None or v.queued <= least_other:
                v.holding_since = None  # behind nobody
            elif v.holding_since is None and v.backlogged and least_other < v.mark:
                v.holding_since = now
            if v.backlogged:
                left = HOLD_SECONDS if v.holding_since is None else v.holding_since + HOLD_SECONDS - now
                if left > 0:
                    wait = min(wait if wait is not None else 1.0, left)
        if wait is None and all(v.backlogged for v in viewers):
            wait = 1.0  # nobody keeps up: the console blocks on its terminal
        return wait

    async def shutdown(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._close_upstream()

    async def _close_upstream(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            metrics.CONSOLE_UPSTREAMS.dec()
            with contextlib.suppress(Exception):
                if self.owns_process and not ws.closed:
                    # v5 half-closes stdin; v4 has no such channel: end-of-input on the terminal.
                    end = channels.close_stdin(ws.protocol or "") or channels.stdin(b"\x04")
                    await asyncio.wait_for(ws.send_bytes(end), 2.0)
                await asyncio.wait_for(ws.close(), 2.0)


async def pump_logs(resp: aiohttp.ClientResponse, viewer: Viewer) -> str:
    """Relay a pod-log stream into the viewer until it ends; returns why it ended."""
    try:
        async for chunk in resp.content.iter_any():
            viewer.offer(chunk)
            await viewer.drained()  # backpressure: the API server holds the rest of the log
            if viewer.closing is not None:
                return "viewer closed"
        return "log stream ended"
    except (aiohttp.ClientError, ConnectionError) as exc:
        metrics.CONSOLE_UPSTREAM_ERRORS.labels("tail", type(exc).__name__).inc()
        raise UpstreamError(502, f"log stream failed: {exc}") from exc
    finally:
        resp.release()
