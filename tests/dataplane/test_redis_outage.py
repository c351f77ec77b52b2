"""Redis restarts under live workers and waiting clients: a clean shutdown, then a SIGKILL with a
31-second outage. Every acknowledged task finishes exactly once with its own output, no worker
exits, and nobody prints a traceback. Redis runs with AOF fsync'ed on every write, so what it
acknowledged survives the SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from gridop.client.tasks import AsyncGridConnector
from gridop.tasks.store import TaskStore

from ..conftest import RedisProcess
from .conftest import finished_tally

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = 3000


@pytest.fixture
def restartable_redis(tmp_path: pathlib.Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.stop(signal.SIGKILL)


def spawn_worker(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", url, "--session", "outage",
         "--handler", "tests.dataplane.handlers:echo_slow", "--batch-size", "32", "--heartbeat", "0.5",
         "--lease", "3", "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


async def test_workers_and_clients_ride_out_redis_restarts(restartable_redis: RedisProcess) -> None:
    server = restartable_redis
    async with AsyncGridConnector({"redis_url": server.url, "retry_backoff_sec": 0.05}) as c:
        tasks = [{"n": i, "seconds": 0.003} for i in range(TASKS)]
        sub = await c.send(tasks, session_id="outage")  # acknowledged: these must all finish

        async def stream() -> list[dict]:
            return [item async for item in c.iter_results(sub, timeout_sec=240)]

        waiting = asyncio.create_task(c.get_results(sub, timeout_sec=240))
        streaming = asyncio.create_task(stream())
        workers = [spawn_worker(server.url) for _ in range(2)]
        probe = TaskStore(aioredis.Redis(port=server.port))  # no ride-out: only read while up

        async def finished() -> int:
            return (await probe.counts("outage"))["finished"]

        try:
            while await finished() < 300:
                await asyncio.sleep(0.05)
            server.stop(signal.SIGTERM)
            await asyncio.sleep(2)
            server.start()
            await probe.redis.connection_pool.disconnect()
            before_kill = await finished()
            while await finished() < before_kill + 300:
                await asyncio.sleep(0.05)
            server.stop(signal.SIGKILL)
            await asyncio.sleep(31)
            assert all(w.poll() is None for w in workers), "a worker exited during the outage"
            server.start()
            await probe.redis.connection_pool.disconnect()

            results = await asyncio.wait_for(waiting, 240)
            streamed = await asyncio.wait_for(streaming, 240)
            outputs = [await asyncio.to_thread(w.communicate, timeout=120) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
            await probe.close()

        assert [w.returncode for w in workers] == [0, 0]
        logs = [out.decode() for out, _ in outputs]
        for log in logs:
            assert "Traceback" not in log, log
            assert 1 <= log.count("unreachable") <= 2, log  # one line per outage, not one per command
        assert results["finished"] == sub["task_ids"] and results["failed"] == []
        assert [json.loads(o)["echo"]["n"] for o in results["finished_OUTPUT"]] == list(range(TASKS))
        assert sorted(item["task_id"] for item in streamed) == sorted(sub["task_ids"])

        check = TaskStore(aioredis.Redis(port=server.port), prefix=c.store.prefix)
        try:
            done = await finished_tally(check, "outage")
            assert len(done) == TASKS and set(done.values()) == {1}  # exactly once
            assert (await check.counts("outage"))["finished"] == TASKS
        finally:
            await check.close()


def test_an_idle_worker_stops_on_its_signal_even_while_redis_is_down(tmp_path: pathlib.Path) -> None:
    """A stop signal during an outage (a pod deleted while Redis is away): a worker with no task
    in hand has nothing worth waiting for, so it stops within seconds, not at the kill that ends
    the grace period. One warning line says so; no traceback."""
    server = RedisProcess(tmp_path).start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", server.url, "--session", "gone",
         "--handler", "tests.dataplane.handlers:echo", "--keep-running", "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis.from_url(server.url)
        for _ in range(200):  # waiting for work: offered for hand-off
            if client.llen("gridop:default:{gone}:idle"):
                break
            time.sleep(0.05)
        client.close()
        server.stop(signal.SIGKILL)
        time.sleep(1.5)  # riding out the outage
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, _ = worker.communicate(timeout=30)
        assert time.monotonic() - started < 12, out.decode()
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, out.decode()
    assert b"Traceback" not in out and b"no task in hand" in out, out.decode()
