"""The worker runtime: pull tasks in batches, run the user's handler, heartbeat, report.

A handler is `module:function(event, context) -> dict`. Async handlers run concurrently on the
event loop. Sync handlers run one after another in a child process (`isolation="process"`, the
command line's default: see isolation.py), which the worker kills at a task's timeout, when the
running task is cancelled, or on a stop; or, with `isolation="thread"`, on the loop itself when
there is no task timeout (no thread hop per batch), or in a thread watched from the loop when
there is one, so a handler that hangs past its timeout is reported (and abandoned, still running).
Heartbeats run in a thread of their own, so a long sync handler never starves its leases.

A worker serves one session (`run`), or a whole pool (`serve_pool`): then it picks a ready
session of the pool at random, works on it for a time slice, and picks again, so a pool's
sessions share its workers evenly however many tasks each holds; one worker of the pool sweeps
all of the pool's sessions each heartbeat.

Claims adapt to the tasks: a worker starts with one task and then claims about `claim_seconds`
worth of work (by the measured time per task, up to `batch_size`; `claim_seconds=0` claims
`batch_size` every time), so zero-work tasks travel in
batches of hundreds while minute-long tasks spread one by one across idle workers. Results are
reported as they come: together with the next claim when the batch ran briefly, and each on its
own as soon as a batch has been running for `report_interval`.
Cancellation and lost leases come back with each heartbeat and stop the affected tasks. The same
thread sweeps the batch (due retries back to the queue, lapsed leases to retry) once per
heartbeat, so a pool of workers moves retries along without the operator; the sweep is one
idempotent script, safe to run from every worker and the operator at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import inspect
import itertools
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from .codec import PayloadError, decode, encode
from .metrics import METRICS
from .store import ClaimedTask, Outcome, TaskStore, task_id

log = logging.getLogger(__name__)
CLAIM_BYTES = 16 * 1024 * 1024  # the most task input one claim carries (by the measured mean input size)


class PermanentError(Exception):
    """Raise from a handler to fail the task without retrying it."""


#: What get_remaining_time_in_millis() says for a task without a timeout: AWS Lambda's longest run.
NO_TIMEOUT_MILLIS = 900_000


@dataclasses.dataclass
class Context:
    """What the handler receives as `context`: gridop's fields, and AWS Lambda's context object's
    (so an HTC-Grid lambda that reads them runs unchanged)."""

    session_id: str
    task_id: str
    attempt: int
    deadline: float | None  # time.monotonic() deadline, None without a timeout
    worker_id: str
    function_name: str = "handler"  # the handler, as `module:function`

    @property
    def aws_request_id(self) -> str:
        return self.task_id

    @property
    def function_version(self) -> str:
        return "$LATEST"

    @property
    def invoked_function_arn(self) -> str:
        return f"gridop:function:{self.function_name}"

    @property
    def memory_limit_in_mb(self) -> int:
        return _memory_limit_mb()

    @property
    def log_group_name(self) -> str:
        return "gridop"

    @property
    def log_stream_name(self) -> str:
        return self.worker_id

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds before the task's timeout; without one, Lambda's longest run (900,000)."""
        if self.deadline is None:
            return NO_TIMEOUT_MILLIS
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@functools.cache
def _memory_limit_mb() -> int:
    """The container's memory limit (cgroup v2, then v1), else the machine's memory, in MiB (read once)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = open(path).read().strip()  # noqa: SIM115 - a one-line sysfs read
            if text != "max" and int(text) < 1 << 60:
                return int(text) // (1 << 20)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    return 0


def load_handler(spec: str) -> Callable[..., Any]:
    """`package.module:function` -> the function (ValueError naming what is wrong)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler {spec!r} must look like 'module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"handler {spec!r}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"handler {spec!r}: {module_name} has no callable {attr!r}")
    return fn


@dataclasses.dataclass
class WorkerStats:
    claimed: int = 0
    finished: int = 0
    errors: int = 0
    stale: int = 0
    batches: int = 0
    handoffs: int = 0  # tasks handed straight to this worker while it waited


