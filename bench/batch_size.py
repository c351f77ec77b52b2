"""Which default `--batch-size` (the most tasks a worker claims at once): end-to-end tasks/s and CPU
per task for each size, interleaved (A B C A B C ...) so the machine's drift hits every size alike.

    .venv/bin/python -m bench.batch_size --tasks 100000 --sizes 64 128 256 512 1024 --rounds 3

Zero-work tasks, 2 `gridop worker` processes with default options but for --batch-size, one
redis-server. (Tasks that take time are claimed by measured duration, `--claim-seconds`, long before
the size cap matters; the cap is what decides for short tasks.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from bench.localredis import free_port, start_redis
from bench.tasks import cpu_seconds, gridop_workers, run_loop, stop


async def one_run(url: str, n: int, size: int, redis_pid: int, run: int) -> tuple[float, float]:
    """(tasks/s, CPU µs per task over Redis, workers and client) for one batch of n tasks."""
    from gridop.client.tasks import AsyncGridConnector

    sid = f"size-{size}-{run}"
    procs = gridop_workers(url, "--session", sid, "--keep-running", "--batch-size", str(size))
    try:
        async with AsyncGridConnector({"redis_url": url}) as c:
            await c.send([{}], session_id=sid, append=True)  # warm-up: workers connected and waiting
            await c.get_results({"session_id": sid, "task_ids": [f"{sid}_0"]}, timeout_sec=60)
            before = cpu_seconds(redis_pid) + sum(cpu_seconds(p.pid) for p in procs) + time.process_time()
            t0 = time.perf_counter()
            res = await c.get_results(await c.send([{}] * n, session_id=sid, append=True), timeout_sec=600)
            elapsed = time.perf_counter() - t0
            after = cpu_seconds(redis_pid) + sum(cpu_seconds(p.pid) for p in procs) + time.process_time()
            assert len(res["finished"]) == n, f"finished {len(res['finished'])} of {n}"
            await c.store.delete(sid)
    finally:
        stop(procs)
    return n / elapsed, (after - before) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc = start_redis(port, tmp)
        url = f"redis://127.0.0.1:{port}/0"
        results: dict[int, list[tuple[float, float]]] = {size: [] for size in args.sizes}
        try:
            for run in range(args.rounds):
                for size in args.sizes:
                    results[size].append(run_loop()(one_run(url, args.tasks, size, redis_proc.pid, run)))
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    print(f"{args.tasks:,} zero-work tasks end to end, 2 workers, {args.rounds} interleaved rounds")
    print(f"{'batch size':>10}  {'tasks/s min / median / max':>30}  {'CPU µs/task min / median / max':>32}")
    for size, runs in results.items():
        rates, cpus = sorted(r for r, _ in runs), sorted(c for _, c in runs)
        print(f"{size:>10}  {rates[0]:>9,.0f} / {statistics.median(rates):>7,.0f} / {rates[-1]:>7,.0f}"
              f"  {cpus[0]:>11.1f} / {statistics.median(cpus):>6.1f} / {cpus[-1]:>6.1f}")


if __name__ == "__main__":
    main()
