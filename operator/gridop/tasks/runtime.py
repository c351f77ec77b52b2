"""`gridop worker`: run workers for one task batch, in this process or several, until it is done."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any

from .store import TaskStore
from .worker import Worker, load_handler

log = logging.getLogger(__name__)

# After a stop signal, a worker holding no task has only bookkeeping left (withdrawing its offer
# to take hand-offs), which takes milliseconds with Redis up. Past this, it is waiting on an
# unreachable Redis for nothing: it stops (a worker still running tasks drains as long as it takes).
IDLE_DRAIN_SECONDS = 5.0


@dataclasses.dataclass
class WorkerOptions:
    redis_url: str
    session_id: str
    handler: str
    batch_size: int = 1024
    heartbeat_seconds: float = 5.0
    lease_seconds: float = 30.0
    task_timeout: float | None = None
    retry_on_error: bool = True
    exit_when_done: bool = True
    key_prefix: str = "gridop:default"
    claim_seconds: float = 0.1
    pool: str | None = None  # serve every session of this pool instead of one session
    retention_seconds: int = 86400  # how long a pool keeps a finished session's tasks and results
    metrics_port: int = 0  # serve Prometheus metrics here (0: not served); process k of N uses port + k
    isolation: str = "process"  # sync handlers in a child process the worker can stop ("thread": in a thread)


class WorkerStartError(Exception):
    """The worker cannot start; the message names the culprit (exit 2)."""


def serve_metrics(port: int) -> None:
    """Serve this process's task metrics (per-stage histograms) on `port`, at /metrics."""
    from prometheus_client import REGISTRY, start_http_server

    from .metrics import METRICS

    with contextlib.suppress(ValueError):  # already registered in this process
        REGISTRY.register(METRICS)
    try:
        start_http_server(port)
    except OSError as exc:
        raise WorkerStartError(f"--metrics-port: cannot serve metrics on port {port} ({exc.strerror or exc}); give "
                               "each worker on a machine its own --metrics-port, or 0 to serve no metrics") from None
    log.info("serving task metrics on :%d/metrics", port)


async def run_worker(options: WorkerOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    handler = load_handler(options.handler)
    if options.metrics_port:
        serve_metrics(options.metrics_port)
    # Workers wait out any Redis outage: their claims stay meaningful (tokens, leases), and a
    # worker that exited instead would only be restarted into the same outage.
    store = TaskStore.from_url(options.redis_url, prefix=options.key_prefix, outage_budget=None, retry_auth=True)
    worker = Worker(
        store, options.session_id, handler,
        batch_size=options.batch_size, heartbeat_seconds=options.heartbeat_seconds,
        lease_seconds=options.lease_seconds, task_timeout=options.task_timeout,
        retry_on_error=options.retry_on_error, exit_when_done=options.exit_when_done,
        claim_seconds=options.claim_seconds, handler_ref=options.handler, isolation=options.isolation,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main is not None:
            main.cancel()  # a second signal: stop now (even mid-outage); our leases lapse and others retry
        else:
            stop.set()  # drain: finish the batch in hand, claim no more
            loop.call_later(IDLE_DRAIN_SECONDS, cut_idle_drain)

    def cut_idle_drain() -> None:
        if main is not None and not main.done() and not worker.holding:
            log.warning("worker %s: Redis did not answer within %.0fs of the stop signal, with no task in hand; "
                        "stopping without withdrawing its hand-off offer (it expires on its own)",
                        worker.worker_id, IDLE_DRAIN_SECONDS)
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, on_signal)
    try:
        if options.pool:
            stats = await worker.serve_pool(options.pool, stop, retention=options.retention_seconds)
        else:
            stats = await worker.run(stop)
    except asyncio.CancelledError:
        if worker.holding:
            log.warning("worker %s stopped without draining: its tasks return to the queue when their leases lapse",
                        worker.worker_id)
        return dataclasses.asdict(worker.stats)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.close(), 2)
    log.info("worker %s done: %s", worker.worker_id, stats)
    return dataclasses.asdict(stats)


def _event_loop_runner() -> Any:
    """uvloop when available: its faster I/O path is most of a worker's per-task overhead."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _run_one(options: WorkerOptions) -> int:
    try:
        _event_loop_runner()(run_worker(options))
    except WorkerStartError as exc:
        print(f"gridop worker: {exc}", file=sys.stderr)
        return 2
    return 0


def _process_main(options: WorkerOptions) -> None:
    sys.exit(_run_one(options))


def run_processes(options: WorkerOptions, processes: int) -> int:
    """Run `processes` worker processes (one event loop each); returns the worst exit code."""
    if processes <= 1:
        return _run_one(options)
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_process_main, daemon=False, args=(
            dataclasses.replace(options, metrics_port=options.metrics_port + k if options.metrics_port else 0),))
        for k in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: Any) -> None:  # each child drains on its own signal handler
        for child in children:
            if child.pid and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)