class _Reporter:
    """The outcomes of one claimed batch on their way to the data plane. A batch that runs briefly
    reports once, with the next claim; once it has run for `interval`, each outcome is sent as
    soon as it is known, so a long task's result is never held back by its neighbours."""

    def __init__(self, worker: Worker, interval: float):
        self.worker = worker
        self.interval = interval
        self.pending: list[Outcome] = []
        self.seen: set[int] = set()  # tasks with an outcome, reported or pending
        self.since = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        self.seen.add(outcome.index)
        outcome.ended = time.time()
        self.pending.append(self.worker._final(outcome))

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.since >= self.interval

    async def flush(self) -> None:
        outcomes, self.pending = self.pending, []
        self.since = time.monotonic()
        if outcomes:
            await self.worker._report(outcomes)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 4000 else text[:4000] + "..."


class _SyncBatch:
    """Runs claimed tasks one after another in a thread; the loop watches `current`."""

    def __init__(self, handler: Callable[..., Any], items: list[tuple[ClaimedTask, Any, Context]], skip: set[int]):
        self.handler = handler
        self.items = items
        self.skip = skip
        self.results: dict[int, Outcome] = {}
        self.current: tuple[int, float] | None = None
        self.abandoned = threading.Event()

    def run(self) -> None:
        for task, event, ctx in self.items:
            if self.abandoned.is_set():
                return
            if task.index in self.skip:
                continue
            started = time.time()
            self.current = (task.index, time.monotonic())
            outcome = _call(self.handler, task, event, ctx, started)
            self.current = None
            if not self.abandoned.is_set():
                self.results[task.index] = outcome


def _call(handler: Callable[..., Any], task: ClaimedTask, event: Any, ctx: Context, started: float) -> Outcome:
    try:
        result = handler(event, ctx)
    except PermanentError as exc:
        return Outcome(task.index, task.token, "fatal", _describe(exc), started)
    except KeyboardInterrupt:
        raise  # the operator of this process asked it to stop, not the task
    except BaseException as exc:  # sys.exit() or a BaseException in one task fails that task only
        return Outcome(task.index, task.token, "error", _describe(exc), started)
    return _encode_result(task, result, started)


def _encode_result(task: ClaimedTask, result: Any, started: float) -> Outcome:
    try:
        return Outcome(task.index, task.token, "ok", encode(result, what="handler result"), started)
    except PayloadError as exc:
        # Deterministic: retrying would produce the same value again.
        return Outcome(task.index, task.token, "fatal", str(exc), started)


