"""Tasks: gridop vs Celery on the same Redis, same machine, same zero-work task, 2 worker processes each.

    make bench     # runs: .venv/bin/python -m bench.tasks --tasks 100000 --celery-tasks 10000 --latency 1000 --shards 1 2 3

Prints, for each system: submit-only tasks/s, end-to-end tasks/s for N tasks (submit until every
result is back) with the CPU each part spent per task (Redis, workers, client: what does not vary
with the machine's noise), and single-task round-trip latency p50/p99 (submit one task, wait for
its result, with idle workers waiting). For gridop also: a streamed batch of --million tasks
(a generator in, iter_results out) with the client's peak RSS, and, with --shards, end-to-end
throughput of many batches on a local Redis Cluster of 1, 2, 3 shards with each shard's CPU.
Workers run with default options. One redis-server is started for the run; gridop uses db 0,
Celery db 1 (broker) and db 2 (results).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.localredis import LocalCluster, free_port, start_redis  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

async def gridop_run(url: str, n: int, latency_n: int, redis_pid: int) -> dict[str, float]:
    from gridop.client.tasks import AsyncGridConnector

    def workers(sid: str, keep_running: bool = False, handler: str = "zero") -> list[subprocess.Popen[bytes]]:
        return gridop_workers(url, "--session", sid, *(["--keep-running"] if keep_running else []), handler=handler)

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
        cpu0 = (cpu_seconds(redis_pid), sum(cpu_seconds(w.pid) for w in procs), time.process_time())
        t0 = time.perf_counter()
        sub = await c.send(tasks, session_id="e2e", append=True)
        res = await c.get_results(sub, timeout_sec=600)
        elapsed = time.perf_counter() - t0
        cpu1 = (cpu_seconds(redis_pid), sum(cpu_seconds(w.pid) for w in procs), time.process_time())
        assert len(res["finished"]) == n, f"gridop finished {len(res['finished'])} of {n}"
        result["e2e"] = n / elapsed
        for key, before, after in zip(("cpu_redis", "cpu_workers", "cpu_client"), cpu0, cpu1, strict=False):
            result[key] = (after - before) / n * 1e6
        result["cpu_total"] = result["cpu_redis"] + result["cpu_workers"] + result["cpu_client"]
        result["busy"] = result["cpu_total"] * n / 1e6 / elapsed / (os.cpu_count() or 1) * 100
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


def tree_env(tree: pathlib.Path = ROOT, bench: pathlib.Path | None = None) -> dict[str, str]:
    """The environment that runs gridop from `tree` (this checkout, or an older revision of it
    unpacked elsewhere), ahead of the installed gridop, and `bench` from `bench` (default: `tree`)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "operator"), str(bench or tree)])}


def gridop_workers(url: str, *args: str, handler: str = "zero",
                   tree: pathlib.Path = ROOT) -> list[subprocess.Popen[bytes]]:
    """2 `gridop worker` processes with default options (but `args`), running bench.handlers:<handler>."""
    return [subprocess.Popen([sys.executable, "-m", "gridop", "worker", "--redis-url", url, "--handler",
                              f"bench.handlers:{handler}", "--log-level", "WARNING", *args], cwd=tree,
                             env=tree_env(tree), stdin=subprocess.DEVNULL) for _ in range(2)]


def streamed_run(url: str, n: int, sid: str) -> dict[str, float]:
    """A streamed batch of n tasks (a generator in, iter_results out) in a fresh client process,
    2 default workers on it: tasks/s from the first task sent to the last result in, and the
    client process's peak RSS."""
    workers = gridop_workers(url, "--session", sid)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.tasks", "--stream-child", url, str(n), sid], cwd=ROOT,
                             env=tree_env(), check=True, capture_output=True, text=True)
    finally:
        stop(workers)
    rate, rss = out.stdout.split()
    return {"rate": float(rate), "rss_mb": float(rss)}


