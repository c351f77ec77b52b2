"""Per-namespace Redis users: a worker credential for namespace A runs A's batches end to end and
cannot read or write namespace B's keys, directly or through a script. Real redis-server with a
password on its default user, as the chart's."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError

from gridop.batches.credentials import acl_user, define_user, with_credentials
from gridop.client.tasks import AsyncGridConnector
from gridop.tasks.codec import encode
from gridop.tasks.store import RetryPolicy, TaskStore
from gridop.tasks.worker import Worker

from ..conftest import RedisProcess
from . import handlers

ADMIN_PASSWORD = "admin-secret"


@pytest.fixture
def secured_redis(tmp_path: pathlib.Path) -> Iterator[str]:
    server = RedisProcess(tmp_path, "--appendonly", "no", password=ADMIN_PASSWORD).start()
    yield server.url
    server.stop()


async def test_a_namespace_credential_reaches_its_own_keys_only(secured_redis: str) -> None:
    admin = aioredis.Redis.from_url(secured_redis)
    assert await define_user(admin, "team-a", "pw-a") and await define_user(admin, "team-b", "pw-b")
    url_a = with_credentials(secured_redis, acl_user("team-a"), "pw-a")
    assert url_a.startswith("redis://gridop-team-a:pw-a@127.0.0.1:")

    # B's batch, submitted with B's credential.
    async with AsyncGridConnector({"redis_url": with_credentials(secured_redis, acl_user("team-b"), "pw-b"),
                                   "namespace": "team-b"}) as b:
        await b.send([{"secret": "of b"}], session_id="payroll")

    # A runs its own batch end to end: submit, a worker, results.
    async with AsyncGridConnector({"redis_url": url_a, "namespace": "team-a"}) as a:
        await a.authenticate()
        sub = await a.send([{"n": i} for i in range(10)], session_id="mine")
        store_a = TaskStore(aioredis.Redis.from_url(url_a), prefix="gridop:team-a")
        try:
            await asyncio.wait_for(Worker(store_a, "mine", handlers.echo, heartbeat_seconds=0.1).run(), 30)
        finally:
            await store_a.close()
        assert len((await a.get_results(sub, timeout_sec=5))["finished"]) == 10

        # ... and cannot touch B's keys: not by name, not through a script, not by scanning.
        spy = aioredis.Redis.from_url(url_a)
        try:
            with pytest.raises(NoPermissionError):
                await spy.hgetall("gridop:team-b:{payroll}:in")
            with pytest.raises(NoPermissionError):
                await spy.hset("gridop:team-b:{payroll}:meta", "cancelled", 1)
            b_through_a = TaskStore(spy, prefix="gridop:team-b")
            with pytest.raises(NoPermissionError):
                await b_through_a.claim("payroll", "thief", 10, 30)
            with pytest.raises(NoPermissionError):
                await b_through_a.create("payroll", [encode({})], RetryPolicy())
            with pytest.raises(NoPermissionError):
                await spy.flushall()
            with pytest.raises(NoPermissionError):
                await spy.scan(match="gridop:team-b:*")
        finally:
            await spy.aclose()
    assert (await admin.hget("gridop:team-b:{payroll}:meta", "cancelled")) == b"0"
    assert await admin.llen("gridop:team-b:{payroll}:q") == 1
    await admin.aclose()


async def test_a_wrong_password_is_reported_at_once_by_the_sdk(secured_redis: str) -> None:
    bad = secured_redis.replace(ADMIN_PASSWORD, "wrong")
    async with AsyncGridConnector({"redis_url": bad}) as c:
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(c.authenticate(), 5)
