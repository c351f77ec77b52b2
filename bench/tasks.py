"""Tasks: gridop vs Celery on the same Redis, same machine, same zero-work task, 2 worker processes each.

    make bench            # or: .venv/bin/python -m bench.tasks --tasks 100000 --latency 1000

Prints, for each system: submit-only tasks/s, end-to-end tasks/s for N tasks (submit until every
result is back), and single-task round-trip latency p50/p99 (submit one task, wait for its result,
with idle workers waiting). One redis-server is started for the run; gridop uses db 0, Celery
db 1 (broker) and db 2 (results).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


# -- gridop ---------------------------------------------------------------------------------

async def gridop_run(url: str, n: int, latency_n: int) -> dict[str, float]:
    from gridop.client.tasks import AsyncGridConnector

    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def workers(sid: str, keep_running: bool = False, handler: str = "zero") -> list[subprocess.Popen[bytes]]:
        args = [sys.executable, "-m", "gridop", "worker", "--redis-url", url, "--session", sid,
                "--handler", f"bench.handlers:{handler}", "--log-level", "WARNING"]
        if keep_running:
            args.append("--keep-running")
        return [subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL) for _ in range(2)]

    tasks = [{} for _ in range(n)]
    result: dict[str, float] = {}
    async with AsyncGridConnector({"redis_url": url}) as c:
        # Submit only: nobody consumes.
        t0 = time.perf_counter()
        await c.send(tasks, session_id="submit-only")
        result["submit"] = n / (time.perf_counter() - t0)
        await c.store.delete("submit-only")

        # End to end: warm workers wait on the batch; time from send() until every result is in.
        procs = workers("e2e", keep_running=True)
        await c.send([{}], session_id="e2e", append=True)  # warm-up task: workers connected and ready
        await c.get_results({"session_id": "e2e", "task_ids": ["e2e_0"]}, timeout_sec=60)
        t0 = time.perf_counter()
        sub = await c.send(tasks, session_id="e2e", append=True)
        res = await c.get_results(sub, timeout_sec=600)
        elapsed = time.perf_counter() - t0
        assert len(res["finished"]) == n, f"gridop finished {len(res['finished'])} of {n}"
        result["e2e"] = n / elapsed
        stop(procs)

        # Single-task round trips against idle, waiting workers: the sync handler (as Celery's), and
        # the same task as an async handler, which skips the worker's thread hop.
        for key, handler in (("", "zero"), ("async_", "azero")):
            sid = f"rtt-{handler}"
            procs = workers(sid, keep_running=True, handler=handler)
            await c.send([{}], session_id=sid, append=True)
            await c.get_results({"session_id": sid, "task_ids": [f"{sid}_0"]}, timeout_sec=60)
            samples = []
            for _ in range(latency_n):
                t0 = time.perf_counter()
                sub = await c.send([{}], session_id=sid, append=True)
                res = await c.get_results(sub, timeout_sec=10)
                samples.append(time.perf_counter() - t0)
                assert res["metadata"]["tasks_in_response"] == 1
            stop(procs)
            result[f"{key}p50"], result[f"{key}p99"] = statistics.median(samples) * 1000, pct(samples, 0.99) * 1000
    return result


# -- Celery ---------------------------------------------------------------------------------

def celery_run(port: int, n: int, latency_n: int) -> dict[str, float]:
    os.environ["BENCH_CELERY_BROKER"] = f"redis://127.0.0.1:{port}/1"
    os.environ["BENCH_CELERY_BACKEND"] = f"redis://127.0.0.1:{port}/2"
    from celery.result import ResultSet

    from bench.celery_app import app, zero

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result: dict[str, float] = {}

    t0 = time.perf_counter()
    pending = [zero.delay() for _ in range(n)]
    result["submit"] = n / (time.perf_counter() - t0)
    app.control.purge()
    for r in pending:
        r.forget()

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--concurrency", "2", "--pool", "prefork",
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        zero.delay().get(timeout=60)  # warm-up: the worker is connected and ready
        t0 = time.perf_counter()
        results = ResultSet([zero.delay() for _ in range(n)])
        results.join_native(timeout=3600)
        result["e2e"] = n / (time.perf_counter() - t0)

        samples = []
        for _ in range(latency_n):
            t0 = time.perf_counter()
            zero.delay().get(timeout=10)
            samples.append(time.perf_counter() - t0)
        result["p50"], result["p99"] = statistics.median(samples) * 1000, pct(samples, 0.99) * 1000
    finally:
        stop([worker])
    return result


def run_loop():
    """uvloop when installed (gridop's worker and sync client use it too), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks for submit-only and end-to-end")
    parser.add_argument("--celery-tasks", type=int, help="tasks for Celery (default: --tasks)")
    parser.add_argument("--latency", type=int, default=1000, help="single-task round trips to time")
    parser.add_argument("--skip-celery", action="store_true")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc = start_redis(port, tmp)
        try:
            g = run_loop()(gridop_run(f"redis://127.0.0.1:{port}/0", args.tasks, args.latency))
            c = None if args.skip_celery else celery_run(port, args.celery_tasks or args.tasks, args.latency)
        finally:
            stop([redis_proc])
    cn = args.celery_tasks or args.tasks
    print(f"\nTasks benchmark: zero-work task, 2 worker processes each, one local redis-server, {os.cpu_count()} cores")
    print(f"{'':46}{'gridop':>14}{'Celery':>14}")
    rows = [
        ("submit only (tasks/s)", "submit", "{:>14,.0f}"),
        (f"end to end, {args.tasks:,}/{cn:,} tasks (tasks/s)", "e2e", "{:>14,.0f}"),
        ("single-task round trip p50 (ms)", "p50", "{:>14.2f}"),
        ("single-task round trip p99 (ms)", "p99", "{:>14.2f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:46}" + fmt.format(g[key]) + (fmt.format(c[key]) if c else f"{'skipped':>14}"))
    print(f"{'same, gridop async handler p50 / p99 (ms)':46}{g['async_p50']:>14.2f}{'':>14}")
    print(f"{'':46}{g['async_p99']:>14.2f}{'':>14}")


if __name__ == "__main__":
    main()