def stream_child(url: str, n: int, sid: str) -> None:
    import resource

    from gridop.client.tasks import GridConnector

    with GridConnector({"redis_url": url}) as c:
        t0 = time.perf_counter()
        sub = c.send(({} for _ in range(n)), session_id=sid)
        finished = sum(1 for item in c.iter_results(sub) if item["state"] == "finished")
        elapsed = time.perf_counter() - t0
    assert finished == n, f"{finished} of {n} finished"
    print(n / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


async def sharded_run(cluster: LocalCluster, n: int, batches: int) -> dict[str, float]:
    """n tasks in `batches` sessions sent to the pool, 2 default pool workers, on a Redis Cluster."""
    from gridop.client.tasks import AsyncGridConnector

    workers = gridop_workers(cluster.url, "--pool", "default")
    try:
        async with AsyncGridConnector({"redis_url": cluster.url}) as c:
            await c.get_results(await c.send([{}]), timeout_sec=60)  # warm-up: workers connected
            cpu0 = [cpu_seconds(pid) for pid in cluster.pids()]
            t0 = time.perf_counter()
            per = n // batches
            subs = await asyncio.gather(*(c.send([{}] * per) for _ in range(batches)))
            results = await asyncio.gather(*(c.get_results(sub, timeout_sec=600) for sub in subs))
            elapsed = time.perf_counter() - t0
            cpu1 = [cpu_seconds(pid) for pid in cluster.pids()]
            assert sum(len(r["finished"]) for r in results) == per * batches
    finally:
        stop(workers)
    shard_busy = [(b - a) / elapsed * 100 for a, b in zip(cpu0, cpu1, strict=False)]
    return {"rate": per * batches / elapsed, "max_shard_busy": max(shard_busy), "shards": shard_busy}


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
    parser.add_argument("--million", type=int, default=1_000_000, help="tasks in the streamed batch (0: skip)")
    parser.add_argument("--shards", type=int, nargs="*", default=[], help="Redis Cluster sizes to run (e.g. 1 2 3)")
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--stream-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        url, n, sid = args.stream_child
        stream_child(url, int(n), sid)
        return
    port = free_port()
    streamed: dict[str, dict[str, float]] = {}
    ratios: list[float] = []  # big / small rate of each interleaved pair (%)
    sharded: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc = start_redis(port, tmp)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            g = run_loop()(gridop_run(url, args.tasks, args.latency, redis_proc.pid))
            if args.million:
                # The same streamed path at both sizes, in three interleaved pairs (small, big, ...):
                # the ratio is the median of the pairs' ratios, each taken between neighbours in time.
                pairs = [(streamed_run(url, args.tasks, f"stream-{k}-small"),
                          streamed_run(url, args.million, f"stream-{k}-big")) for k in range(3)]
                for key, runs in ((str(args.tasks), [p[0] for p in pairs]), (str(args.million), [p[1] for p in pairs])):
                    streamed[key] = {"rate": statistics.median(r["rate"] for r in runs),
                                     "rss_mb": max(r["rss_mb"] for r in runs)}
                ratios = [big["rate"] / small["rate"] * 100 for small, big in pairs]
            c = None if args.skip_celery else celery_run(port, args.celery_tasks or args.tasks, args.latency)
        finally:
            stop([redis_proc])
        for shards in args.shards:
            cluster = LocalCluster(shards, pathlib.Path(tmp) / f"cluster-{shards}").start()
            try:
                sharded[shards] = run_loop()(sharded_run(cluster, args.tasks, 12))
            finally:
                cluster.stop()
    cn = args.celery_tasks or args.tasks
    print(f"\nTasks benchmark: zero-work task, 2 worker processes each (default options), one local redis-server, "
          f"{os.cpu_count()} cores")
    print(f"{'':50}{'gridop':>14}{'Celery':>14}")
    rows = [
        ("submit only (tasks/s)", "submit", "{:>14,.0f}"),
        (f"end to end, {args.tasks:,}/{cn:,} tasks (tasks/s)", "e2e", "{:>14,.0f}"),
        ("single-task round trip p50 (ms)", "p50", "{:>14.2f}"),
        ("single-task round trip p99 (ms)", "p99", "{:>14.2f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:50}" + fmt.format(g[key]) + (fmt.format(c[key]) if c else f"{'skipped':>14}"))
    print(f"{'same, gridop async handler p50 / p99 (ms)':50}{g['async_p50']:>14.2f}{g['async_p99']:>14.2f}")
    print(f"{'CPU per task, end to end (us): total':50}{g['cpu_total']:>14.1f}")
    print(f"{'  Redis / workers / client (us)':50}{g['cpu_redis']:>14.1f}{g['cpu_workers']:>14.1f}"
          f"{g['cpu_client']:>14.1f}")
    print(f"{'  machine busy during the run (%)':50}{g['busy']:>14.0f}")
    if streamed:
        small, big = streamed[str(args.tasks)], streamed[str(args.million)]
        print(f"{f'streamed batch of {args.tasks:,} (tasks/s, client peak RSS MB)':50}{small['rate']:>14,.0f}"
              f"{small['rss_mb']:>14.0f}")
        print(f"{f'streamed batch of {args.million:,} (tasks/s, client peak RSS MB)':50}{big['rate']:>14,.0f}"
              f"{big['rss_mb']:>14.0f}")
        print(f"{'  big / small rate, median of 3 pairs (%)':50}{statistics.median(ratios):>14.0f}"
              f"   pairs: {' / '.join(f'{r:.0f}' for r in ratios)}")
    for shards, r in sharded.items():
        busy = " / ".join(f"{b:.0f}" for b in r["shards"])
        print(f"{f'Redis Cluster, {shards} shard(s), 12 batches (tasks/s)':50}{r['rate']:>14,.0f}"
              f"   shard CPU %: {busy}")


if __name__ == "__main__":
    main()
