"""Workers killed with SIGKILL mid-batch: every task still ends finished exactly once."""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import signal
import subprocess
import sys

from gridop.client.tasks import AsyncGridConnector
from gridop.tasks.store import TaskStore
from gridop.tasks.sweeper import Sweeper

from .conftest import BOTH_PLANES, finished_tally

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = 1500


def spawn_worker(redis_url: str, sid: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--session", sid,
         "--handler", "tests.dataplane.handlers:slow", "--batch-size", "8", "--heartbeat", "0.2", "--lease", "1",
         "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
    )


@BOTH_PLANES
async def test_sigkilled_workers_lose_nothing_and_duplicate_nothing(redis_url: str, store: TaskStore) -> None:
    rng = random.Random(7)
    async with AsyncGridConnector({"redis_url": redis_url, "max_retries": 50, "retry_backoff_sec": 0.05}) as c:
        sub = await c.send([{"seconds": 0.004} for _ in range(TASKS)], session_id="chaos")
        stop = asyncio.Event()
        sweeper = asyncio.create_task(Sweeper(store, "chaos", interval=0.1).run(stop))
        workers = [spawn_worker(redis_url, "chaos") for _ in range(2)]
        kills = 0
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while loop.time() < deadline:
                counts = await store.counts("chaos")
                if counts["finished"] + counts["failed"] + counts["cancelled"] == TASKS:
                    break
                await asyncio.sleep(rng.uniform(0.4, 0.9))
                if kills < 8:
                    victim = rng.randrange(len(workers))
                    workers[victim].send_signal(signal.SIGKILL)
                    workers[victim].wait()
                    kills += 1
                    workers[victim] = spawn_worker(redis_url, "chaos")
                elif all(w.poll() is not None for w in workers):
                    workers = [spawn_worker(redis_url, "chaos")]
            results = await c.get_results(sub, wait=False)
        finally:
            stop.set()
            await sweeper
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=20)

    assert kills == 8
    assert results["finished"] == sub["task_ids"], f"not finished: {TASKS - len(results['finished'])}"
    assert results["failed"] == [] and results["cancelled"] == []
    counts = await store.counts("chaos")
    assert counts == {"pending": 0, "processing": 0, "retrying": 0, "finished": TASKS, "failed": 0, "cancelled": 0}
    # Exactly once: each task reached "finished" a single time in the terminal-event stream.
    finished = await finished_tally(store, "chaos")
    assert len(finished) == TASKS and set(finished.values()) == {1}
    lost = [int(a) for a in (await store.redis.hgetall(store.key("chaos", "ia"))).values()]
    assert lost and max(lost) >= 1, "kills should have forced some retries"
    assert max(record.attempts for record in [await store.record("chaos", i) for i in range(TASKS)]) >= 2


@BOTH_PLANES
async def test_sigterm_drains_the_tasks_in_hand(redis_url: str, store: TaskStore) -> None:
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        await c.send([{"seconds": 0.3} for _ in range(40)], session_id="drain")
    worker = subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--session", "drain",
         "--handler", "tests.dataplane.handlers:slow", "--batch-size", "4", "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
    )
    for _ in range(100):  # until it is working on its first batch
        if (await store.counts("drain"))["processing"]:
            break
        await asyncio.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    counts = await store.counts("drain")
    # What it held was finished before it left; nothing is stranded in processing; the rest waits.
    assert counts["processing"] == 0 and counts["finished"] >= 1
    assert counts["finished"] + counts["pending"] == 40
