"""A real redis-server process for the data-plane tests (never a fake)."""

from __future__ import annotations

import collections
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from gridop.tasks.store import TaskStore

# Run a test on a single Redis and on a 3-shard Redis Cluster: `@BOTH_PLANES async def test_...`.
BOTH_PLANES = pytest.mark.parametrize("plane", ["redis", "cluster"], indirect=True)


@pytest.fixture
def plane(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "redis")


@pytest.fixture
def redis_url(redis_url: str, plane: str, request: pytest.FixtureRequest) -> str:
    """The data plane's URL: the single Redis, or the cluster for tests marked BOTH_PLANES."""
    return request.getfixturevalue("cluster_url") if plane == "cluster" else redis_url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[TaskStore]:
    s = TaskStore.from_url(redis_url, outage_budget=30)
    yield s
    await s.close()


ROOT = pathlib.Path(__file__).resolve().parents[2]


def worker_process(redis_url: str, *args: str, handler: str = "slow", output: bool = False) -> subprocess.Popen[bytes]:
    """A real `gridop worker` process (default options but for what `args` sets) running a handler of
    tests/dataplane/handlers.py."""
    return subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url,
         "--handler", f"tests.dataplane.handlers:{handler}", "--log-level", "WARNING", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if output else None, stderr=subprocess.STDOUT if output else None,
    )


async def finished_tally(store: TaskStore, sid: str) -> collections.Counter[int]:
    """How many times each task reached `finished` in the batch's terminal-event stream (exactly
    once is the guarantee)."""
    tally: collections.Counter[int] = collections.Counter()
    position = "0-0"
    while True:
        position, events = await store.events(sid, position)
        if not events:
            return tally
        for event in events:
            tally.update(event.finished)