class Worker:
    def __init__(
        self,
        store: TaskStore,
        session_id: str,
        handler: Callable[..., Any],
        *,
        worker_id: str | None = None,
        batch_size: int = 1024,
        heartbeat_seconds: float = 5.0,
        lease_seconds: float = 30.0,
        task_timeout: float | None = None,
        retry_on_error: bool = True,
        exit_when_done: bool = True,
        idle_wait: float = 1.0,
        claim_seconds: float = 0.1,
        report_interval: float = 0.1,
        handler_ref: str | None = None,
        isolation: str = "thread",
    ):
        if lease_seconds <= heartbeat_seconds:
            raise ValueError(f"lease_seconds ({lease_seconds}) must exceed heartbeat_seconds ({heartbeat_seconds})")
        self.store = store
        self.sid = session_id
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        if isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', got {isolation!r}")
        if isolation == "process" and not handler_ref:
            raise ValueError("isolation='process' needs handler_ref ('module:function'): the child imports it")
        self.handler_ref: str = handler_ref or str(getattr(handler, "__qualname__", "handler"))
        # Sync handlers in a child process the worker can kill (on a timeout, a cancellation, a stop);
        # async handlers run on the loop, where cancelling them is enough.
        self.isolated = isolation == "process" and not self.is_async
        self._child: Any = None  # the HandlerProcess, started on the first claim
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch_size = batch_size
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_seconds = lease_seconds
        self.task_timeout = task_timeout
        self.retry_on_error = retry_on_error
        self.exit_when_done = exit_when_done
        self.idle_wait = idle_wait
        self.claim_seconds = claim_seconds
        self.report_interval = report_interval
        self._per_task: float | None = None  # measured seconds per task (moving average); None: not yet
        self._input_bytes = 0.0  # mean input size of the tasks claimed (moving average)
        self.stats = WorkerStats()
        self._held: dict[int, str] = {}  # index -> claim token, for the tasks of `self.sid`
        self._switch_lock = threading.Lock()  # the heartbeat thread reads (sid, held) as one
        self.pool: str | None = None
        self.retention = 86400
        self._lost: set[int] = set()
        self._async_tasks: dict[int, asyncio.Task[Outcome]] = {}
        self._withdrawing: asyncio.Future[Any] | None = None  # an idle registration being withdrawn
        self._idle_task: asyncio.Task[Any] | None = None  # the task waiting for a hand-off, while it waits
        self._cut_by_stop = False  # the wait was cancelled by a stop (not by anyone else)
        self._current: dict[int, ClaimedTask] = {}  # the claim in hand, by index (for the metrics)
        self._executor = self._new_executor()
        self._beat: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any] | None] | None = None  # the heartbeat's loop, task

    @property
    def holding(self) -> bool:
        """Whether the worker holds claimed tasks (running them, or about to report them)."""
        return bool(self._held)

    @contextlib.asynccontextmanager
    async def _heartbeating(self) -> AsyncIterator[None]:
        """The heartbeat thread that renews the worker's leases while it runs; wound down after."""
        beating = threading.Event()
        heartbeats = threading.Thread(target=self._heartbeat_thread, args=(asyncio.get_running_loop(), beating),
                                      name="gridop-heartbeat", daemon=True)
        heartbeats.start()
        try:
            yield
        finally:
            await self._wind_down(beating, heartbeats)

    async def _step(self, sid: str, claimed: list[ClaimedTask],
                    then: Callable[[], tuple[int, float]]) -> tuple[str | None, list[ClaimedTask]]:
        """Run a claim, report it, and take the next step in the same round trip: claim up to
        `then()[0]` more tasks, or (none left) register for hand-off for `then()[1]` seconds (asked
        after the work, so a stop meanwhile counts). Returns (idle registration, next claim)."""
        outcomes = await self._work_on(claimed)
        next_count, idle_ttl = then()
        _, stale, idle_entry, following = await self.store.complete_and_next(
            sid, outcomes, worker=self.worker_id, next_count=next_count, lease_seconds=self.lease_seconds,
            idle_ttl=idle_ttl)
        self._done_with(claimed, outcomes, stale)
        return idle_entry, following

    async def run(self, stop: asyncio.Event | None = None) -> WorkerStats:
        """Run the batch's tasks until it is done (or `stop` is set: then finish the claim in hand)."""
        stop = stop or asyncio.Event()

        def then() -> tuple[int, float]:  # after a claim: the next one, or wait for a hand-off
            return (0, 0.0) if stop.is_set() else (self.claim_size(), self.idle_wait + 1)

        async with self._heartbeating():
            stop_watch = asyncio.ensure_future(stop.wait())
            stop_watch.add_done_callback(self._cut_idle_wait)
            try:
                await self._run_batch_loop(stop, then)
            finally:
                stop_watch.cancel()
        return self.stats

    async def _run_batch_loop(self, stop: asyncio.Event, then: Callable[[], tuple[int, float]]) -> None:
        claimed: list[ClaimedTask] = []
        idle_entry: str | None = None  # our direct-handoff registration, when the last step made one
        while claimed or not stop.is_set():
            wanted = self.claim_size()
            if not claimed and idle_entry is None:  # (a report that found nothing to claim registered us idle)
                claimed = await self.store.claim(self.sid, self.worker_id, wanted, self.lease_seconds)
            if not claimed:
                if self.exit_when_done and await self.store.done(self.sid):
                    if idle_entry is not None:
                        claimed = [t for t in [await self.store.unidle(self.sid, idle_entry)] if t]
                        idle_entry = None
                        continue
                    break
                claimed = await self._wait_for_work(stop, idle_entry)
                idle_entry = None
                continue
            if len(claimed) >= wanted:
                await self.store.nudge(self.sid)  # likely more work: wake an idle sibling
            idle_entry, claimed = await self._step(self.sid, claimed, then)
        if idle_entry is not None:
            # Stopping while offered for handoff: withdraw, and finish a task handed over meanwhile.
            handed = await self.store.unidle(self.sid, idle_entry)
            if handed is not None:
                outcomes = await self._work_on([handed])
                self._done_with([handed], outcomes, (await self.store.complete(self.sid, outcomes))[1])

    async def _wind_down(self, beating: threading.Event, heartbeats: threading.Thread) -> None:
        """The worker is done (or cut short): a withdrawal in flight gets a moment to finish, the
        heartbeat thread stops -- within a second, even when a Redis outage holds its sweep -- and
        the handler threads go."""
        if self._withdrawing is not None:
            await asyncio.wait([self._withdrawing], timeout=5)
            self._withdrawing.cancel()
        beating.set()
        await asyncio.to_thread(heartbeats.join, 1)
        if heartbeats.is_alive() and self._beat is not None:
            loop, task = self._beat
            if task is not None:
                with contextlib.suppress(RuntimeError):  # (its loop has closed already)
                    loop.call_soon_threadsafe(task.cancel)
            await asyncio.to_thread(heartbeats.join, 10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._child is not None:
            await self._child.close()
            self._child = None

    async def _work_on(self, claimed: list[ClaimedTask]) -> list[Outcome]:
        """Hold a claim, run it and time it; returns the outcomes not reported on the way. (Its
        metrics wait for `_done_with`, after the report: they are not on the round trip's path.)"""
        self._current = {t.index: t for t in claimed}
        self._held.update({t.index: t.token for t in claimed})
        self._lost.difference_update(t.index for t in claimed)  # a new claim supersedes old news
        started = time.monotonic()
        outcomes = await self._run_batch(claimed)
        self._measure(len(claimed), time.monotonic() - started)
        size = sum(len(t.payload) for t in claimed) / len(claimed)
        self._input_bytes = size if not self._input_bytes else 0.7 * self._input_bytes + 0.3 * size
        return outcomes

    def _done_with(self, claimed: list[ClaimedTask], outcomes: list[Outcome], stale: int) -> None:
        """A claim was run and reported: its metrics and stats; its tasks are no longer held."""
        self.stats.claimed += len(claimed)
        self.stats.batches += 1
        self._observe_claim(claimed)
        self._count(outcomes, stale)
        for t in claimed:
            self._held.pop(t.index, None)
            self._lost.discard(t.index)

    def claim_size(self) -> int:
        """How many tasks to claim next: one until a task has been timed, then about
        `claim_seconds` of work by the measured time per task (at most `batch_size`, and no more
        than CLAIM_BYTES of inputs by their measured size)."""
        # Whatever the size, a claim's inputs stay within CLAIM_BYTES (large inputs travel fewer at a time).
        cap = min(self.batch_size, max(1, int(CLAIM_BYTES / self._input_bytes))) if self._input_bytes else self.batch_size
        if not self.claim_seconds:
            return cap  # fixed-size claims
        if self._per_task is None:
            return 1
        return max(1, min(cap, int(self.claim_seconds / max(self._per_task, 1e-7))))

    def _measure(self, tasks: int, seconds: float) -> None:
        per_task = seconds / max(tasks, 1)
        self._per_task = per_task if self._per_task is None else 0.7 * self._per_task + 0.3 * per_task

    def _final(self, outcome: Outcome) -> Outcome:
        """Without retries (`retry_on_error=False`) every failure is final."""
        if self.retry_on_error or outcome.outcome not in self._FATAL:
            return outcome
        return dataclasses.replace(outcome, outcome=self._FATAL[outcome.outcome])

    def _observe_claim(self, claimed: list[ClaimedTask]) -> None:
        """Queue wait (once per run of tasks queued together) and retries, for the metrics."""
        m = METRICS.batch(self.sid)
        for (queued, at, attempt), run in itertools.groupby(claimed, lambda t: (t.queued, t.claimed, t.attempt)):
            n = sum(1 for _ in run)
            if queued and at:
                m.queue_wait.observe(max(0.0, at - queued), n)
            if attempt > 1:
                m.retries += n

    def _count(self, outcomes: list[Outcome], stale: int) -> None:
        """Tally reported outcomes: the worker's stats and its metrics (run time, end to end, failures)."""
        m = METRICS.batch(self.sid)
        now = time.time()
        current = self._current
        finished = 0
        for o in outcomes:
            if o.outcome == "ok":
                finished += 1
                task = current.get(o.index)
                if task is not None and task.submitted:
                    m.end_to_end.observe(now - task.submitted)
            else:
                m.failed["timeout" if o.outcome.endswith("timeout") else "application"] += 1
            if o.started is not None and o.ended is not None:
                m.run.observe(o.ended - o.started)
        m.finished += finished
        self.stats.stale += stale
        self.stats.finished += finished
        self.stats.errors += len(outcomes) - finished

    async def _report(self, outcomes: list[Outcome]) -> None:
        """Report some outcomes of the running batch now (a long batch's finished tasks)."""
        _, stale = await self.store.complete(self.sid, outcomes)
        self._count(outcomes, stale)
        for o in outcomes:
            if self._held.get(o.index) == o.token:
                self._held.pop(o.index, None)

    async def serve_pool(self, pool: str, stop: asyncio.Event | None = None, *, slice_seconds: float = 1.0,
                         retention: int = 86400) -> WorkerStats:
        """Serve every session of `pool` until `stop` is set (then finish the claim in hand)."""
        stop = stop or asyncio.Event()
        self.pool, self.retention = pool, retention
        estimates: dict[str, float | None] = {}  # seconds per task, per session: handlers differ by input
        async with self._heartbeating():
            while not stop.is_set():
                sid = await self.store.pool_pick(pool)
                if sid is None:
                    await self._wait_for_pool(pool, stop)
                    continue
                with self._switch_lock:
                    self.sid = sid
                if len(estimates) > 10_000:
                    estimates.clear()
                self._per_task = estimates.get(sid)
                claimed = await self.store.claim(sid, self.worker_id, self.claim_size(), self.lease_seconds)
                if not claimed:
                    await self.store.pool_idle(pool, sid)
                    continue
                turn_ends = time.monotonic() + slice_seconds

                def then(turn_ends: float = turn_ends) -> tuple[int, float]:  # more of this session while its turn lasts
                    more = not stop.is_set() and time.monotonic() < turn_ends
                    return (self.claim_size() if more else 0), 0.0

                while claimed:
                    _, claimed = await self._step(sid, claimed, then)
                estimates[sid] = self._per_task
        return self.stats

    async def _wait_for_pool(self, pool: str, stop: asyncio.Event) -> None:
        waiter = asyncio.create_task(self.store.pool_wait(pool, self.idle_wait))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait_for_work(self, stop: asyncio.Event, entry: str | None) -> list[ClaimedTask]:
        """Idle: offer ourselves for direct handoff and wait for a task, a nudge, or a stop."""
        if self._withdrawing is not None:
            await self._withdrawing
            self._withdrawing = None
        if entry is None:
            entry = await self.store.register_idle(self.sid, self.worker_id, self.lease_seconds, ttl=self.idle_wait + 1)
        handed = None if stop.is_set() else await self._idle_wait()
        # Always withdraw: a worker that took a task handed over for another leaves its own
        # registration behind otherwise; one whose registration was taken gets its task here.
        # Holding a task, withdraw while running it (the withdrawal returns nothing then).
        if handed is None:
            handed = await self.store.unidle(self.sid, entry)
        elif not handed.token.startswith(f"{self.worker_id}:"):
            # Handed over for another idle worker: ours is still registered, and goes to that one.
            self._withdrawing = asyncio.ensure_future(self.store.unidle(self.sid, entry, holding=handed))
        if handed is not None:
            self.stats.handoffs += 1
        return [handed] if handed is not None else []

    async def _idle_wait(self) -> ClaimedTask | None:
        """Wait for a hand-off or a nudge. A stop cancels the wait (`_cut_idle_wait`): this is on
        every idle round trip's path, where a task and asyncio.wait() per wait cost more than the
        rest of the hand-off."""
        task = asyncio.current_task()
        assert task is not None
        self._idle_task = task
        try:
            return await self.store.wait_for_work(self.sid, self.idle_wait)
        except asyncio.CancelledError:
            if not self._cut_by_stop or task.cancelling() > 1:
                raise  # cancelled by someone else (a second signal: stop now), or as well
            task.uncancel()
            return None
        finally:
            self._idle_task = None
            self._cut_by_stop = False

    def _cut_idle_wait(self, stop_watch: asyncio.Future[Any]) -> None:
        if not stop_watch.cancelled() and self._idle_task is not None and not self._cut_by_stop:
            self._cut_by_stop = True
            self._idle_task.cancel()

    def _heartbeat_thread(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        """Renew our leases every heartbeat from a thread of our own (with its own connections)."""

        async def beat() -> None:
            self._beat = (asyncio.get_running_loop(), asyncio.current_task())
            store = self.store.clone()
            try:
                while not stop.wait(self.heartbeat_seconds):
                    with self._switch_lock:
                        sid, held = self.sid, list(self._held.items())
                    try:
                        if self.pool is None:
                            swept = await store.sweep(sid)
                            METRICS.infrastructure_failures(sid, swept["retried"] + swept["failed"])
                        else:
                            await store.pool_sweep(self.pool, self.worker_id, self.heartbeat_seconds, self.retention)
                    except Exception as exc:  # the next beat sweeps again
                        log.warning("sweep failed: %s", exc)
                    if not held:
                        continue
                    try:
                        lost = await store.heartbeat(sid, held, self.lease_seconds)
                    except Exception as exc:  # Redis hiccup: the lease outlives a missed heartbeat
                        log.warning("heartbeat failed: %s", exc)
                        continue
                    sent = dict(held)
                    for index in lost:
                        # Only if we still hold the claim we asked about (not a newer one since).
                        if self._held.get(index) == sent.get(index):
                            self._lost.add(index)
                            loop.call_soon_threadsafe(self._cancel_async, index)
                    if lost:
                        log.info("stopping %d task(s) that were cancelled or reclaimed", len(lost))
            finally:
                await store.close()

        with contextlib.suppress(asyncio.CancelledError):  # (stopped by _wind_down)
            asyncio.run(beat())

    def _cancel_async(self, index: int) -> None:
        task = self._async_tasks.get(index)
        if task is not None:
            task.cancel()

    def _context(self, task: ClaimedTask) -> Context:
        deadline = time.monotonic() + self.task_timeout if self.task_timeout else None
        return Context(self.sid, task_id(self.sid, task.index), task.attempt, deadline, self.worker_id, self.handler_ref)

    _FATAL: ClassVar[dict[str, str]] = {"error": "fatal", "timeout": "fatal-timeout"}

    async def _run_batch(self, claimed: list[ClaimedTask]) -> list[Outcome]:
        """Run a claimed batch; outcomes already reported on the way are not returned."""
        reporter = _Reporter(self, self.report_interval)
        if self.isolated:
            await self._run_isolated(claimed, reporter)  # the child decodes the inputs
            return reporter.pending
        items = []
        for task in claimed:
            try:
                event = decode(task.payload)
            except Exception as exc:
                reporter.add(Outcome(task.index, task.token, "fatal", f"undecodable task input: {exc}"))
                continue
            items.append((task, event, self._context(task)))
        if self.is_async:
            await self._run_async(items, reporter)
        else:
            await self._run_sync(items, reporter)
        return reporter.pending

    async def _run_async(self, items: list[tuple[ClaimedTask, Any, Context]], reporter: _Reporter) -> None:
        async def one(task: ClaimedTask, event: Any, ctx: Context) -> Outcome:
            started = time.time()
            try:
                result = await asyncio.wait_for(self.handler(event, ctx), timeout=self.task_timeout)
            except TimeoutError:
                return Outcome(task.index, task.token, "timeout", f"timed out after {self.task_timeout}s", started)
            except PermanentError as exc:
                return Outcome(task.index, task.token, "fatal", _describe(exc), started)
            except asyncio.CancelledError:
                if task.index in self._lost:
                    return Outcome(task.index, task.token, "error", "cancelled", started)  # discarded as stale
                raise
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # sys.exit() in one task fails that task only
                return Outcome(task.index, task.token, "error", _describe(exc), started)
            return _encode_result(task, result, started)

        async def reported(running: asyncio.Task[Outcome]) -> Outcome:
            # A lost task's cancellation reaches its handler only, never a report of its neighbours'
            # outcomes that this wrapper may be flushing at that moment.
            outcome = await running
            reporter.add(outcome)
            if reporter.due():
                await reporter.flush()
            return outcome

        for task, event, ctx in items:
            self._async_tasks[task.index] = asyncio.ensure_future(one(task, event, ctx))
        try:
            await asyncio.gather(*(reported(self._async_tasks[t.index]) for t, _, _ in items))
        finally:
            for task, _, _ in items:
                self._async_tasks.pop(task.index, None)

    async def _run_sync(self, items: list[tuple[ClaimedTask, Any, Context]], reporter: _Reporter) -> None:
        if not self.task_timeout:
            # Nothing to watch for: run on the loop, sparing a thread hop per batch.
            for task, event, ctx in items:
                if task.index not in self._lost:
                    reporter.add(_call(self.handler, task, event, ctx, time.time()))
                    if reporter.due():
                        await reporter.flush()
            return
        loop = asyncio.get_running_loop()
        remaining = items
        while remaining:
            batch = _SyncBatch(self.handler, remaining, self._lost)
            future = loop.run_in_executor(self._executor, batch.run)
            timed_out: int | None = None
            while not future.done():
                await asyncio.wait([future], timeout=self._watch_interval())
                for index, outcome in list(batch.results.items()):  # the thread adds to it as it goes
                    if index not in reporter.seen:
                        reporter.add(outcome)
                if reporter.due():
                    await reporter.flush()
                current = batch.current
                if self.task_timeout and current and time.monotonic() - current[1] > self.task_timeout:
                    # The hung thread is left to finish on its own (Python cannot kill it); its result is
                    # ignored, and a fresh pool keeps the worker's capacity.
                    batch.abandoned.set()
                    timed_out = current[0]
                    self._executor.shutdown(wait=False)
                    self._executor = self._new_executor()
                    break
            for index, outcome in list(batch.results.items()):
                if index not in reporter.seen:
                    reporter.add(outcome)
            if timed_out is None:
                break
            task = next(t for t, _, _ in remaining if t.index == timed_out)
            reporter.add(Outcome(task.index, task.token, "timeout", f"timed out after {self.task_timeout}s"))
            log.warning("task %s hung past its %ss timeout; abandoned its thread", task_id(self.sid, timed_out), self.task_timeout)
            remaining = [(t, e, c) for t, e, c in remaining if t.index not in reporter.seen and t.index not in self._lost]

    async def _run_isolated(self, claimed: list[ClaimedTask], reporter: _Reporter) -> None:
        """Run a sync handler's batch in the child process, watching it from here: a task past its
        timeout or cancelled while it runs, and a cancellation of this coroutine (stop now), kill
        the child; what is left of the batch goes to a new one."""
        from .isolation import HandlerProcess

        remaining = [t for t in claimed if t.index not in self._lost]
        while remaining:
            if self._child is None or not self._child.alive:
                self._child = HandlerProcess(self.handler_ref, flush_every=self.report_interval)
                try:
                    await self._child.ready()
                except BaseException:
                    self._child.kill()
                    self._child = None
                    raise
            child = self._child
            await child.send((self.sid, self.worker_id, self.task_timeout, remaining))
            ended: Outcome | None = None  # the task the child was killed on, or died on
            try:
                while True:
                    try:
                        kind, detail = await asyncio.wait_for(child.messages.get(), self._watch_interval())
                    except TimeoutError:
                        kind, detail = "", None
                    if kind in ("outcomes", "done"):
                        for outcome in detail:
                            if outcome.index not in reporter.seen and outcome.index not in self._lost:
                                reporter.add(outcome)
                        if reporter.due():
                            await reporter.flush()
                        if kind == "done":
                            break
                        continue
                    running = child.running
                    if kind == "exited":
                        task = next((t for t in remaining if running and t.index == running[0]), None)
                        if task is not None:
                            ended = Outcome(task.index, task.token, "error",
                                            f"the handler's process died (exit code {detail})")
                        break
                    if running is None:
                        continue
                    task = next((t for t in remaining if t.index == running[0]), None)
                    if task is None:
                        continue
                    if self.task_timeout and time.monotonic() - running[1] > self.task_timeout:
                        ended = Outcome(task.index, task.token, "timeout", f"timed out after {self.task_timeout}s")
                        log.warning("task %s ran past its %ss timeout; stopped its handler", task_id(self.sid, task.index),
                                    self.task_timeout)
                    elif task.index in self._lost:
                        ended = Outcome(task.index, task.token, "error", "cancelled")  # discarded as stale
                        log.info("task %s was cancelled while it ran; stopped its handler", task_id(self.sid, task.index))
                    else:
                        continue
                    child.kill()
                    await child.close(grace=0)
                    self._child = None
                    break
            except BaseException:
                child.kill()  # stopped now (a second signal) or failed: the handler goes with us
                self._child = None
                raise
            if ended is not None and ended.index not in reporter.seen:
                reporter.add(ended)
            if ended is None and self._child is child and child.alive:
                return  # the child finished the batch
            self._child = None
            remaining = [t for t in remaining if t.index not in reporter.seen and t.index not in self._lost]

    @staticmethod
    def _new_executor() -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridop-handler")

    def _watch_interval(self) -> float:
        return min(0.5, self.task_timeout / 4) if self.task_timeout else 0.5
