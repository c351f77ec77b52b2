"""Worker pools: `gridop worker --pool` serves every session sent to the pool (real workers, real Redis)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from gridop.client.tasks import AsyncGridConnector
from gridop.tasks.store import RetryPolicy, TaskStore, encode_tasks

from ..waiting import eventually
from .conftest import worker_process


async def _empty(pending: Any) -> bool:
    return not await pending


async def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
        await asyncio.to_thread(w.wait, 30)


async def test_a_pool_serves_every_plain_send_and_forgets_finished_sessions(redis_url: str, store: TaskStore) -> None:
    workers = [worker_process(redis_url, "--pool", "default", "--heartbeat", "0.3", "--lease", "2",
                              "--retention", "60", handler="echo") for _ in range(2)]
    try:
        async with AsyncGridConnector({"redis_url": redis_url}) as c:
            subs = [await c.send([{"job": j, "i": i} for i in range(50)]) for j in range(6)]
            results = await asyncio.wait_for(asyncio.gather(*(c.get_results(s) for s in subs)), 60)
        # Finished sessions leave the pool (a worker's sweep notices); their results stay for the
        # retention, then lapse.
        await eventually(lambda: _empty(store.pool_sessions("default")), timeout=10)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            assert await asyncio.to_thread(w.wait, 30) == 0
    for j, (sub, res) in enumerate(zip(subs, results, strict=False)):
        assert len(sub["session_id"]) == 36 and sub["task_ids"][3] == f"{sub['session_id']}_3"
        assert res["finished"] == sub["task_ids"]
        assert f'"echo":{{"job":{j},"i":7}}' in res["finished_OUTPUT"][7]
    sid = subs[0]["session_id"]
    ttl = await store.redis.ttl(store.key(sid, "t"))
    assert 0 < ttl <= 60


async def test_retries_move_without_the_operator_and_small_sessions_are_not_starved(
    redis_url: str, store: TaskStore
) -> None:
    """A failing task is retried by the pool itself; a 10-task session sent after a 3,000-task one
    finishes while the big one is still running (sessions share the pool's claims evenly)."""
    workers = [worker_process(redis_url, "--pool", "default", "--heartbeat", "0.3", "--lease", "2", handler="sleepy_flaky")]
    try:
        async with AsyncGridConnector({"redis_url": redis_url, "retry_backoff_sec": 0.1}) as c:
            big = await c.send([{"n": i, "seconds": 0.005} for i in range(3000)])
            await asyncio.sleep(0.5)
            small = await c.send([{"n": i, "flaky": True} for i in range(10)])
            small_results = await c.get_results(small, timeout_sec=30)
            big_counts = await store.counts(big["session_id"])
            big_results = await c.get_results(big, timeout_sec=120)
    finally:
        await _stop(workers)
    assert len(small_results["finished"]) == 10
    assert big_counts["finished"] < 3000, "the small session waited for the big one"
    assert len(big_results["finished"]) == 3000
    assert {(await store.record(small["session_id"], i)).attempts for i in range(10)} == {2}


async def test_users_share_a_pool_evenly_whatever_their_number_of_sessions(redis_url: str, store: TaskStore) -> None:
    """Alice's four big sessions do not outweigh Bob's one small one: owners take turns (each gets
    half of the pool's time slices), so Bob's ten tasks finish while Alice's are mostly queued."""
    workers = [worker_process(redis_url, "--pool", "default", handler="slow")]
    try:
        async with (AsyncGridConnector({"redis_url": redis_url, "owner": "alice"}) as alice,
                    AsyncGridConnector({"redis_url": redis_url, "owner": "bob"}) as bob):
            bulk = [await alice.send([{"seconds": 0.002} for _ in range(1500)]) for _ in range(4)]
            await asyncio.sleep(0.3)
            small = await bob.send([{"seconds": 0.002} for _ in range(10)])
            small_results = await bob.get_results(small, timeout_sec=30)
            done_then = sum([(await store.counts(b["session_id"]))["finished"] for b in bulk])
            for b in bulk:
                await alice.cancel_sessions([b["session_id"]])
    finally:
        await _stop(workers)
    assert len(small_results["finished"]) == 10
    assert done_then < 3000, f"Bob waited for {done_then} of Alice's 6000 tasks"


async def test_a_higher_priority_session_goes_first(redis_url: str, store: TaskStore) -> None:
    workers = [worker_process(redis_url, "--pool", "default", handler="slow")]
    try:
        async with AsyncGridConnector({"redis_url": redis_url}) as c:
            low = await c.send([{"seconds": 0.002} for _ in range(2000)])
            await asyncio.sleep(0.3)
            urgent = await c.send([{"seconds": 0.002} for _ in range(20)], priority=10)
            urgent_results = await c.get_results(urgent, timeout_sec=30)
            low_then = (await store.counts(low["session_id"]))["finished"]
            await c.cancel_sessions([low["session_id"]])
    finally:
        await _stop(workers)
    assert len(urgent_results["finished"]) == 20
    assert low_then < 1000, f"the urgent session waited for {low_then} of 2000 low-priority tasks"
    assert (await store.meta(urgent["session_id"]))["priority"] == "10"


async def test_pool_turns_alternate_owners_then_their_sessions(store: TaskStore) -> None:
    for n in range(3):
        await store.pool_join("p", f"a{n}", owner="alice")
    await store.pool_join("p", "b0", owner="bob")
    await store.pool_join("p", "low", owner="carol", priority=-1)
    picks = [await store.pool_pick("p") for _ in range(12)]
    assert picks.count("b0") == 6 and {p for p in picks if p != "b0"} == {"a0", "a1", "a2"}
    assert "low" not in picks  # a lower priority waits while a higher one is ready


async def test_streamed_sends_of_any_size_are_never_left_out_of_the_ready_set(redis_url: str, store: TaskStore) -> None:
    """A session with queued tasks stays ready in its pool whatever the order of chunk writes, worker
    wake-ups and idle checks: many concurrent streamed sends (one chunk, chunk-sized, several chunks)
    against a 2-worker pool all finish, round after round."""
    workers = [worker_process(redis_url, "--pool", "default", "--heartbeat", "0.3", "--lease", "2",
                              handler="echo") for _ in range(2)]
    sizes = [1, 7, 300, 4999, 5000, 5001, 12_000]
    try:
        async with AsyncGridConnector({"redis_url": redis_url}) as c:
            for _ in range(3):
                subs = await asyncio.gather(*(c.send({"i": i} for i in range(n)) for n in sizes))
                results = await asyncio.wait_for(
                    asyncio.gather(*(c.get_results(s, timeout_sec=60) for s in subs)), 90)
                assert [len(r["finished"]) for r in results] == sizes
    finally:
        await _stop(workers)


async def test_a_pool_sweep_puts_back_a_session_with_queued_tasks_that_lost_its_ready_mark(store: TaskStore) -> None:
    """Self-healing: a session whose submitter died between queueing and marking it ready is found
    by the pool's next sweep."""
    await store.create("s1", encode_tasks([{"i": 1}, {"i": 2}], 1 << 20), RetryPolicy())
    await store.submit("s1", encode_tasks([{"i": 1}, {"i": 2}], 1 << 20))
    await store.pool_join("p", "s1", owner="ann")
    await store.redis.delete(store.pool_key("p", "ready"), store.pool_key("p", "wake"))
    assert await store.pool_pick("p") is None
    assert await store.pool_sweep("p", "w1", interval=1, retention=60)
    assert await store.pool_pick("p") == "s1"
    assert await store.redis.llen(store.pool_key("p", "wake")) == 1
