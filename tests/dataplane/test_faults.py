"""Faults inside the data plane: handlers that exit or kill their worker, racing submitters,
error kinds, the batch's retry policy, appends. Real redis-server, real worker processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from gridop.client.tasks import AsyncGridConnector, GridConnector
from gridop.tasks.codec import encode
from gridop.tasks.store import SUBMIT_CHUNK, RetryPolicy, TaskStore
from gridop.tasks.sweeper import Sweeper
from gridop.tasks.worker import Worker

from . import handlers
from .conftest import BOTH_PLANES

ROOT = pathlib.Path(__file__).resolve().parents[2]


def conn(redis_url: str, **extra) -> AsyncGridConnector:
    return AsyncGridConnector({"redis_url": redis_url, "retry_backoff_sec": 0.05, **extra})


def spawn_worker(redis_url: str, sid: str, handler: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--session", sid,
         "--handler", f"tests.dataplane.handlers:{handler}", "--heartbeat", "0.2", "--lease", "1",
         "--log-level", "WARNING", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


async def test_sys_exit_in_a_handler_fails_that_task_and_the_worker_carries_on(redis_url: str, store: TaskStore) -> None:
    tasks = [{"n": i} for i in range(20)]
    tasks[5] = {"exit": True}
    tasks[12] = {"base": True}
    async with conn(redis_url, max_retries=1) as c:
        sub = await c.send(tasks, session_id="exits")
        worker = spawn_worker(redis_url, "exits", "exits")
        out, _ = await asyncio.to_thread(worker.communicate, timeout=60)
        results = await c.get_results(sub, timeout_sec=5)
    assert worker.returncode == 0, out.decode()
    assert b"Traceback" not in out
    assert results["failed"] == ["exits_5", "exits_12"]
    assert results["metadata"]["errors"]["exits_5"] == "SystemExit: 3"
    assert results["metadata"]["errors"]["exits_12"].startswith("GeneratorExit")
    assert results["metadata"]["error_kinds"] == {"exits_5": "application", "exits_12": "application"}
    assert len(results["finished"]) == 18
    assert (await store.record("exits", 5)).attempts == 2  # retried within the application budget


@BOTH_PLANES
async def test_a_task_that_kills_its_worker_costs_its_neighbours_at_most_one_attempt(
    redis_url: str, store: TaskStore
) -> None:
    """One poison task among 19 healthy ones, all claimed together by a worker it kills (a handler
    run in the worker's own process, `--isolation thread`): the neighbours are retried once and
    finish; the poison task is retried alone until its infrastructure budget is spent, then fails
    as infrastructure."""
    tasks = [{"n": i} for i in range(20)]
    tasks[3] = {"poison": True}
    async with conn(redis_url, max_retries=0) as c:  # no application retries at all: infra has its own budget
        sub = await c.send(tasks, session_id="poison")
        await store.set_policy("poison", RetryPolicy(max_retries=0, max_infrastructure_retries=2, backoff_seconds=0.05))
        stop = asyncio.Event()
        sweeper = asyncio.create_task(Sweeper(store, "poison", interval=0.1).run(stop))
        deaths = 0
        try:
            for _ in range(10):  # the Job's restartPolicy, by hand
                worker = spawn_worker(redis_url, "poison", "crashes", "--batch-size", "256", "--claim-seconds", "0",
                                      "--isolation", "thread")
                await asyncio.to_thread(worker.wait, 60)
                if worker.returncode == 0:
                    break
                deaths += 1
            results = await c.get_results(sub, timeout_sec=10)
        finally:
            stop.set()
            await sweeper
    assert worker.returncode == 0
    assert deaths == 3  # the first claim, then the poison task alone twice
    assert results["failed"] == ["poison_3"]
    assert results["metadata"]["error_kinds"] == {"poison_3": "infrastructure"}
    assert len(results["finished"]) == 19
    attempts = [(await store.record("poison", i)).attempts for i in range(20) if i != 3]
    assert max(attempts) <= 2, attempts
    assert await store.error_counts("poison") == {"application": 0, "timeout": 0, "infrastructure": 19 + 3}


async def test_a_task_that_kills_its_handler_process_costs_its_neighbours_nothing(
    redis_url: str, store: TaskStore
) -> None:
    """The default: a sync handler runs in a child process. A poison task kills only that child:
    the worker reports it (an application error, retried by the batch's policy), starts a new
    child for the rest of the claim, and every neighbour finishes at its first attempt."""
    tasks = [{"n": i} for i in range(20)]
    tasks[3] = {"poison": True}
    async with conn(redis_url, max_retries=1) as c:
        sub = await c.send(tasks, session_id="poison-iso")
        worker = spawn_worker(redis_url, "poison-iso", "crashes", "--batch-size", "256", "--claim-seconds", "0")
        stop = asyncio.Event()
        sweeper = asyncio.create_task(Sweeper(store, "poison-iso", interval=0.1).run(stop))
        try:
            assert await asyncio.to_thread(worker.wait, 60) == 0
            results = await c.get_results(sub, timeout_sec=10)
        finally:
            stop.set()
            await sweeper
    assert results["failed"] == ["poison-iso_3"]
    assert results["metadata"]["errors"]["poison-iso_3"] == "the handler's process died (exit code 1)"
    assert results["metadata"]["error_kinds"] == {"poison-iso_3": "application"}
    assert (await store.record("poison-iso", 3)).attempts == 2
    assert {(await store.record("poison-iso", i)).attempts for i in range(20) if i != 3} == {1}


async def test_error_kinds_are_recorded_per_attempt_and_counted(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url, max_retries=1) as c:
        sub = await c.send([{"seconds": 0}, {"seconds": 5}], session_id="kinds")
        stop = asyncio.Event()
        sweeper = asyncio.create_task(Sweeper(store, "kinds", interval=0.05).run(stop))
        try:
            await asyncio.wait_for(Worker(store, "kinds", handlers.atimeout, task_timeout=0.2,
                                          heartbeat_seconds=0.1, lease_seconds=1).run(), 30)
        finally:
            stop.set()
            await sweeper
        results = await c.get_results(sub, timeout_sec=5)
        streamed = [item async for item in c.iter_results(sub, timeout_sec=5)]
    assert results["failed"] == ["kinds_1"] and results["metadata"]["error_kinds"] == {"kinds_1": "timeout"}
    record = await store.record("kinds", 1)
    assert (record.error_kind, record.attempts, record.error) == ("timeout", 2, "timed out after 0.2s")
    assert await store.error_counts("kinds") == {"application": 0, "timeout": 2, "infrastructure": 0}
    assert {"task_id": "kinds_1", "state": "failed", "error": "timed out after 0.2s", "error_kind": "timeout"} in streamed


def _send_same(redis_url: str, sid: str, count: int, variant: int, queue: multiprocessing.Queue) -> None:
    connector = GridConnector({"redis_url": redis_url})
    try:
        sub = connector.send([{"i": i, "v": variant} for i in range(count)], session_id=sid)
        queue.put(("ok", len(sub["task_ids"]), sub["task_ids"][-1]))
    except ValueError as exc:
        queue.put(("refused", str(exc), None))
    finally:
        connector.close()


def _race(redis_url: str, sid: str, count: int, variants: list[int]) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_send_same, args=(redis_url, sid, count, v, queue)) for v in variants]
    for p in procs:
        p.start()
    replies = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return replies


async def test_concurrent_sends_of_one_id_from_many_processes_never_corrupt_the_batch(
    redis_url: str, store: TaskStore
) -> None:
    count = 20_000  # four submission chunks: the racers interleave chunk by chunk
    replies = await asyncio.to_thread(_race, redis_url, "race", count, [0] * 6)
    assert replies == [("ok", count, f"race_{count - 1}")] * 6
    meta, counts, _ = await store.snapshot("race")
    assert (meta["total"], meta["submitted"]) == (str(count), str(count))
    # Each chunk was written once: one queue run per chunk, one input per task.
    assert counts["pending"] == count and await store.redis.llen(store.key("race", "q")) == count // SUBMIT_CHUNK
    assert await store.redis.llen(store.key("race", "in")) == count

    # Different content racing for a fresh id: exactly one wins, the others are told why.
    replies = await asyncio.to_thread(_race, redis_url, "race2", 6000, [1, 2, 3, 4])
    winners = [r for r in replies if r[0] == "ok"]
    assert len(winners) == 1, replies
    assert all("already holds 6000 different tasks" in r[1] for r in replies if r[0] == "refused")
    assert (await store.counts("race2"))["pending"] == 6000


async def test_a_batch_worked_to_the_end_by_racing_submitters_completes(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as a, conn(redis_url) as b:
        tasks = [{"n": i} for i in range(12_000)]
        subs = await asyncio.gather(a.send(tasks, session_id="done"), b.send(tasks, session_id="done"))
        assert subs[0] == subs[1]
        await asyncio.wait_for(Worker(store, "done", handlers.zero, batch_size=512).run(), 60)
        results = await a.get_results(subs[0], timeout_sec=10)
    assert len(results["finished"]) == 12_000
    assert await store.counts("done") == {"pending": 0, "processing": 0, "retrying": 0, "finished": 12_000,
                                          "failed": 0, "cancelled": 0}


@BOTH_PLANES
async def test_appends_are_replay_safe_and_a_cancelled_batch_refuses_them(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as c:
        await c.send([{"n": 0}], session_id="app")
        script = store._scripts["APPEND"]
        first = await script(keys=store.keys("app"), args=[0, "call-1:0", encode({"n": 1}), encode({"n": 2})])
        replay = await script(keys=store.keys("app"), args=[0, "call-1:0", encode({"n": 1}), encode({"n": 2})])
        assert int(first[0]) == int(replay[0]) == 1
        assert (await store.meta("app"))["total"] == "3"
        await c.cancel_sessions(["app"])
        with pytest.raises(ValueError, match="'app' was cancelled; it takes no more tasks"):
            await c.send([{"n": 9}], session_id="app", append=True)


async def test_the_policy_written_from_the_taskbatch_governs_whoever_submits(redis_url: str, store: TaskStore) -> None:
    """The operator writes spec.retry into the batch before any task exists; a submitter's own
    max_retries does not override it."""
    await store.set_policy("tb", RetryPolicy(max_retries=0))
    assert not await store.exists("tb")
    async with conn(redis_url, max_retries=5) as c:
        sub = await c.send([{"x": 1}], session_id="tb")
        await asyncio.wait_for(Worker(store, "tb", handlers.boom).run(), 30)
        results = await c.get_results(sub, timeout_sec=5)
    assert results["failed"] == ["tb_0"]
    assert (await store.record("tb", 0)).attempts == 1


def test_sigint_during_a_handler_still_stops_the_worker(redis_url: str) -> None:
    """KeyboardInterrupt is not a task failure: Ctrl-C on a foreground worker stops it."""
    with GridConnector({"redis_url": redis_url}) as c:
        c.send([{"seconds": 3}, {"seconds": 3}], session_id="ctrlc")
    worker = spawn_worker(redis_url, "ctrlc", "slow")
    try:
        import time

        time.sleep(1.5)
        worker.send_signal(signal.SIGINT)
        out, _ = worker.communicate(timeout=45)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert b"Traceback" not in out, out.decode()
    assert worker.returncode == 0  # it drained: the task in hand finished, the next was not claimed
