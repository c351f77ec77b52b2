"""Synchronous handlers in a child process the worker can stop.

Python cannot stop a thread: a sync handler that hangs past its timeout, or whose task was
cancelled, would run on in a thread to its end (and hold the process at exit). So a worker runs a
sync handler in a child process of its own, as Celery's prefork pool does: one claimed batch at a
time goes down a pipe as raw payloads, the child runs the tasks one after another and sends the
outcomes back (together, or every `flush_every` seconds in a long batch), and it writes which task
it is on, and since when, into shared memory, so the worker watches timeouts and cancellations
with no message per task. A task past its timeout, a cancelled running task and a worker told to
stop now end with a SIGKILL of the child; the worker starts a new child for what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import time
from typing import Any

log = logging.getLogger(__name__)

#: `progress` slots in shared memory: the index of the task the child is running (-1: none), and
#: the time.monotonic() at which it started it (monotonic clocks are shared by the processes of a machine).
RUNNING, SINCE = 0, 1


def _child_main(handler_ref: str, inbox: multiprocessing.connection.Connection,
                conn: multiprocessing.connection.Connection, progress: Any, flush_every: float) -> None:
    """The child: import the handler, then run the batches that come down `inbox`, answering on `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the worker; it decides
    from .codec import decode  # (here, not at the top: the worker module imports this one)
    from .store import Outcome, task_id
    from .worker import Context, _call, load_handler

    handler = load_handler(handler_ref)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = inbox.recv()
        except EOFError:
            return
        if message is None:
            return
        sid, worker_id, timeout, tasks = message
        outcomes: list[Any] = []
        last = time.monotonic()
        for task in tasks:
            now = time.monotonic()
            progress[SINCE] = now
            progress[RUNNING] = task.index
            try:
                event = decode(task.payload)
            except Exception as exc:
                outcomes.append(Outcome(task.index, task.token, "fatal", f"undecodable task input: {exc}"))
                continue
            ctx = Context(sid, task_id(sid, task.index), task.attempt, now + timeout if timeout else None, worker_id,
                          handler_ref)
            outcome = _call(handler, task, event, ctx, time.time())
            outcome.ended = time.time()
            outcomes.append(outcome)
            if time.monotonic() - last >= flush_every:
                conn.send(("outcomes", outcomes))
                outcomes, last = [], time.monotonic()
        progress[RUNNING] = -1
        conn.send(("done", outcomes))


class HandlerProcess:
    """One child process running a sync handler; `kill()` stops it wherever it is."""

    def __init__(self, handler_ref: str, *, flush_every: float = 0.1):
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads and a loop
        self.progress = ctx.Array("d", [-1.0, 0.0], lock=False)
        # One pipe each way: the loop reads the child's in non-blocking mode, which must not touch
        # the pipe the worker writes batches into.
        child_in, self._conn = ctx.Pipe(duplex=False)
        self._from_child, child_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child_main, args=(handler_ref, child_in, child_out, self.progress,
                                                             flush_every), name="gridop-handler", daemon=True)
        self.process.start()
        child_in.close()
        child_out.close()
        self.messages: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        # The child's messages are read on the loop as they arrive (no thread hop on a task's round trip).
        self._fd = self._from_child.fileno()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._read)
        self._reading = True
        self._exit: asyncio.Task[None] | None = None

    def _read(self) -> None:
        """Parse what the child wrote (multiprocessing's frames: a length, then a pickle) into the
        queue; its end (a kill, a crash) too."""
        try:
            data = os.read(self._fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
            self._exit = self._loop.create_task(self._report_exit())
            return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = struct.unpack("!i", buffer[:4])
            head = 4
            if size == -1:  # a frame over 2 GiB: an 8-byte length follows
                if len(buffer) < 12:
                    return
                (size,) = struct.unpack("!Q", buffer[4:12])
                head = 12
            if len(buffer) < head + size:
                return
            message = pickle.loads(buffer[head:head + size])
            del buffer[:head + size]
            self.messages.put_nowait(message)

    async def _report_exit(self) -> None:
        """It has closed its end: it is gone, or going. Its exit code, once there (off the loop)."""
        await asyncio.to_thread(self.process.join, 5)
        self.messages.put_nowait(("exited", self.process.exitcode))

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._fd)

    async def ready(self) -> None:
        kind, detail = await self.messages.get()
        if kind != "ready":
            raise RuntimeError(f"the handler process ended before it was ready (exit code {detail})")

    async def send(self, batch: tuple[str, str, float | None, list[Any]]) -> None:
        self.progress[RUNNING] = -1.0
        if sum(len(t.payload) for t in batch[3]) < 32 * 1024:
            self._conn.send(batch)  # fits the pipe's buffer: the write cannot block
        else:
            await asyncio.to_thread(self._conn.send, batch)

    @property
    def running(self) -> tuple[int, float] | None:
        """(task index, time.monotonic() it started) of the task the child is on, or None."""
        index = int(self.progress[RUNNING])
        return (index, self.progress[SINCE]) if index >= 0 else None

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            self.process.kill()

    async def close(self, grace: float = 2.0) -> None:
        """Ask the child to exit; kill it if it does not within `grace` seconds."""
        self._stop_reading()
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        await asyncio.to_thread(self.process.join, grace)
        if self.process.is_alive():
            self.kill()
            await asyncio.to_thread(self.process.join, 5)
        for end in (self._conn, self._from_child):
            with contextlib.suppress(OSError):
                end.close()
