"""A real redis-server process for the data-plane tests (never a fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gridop.tasks.store import TaskStore


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[TaskStore]:
    s = TaskStore(aioredis.Redis.from_url(redis_url))
    yield s
    await s.close()
