"""The worker runtime against a real Redis: handlers that work, fail, hang, or misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time

from gridop.client.tasks import AsyncGridConnector, GridConnector
from gridop.tasks.store import TaskStore
from gridop.tasks.sweeper import Sweeper
from gridop.tasks.worker import Worker, load_handler

from ..waiting import eventually
from . import handlers
from .conftest import BOTH_PLANES, ROOT


async def run_batch(store: TaskStore, sid: str, handler, *, workers: int = 1, **options) -> list:
    """Run workers (and a sweeper) until the batch is done."""
    stop = asyncio.Event()
    sweeper = asyncio.create_task(Sweeper(store, sid, interval=0.05).run(stop))
    options.setdefault("heartbeat_seconds", 0.1)
    options.setdefault("lease_seconds", 1.0)
    try:
        return await asyncio.wait_for(
            asyncio.gather(*(Worker(store, sid, handler, **options).run() for _ in range(workers))), timeout=60
        )
    finally:
        stop.set()
        await sweeper


def conn(redis_url: str, **extra) -> AsyncGridConnector:
    return AsyncGridConnector({"redis_url": redis_url, "retry_backoff_sec": 0.05, **extra})


async def test_sync_and_async_handlers_finish_every_task(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as c:
        for name, handler in (("sync", handlers.echo), ("async", handlers.aecho)):
            sub = await c.send([{"n": i} for i in range(700)], session_id=name)
            stats = await run_batch(store, name, handler, workers=2, batch_size=64)
            assert sum(s.finished for s in stats) == 700
            results = await c.get_results(sub, timeout_sec=5)
            assert results["finished"] == sub["task_ids"]
            assert json.loads(results["finished_OUTPUT"][5])["echo"] == {"n": 5}


async def test_transient_errors_are_retried_and_recorded(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url, max_retries=2) as c:
        sub = await c.send([{"n": i} for i in range(20)], session_id="flaky")
        await run_batch(store, "flaky", handlers.flaky)
        results = await c.get_results(sub, timeout_sec=5)
    assert len(results["finished"]) == 20
    record = await store.record("flaky", 7)
    assert record.attempts == 2 and "transient failure on flaky_7" in record.error


async def test_errors_fail_after_the_budget_with_the_message(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url, max_retries=1) as c:
        sub = await c.send([{"x": 1}, {"x": 2}], session_id="boom")
        await run_batch(store, "boom", handlers.boom)
        results = await c.get_results(sub, timeout_sec=5)
    assert results["failed"] == ["boom_0", "boom_1"]
    assert results["metadata"]["errors"] == {"boom_0": "ValueError: bad input: 1", "boom_1": "ValueError: bad input: 2"}
    assert (await store.record("boom", 0)).attempts == 2


async def test_fail_on_error_policy_does_not_retry(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url, max_retries=3) as c:
        await c.send([{"x": 1}], session_id="strict")
        await run_batch(store, "strict", handlers.boom, retry_on_error=False)
    assert (await store.record("strict", 0)).attempts == 1


async def test_a_hung_task_times_out_and_the_worker_carries_on(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url, max_retries=0) as c:
        tasks = [{"n": 0}, {"hang": True, "seconds": 5}, {"n": 2}, {"n": 3}]
        sub = await c.send(tasks, session_id="hang")
        (stats,) = await run_batch(store, "hang", handlers.hang, task_timeout=0.3)
        results = await c.get_results(sub, timeout_sec=5)
    assert results["finished"] == ["hang_0", "hang_2", "hang_3"]
    assert results["failed"] == ["hang_1"] and "timed out after 0.3s" in results["metadata"]["errors"]["hang_1"]
    assert stats.finished == 3


async def test_a_non_serialisable_result_fails_the_task_with_the_reason(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url, max_retries=3) as c:
        sub = await c.send([{}], session_id="weird")
        await run_batch(store, "weird", handlers.unserialisable)
        results = await c.get_results(sub, timeout_sec=5)
    assert results["failed"] == ["weird_0"]
    assert "handler result is not JSON-serialisable" in results["metadata"]["errors"]["weird_0"]
    assert (await store.record("weird", 0)).attempts == 1  # deterministic: not retried


@BOTH_PLANES
async def test_cancellation_reaches_running_tasks_within_a_heartbeat(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as c:
        sub = await c.send([{"seconds": 30} for _ in range(4)] + [{"seconds": 0} for _ in range(50)], session_id="cx")
        worker = Worker(store, "cx", handlers.aslow, batch_size=4, heartbeat_seconds=0.1, lease_seconds=1,
                        claim_seconds=0)  # the first four together
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)  # the first four are running
        report = await c.cancel_sessions(["cx"])
        assert report["cx"]["cancelled_processing"] == 4 and report["cx"]["cancelled_pending"] == 50
        await asyncio.wait_for(run, timeout=2)  # stopped within a heartbeat or so, not after 30 s
        results = await c.get_results(sub, timeout_sec=1)
    assert len(results["cancelled"]) == 54 and results["cancelled_OUTPUT"][0] == "read_from_dataplane"


async def test_streaming_results_arrive_as_tasks_finish(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as c:
        sub = await c.send([{"n": i} for i in range(30)], session_id="stream")
        run = asyncio.create_task(run_batch(store, "stream", handlers.echo, batch_size=5))
        seen = [item async for item in c.iter_results(sub, timeout_sec=10)]
        await run
    assert sorted(i["task_id"] for i in seen) == sorted(sub["task_ids"])
    assert all(i["state"] == "finished" for i in seen)


def test_the_seed_client_calls_work_unchanged(redis_url: str) -> None:
    """HTC-Grid's synchronous API, as its users call it (only the constructor's config differs)."""
    import threading

    grid = GridConnector({"redis_url": redis_url, "dynamodb_results_pull_interval_sec": 0.1})
    grid.authenticate()
    submission = grid.send(tasks_list=[{"worker_arguments": ["1000", "1", "1"]} for _ in range(10)])
    sid = submission["session_id"]

    def work() -> None:
        async def main() -> None:
            s = TaskStore.from_url(redis_url)
            await Worker(s, sid, handlers.echo, heartbeat_seconds=0.1, lease_seconds=1).run()
            await s.close()
        asyncio.run(main())

    t = threading.Thread(target=work)
    t.start()
    results = grid.get_results(submission_response=submission, timeout_sec=20)
    t.join()
    assert results["metadata"]["tasks_in_response"] == 10 and len(results["finished"]) == 10
    assert grid.cancel_sessions([sid])[sid]["total_cancelled_tasks"] == 0
    grid.close()


def test_handler_specs_are_checked() -> None:
    import pytest

    assert load_handler("tests.dataplane.handlers:echo") is handlers.echo
    for spec, message in (("nocolon", "module:function"), ("no.such.module:f", "cannot import"),
                          ("tests.dataplane.handlers:missing", "no callable 'missing'")):
        with pytest.raises(ValueError, match=message):
            load_handler(spec)


async def test_large_inputs_are_claimed_fewer_at_a_time(redis_url: str, store: TaskStore, monkeypatch) -> None:
    from gridop.tasks import worker as worker_module

    monkeypatch.setattr(worker_module, "CLAIM_BYTES", 2_000_000)
    async with conn(redis_url) as c:
        sub = await c.send([{"blob": "x" * 400_000} for _ in range(40)], session_id="big")
        [stats] = await run_batch(store, "big", handlers.zero)  # default batch size: 1,024
        results = await c.get_results(sub, timeout_sec=5)
    assert len(results["finished"]) == 40
    # One task to measure, then about five 400 kB inputs (2 MB) a claim, not the other 39 at once.
    assert stats.batches >= 8, f"{stats.batches} claims"


@BOTH_PLANES
async def test_an_idle_worker_stops_at_once_and_leaves_no_registration(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as c:
        sub = await c.send([{"x": 1}], session_id="idle-stop", append=True)
        stop = asyncio.Event()
        worker = Worker(store, "idle-stop", handlers.echo, exit_when_done=False, idle_wait=30)
        running = asyncio.create_task(worker.run(stop))
        assert (await c.get_results(sub, timeout_sec=10))["metadata"]["tasks_in_response"] == 1
        await asyncio.sleep(0.2)  # now waiting for a hand-off (for up to 30 s)
        started = asyncio.get_running_loop().time()
        stop.set()
        stats = await asyncio.wait_for(running, timeout=5)
        assert asyncio.get_running_loop().time() - started < 2
        assert stats.finished == 1
        assert await store.redis.llen(store.key("idle-stop", "idle")) == 0  # withdrawn on the way out


async def test_cancelling_an_idle_worker_still_cancels_it(redis_url: str, store: TaskStore) -> None:
    async with conn(redis_url) as c:
        sub = await c.send([{"x": 1}], session_id="idle-cancel", append=True)
        stop = asyncio.Event()
        running = asyncio.create_task(Worker(store, "idle-cancel", handlers.echo, exit_when_done=False,
                                             idle_wait=30).run(stop))
        await c.get_results(sub, timeout_sec=10)
        await asyncio.sleep(0.2)
        stop.set()
        running.cancel()  # the second signal: stop now, not drain
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=5)
        assert running.cancelled()


ISOLATED = {"handler_ref": "tests.dataplane.handlers:hang", "isolation": "process"}


async def test_an_isolated_handler_past_its_timeout_is_stopped_and_the_batch_goes_on(redis_url: str, store: TaskStore) -> None:
    """In its child process, a hung sync handler is killed at its timeout; the rest of the batch runs in a new child."""
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        sub = await c.send([{"n": 0}, {"hang": True, "seconds": 30}, {"n": 2}], session_id="iso-hang")
        (_stats,) = await run_batch(store, "iso-hang", handlers.hang, task_timeout=0.5, claim_seconds=0,
                                   retry_on_error=False, **ISOLATED)
        results = await c.get_results(sub, timeout_sec=5)
    assert results["finished"] == ["iso-hang_0", "iso-hang_2"]
    assert results["failed"] == ["iso-hang_1"] and "timed out after 0.5s" in results["metadata"]["errors"]["iso-hang_1"]


def _worker_cli(redis_url: str, session: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--session", session,
         "--handler", "tests.dataplane.handlers:hang", "--heartbeat", "0.3", "--lease", "2", "--log-level", "WARNING",
         *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)


async def test_a_worker_whose_handler_hung_past_its_timeout_stops_on_sigterm(redis_url: str) -> None:
    """The reproduction: `time.sleep(40)` with `--timeout 1`; the task fails as timed out, and the
    worker then exits promptly on SIGTERM (the handler's process was stopped, not abandoned)."""
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        sub = await c.send([{"hang": True, "seconds": 40}], session_id="sigterm-hang")
        worker = _worker_cli(redis_url, "sigterm-hang", "--timeout", "1", "--fail-on-error", "--keep-running")
        try:
            results = await c.get_results(sub, timeout_sec=20)
            assert results["failed"] == ["sigterm-hang_0"]
            began = time.monotonic()
            worker.terminate()
            assert await asyncio.to_thread(worker.wait, 10) == 0
            assert time.monotonic() - began < 5
        finally:
            worker.kill()


async def test_a_cancelled_running_sync_task_is_stopped_within_a_heartbeat(redis_url: str) -> None:
    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        sub = await c.send([{"hang": True, "seconds": 40}, {"hang": True, "seconds": 40}], session_id="cancel-hang")
        worker = _worker_cli(redis_url, "cancel-hang", "--batch-size", "1", "--claim-seconds", "0")
        try:
            store = c.store
            await eventually(lambda: _processing(store, "cancel-hang"), timeout=20)
            began = time.monotonic()
            counts = await c.cancel_sessions(["cancel-hang"])
            assert counts["cancel-hang"]["total_cancelled_tasks"] == 2
            assert await asyncio.to_thread(worker.wait, 15) == 0  # the batch is done: the worker exits
            assert time.monotonic() - began < 5, "the cancelled task ran on"
            results = await c.get_results(sub, timeout_sec=5)
            assert results["cancelled"] == ["cancel-hang_0", "cancel-hang_1"] and not results["finished"]
        finally:
            worker.kill()


async def _processing(store: TaskStore, sid: str) -> bool:
    return (await store.counts(sid))["processing"] > 0
