"""Claims that adapt to the tasks, and results reported as each task finishes (real workers, real Redis)."""

from __future__ import annotations

import asyncio
import collections

from gridop.client.tasks import AsyncGridConnector
from gridop.tasks.store import TaskStore

from ..waiting import eventually
from .conftest import BOTH_PLANES, worker_process


async def test_long_tasks_spread_across_idle_workers(redis_url: str, store: TaskStore) -> None:
    """Four 2 s tasks, two workers with default options: each worker runs two of them (a worker
    claiming everything it can would run all four one after another while the other sits idle)."""
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        sub = await c.send([{"seconds": 2} for _ in range(4)], session_id="long")
        workers = [worker_process(redis_url, "--session", "long") for _ in range(2)]
        try:
            results = await c.get_results(sub, timeout_sec=60)
        finally:
            for w in workers:
                await asyncio.to_thread(w.wait, 30)
    pids = collections.Counter(int(out.split('"pid":')[1].rstrip("}")) for out in results["finished_OUTPUT"])
    assert len(results["finished"]) == 4 and sorted(pids.values()) == [2, 2], pids


async def test_zero_work_tasks_are_still_claimed_in_batches(redis_url: str, store: TaskStore) -> None:
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        sub = await c.send([{"x": i} for i in range(3000)], session_id="tiny")
        worker = worker_process(redis_url, "--session", "tiny", handler="zero")
        results = await c.get_results(sub, timeout_sec=60)
        await asyncio.to_thread(worker.wait, 30)
    assert len(results["finished"]) == 3000
    # One claim per task would mean 3,000 claim timestamps; batches share theirs.
    claimed = await store.redis.hvals(store.key("tiny", "ts:claimed"))
    assert len(set(claimed)) < 100, len(set(claimed))


@BOTH_PLANES
async def test_each_result_is_reported_when_its_task_finishes_and_survives_a_cancel(
    redis_url: str, store: TaskStore
) -> None:
    """A quick task and a long one claimed together: the quick one's result is in the data plane
    while the long one runs, and cancelling the session then keeps it."""
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        sub = await c.send([{"seconds": 0.3}, {"seconds": 30}], session_id="mixed")
        worker = worker_process(redis_url, "--session", "mixed", "--claim-seconds", "0", "--batch-size", "2",
                                "--heartbeat", "0.2", "--lease", "1")
        try:
            await eventually(lambda: _counts_are(store, "mixed", finished=1, processing=1), timeout=20)
            report = await c.cancel_sessions(["mixed"])
            assert report["mixed"] == {"cancelled_pending": 0, "cancelled_processing": 1, "total_cancelled_tasks": 1}
            results = await c.get_results(sub, timeout_sec=10)
        finally:
            worker.kill()  # a sync handler in the middle of 30 s would hold a draining worker up
            await asyncio.to_thread(worker.wait, 30)
    assert results["finished"] == ["mixed_0"] and results["cancelled"] == ["mixed_1"]
    assert '"pid"' in results["finished_OUTPUT"][0]


async def _counts_are(store: TaskStore, sid: str, **expected: int) -> bool:
    counts = await store.counts(sid)
    return all(counts[state] == n for state, n in expected.items())
