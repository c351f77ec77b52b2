"""Long tasks on idle workers: N tasks of S seconds on W worker processes, wall time to every result.

    .venv/bin/python -m bench.long_tasks --tasks 2 --seconds 60 --workers 2

With default options a worker claims one task until it has timed one, then about 0.1 s of work
at a time, so long tasks spread across the workers: the ideal is ceil(N / W) * S. The comparison
run uses fixed claims of 256 (`--claim-seconds 0`, what workers did before), where the first
worker takes every task and runs them one after another. Runs alternate (A B A B ...).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from .tasks import ROOT, free_port, start_redis, stop


async def one_run(url: str, tasks: int, seconds: float, workers: int, extra: list[str], sid: str) -> float:
    from gridop.client.tasks import AsyncGridConnector

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with AsyncGridConnector({"redis_url": url}) as c:
        started = time.monotonic()
        sub = await c.send([{"seconds": seconds} for _ in range(tasks)], session_id=sid)
        procs = [subprocess.Popen([sys.executable, "-m", "gridop", "worker", "--redis-url", url, "--session", sid,
                                   "--handler", "bench.handlers:sleep", "--log-level", "WARNING", *extra],
                                  cwd=ROOT, env=env, stdin=subprocess.DEVNULL) for _ in range(workers)]
        try:
            results = await c.get_results(sub)
        finally:
            stop(procs)
        assert len(results["finished"]) == tasks, results["metadata"]
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="runs of each (interleaved)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        redis = start_redis(port, workdir)
        url = f"redis://127.0.0.1:{port}/0"
        times: dict[str, list[float]] = {"default options": [], "fixed claims of 256": []}
        try:
            for run in range(args.runs):
                for label, extra in (("default options", []), ("fixed claims of 256", ["--claim-seconds", "0"])):
                    sid = f"long-{run}-{len(times[label])}-{'a' if extra else 'd'}"
                    times[label].append(asyncio.run(one_run(url, args.tasks, args.seconds, args.workers, extra, sid)))
        finally:
            stop([redis])
    ideal = math.ceil(args.tasks / args.workers) * args.seconds
    print(f"{args.tasks} tasks of {args.seconds:g} s on {args.workers} workers (ideal {ideal:g} s, "
          f"one worker alone {args.tasks * args.seconds:g} s); wall time, min / median / max of {args.runs}:")
    for label, values in times.items():
        print(f"  {label:<22} {min(values):7.1f} / {statistics.median(values):7.1f} / {max(values):7.1f} s")


if __name__ == "__main__":
    main()
