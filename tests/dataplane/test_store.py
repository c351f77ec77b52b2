"""The task state machine in Redis, transition by transition."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.exceptions import ResponseError

from bench.localredis import free_port, redis_server_binary
from gridop.client.tasks import AsyncGridConnector, UnknownSession
from gridop.tasks import connection
from gridop.tasks.codec import decode, encode
from gridop.tasks.connection import FastLane, LaneClosed
from gridop.tasks.store import Outcome, RetryPolicy, TaskStore
from gridop.tasks.worker import Worker

from . import handlers
from .conftest import BOTH_PLANES


async def declare(store: TaskStore, sid: str, payloads: list[bytes], policy: RetryPolicy) -> None:
    await store.create(sid, payloads, policy)
    await store.submit(sid, payloads)


def connector(redis_url: str, **extra) -> AsyncGridConnector:
    return AsyncGridConnector({"redis_url": redis_url, "retry_backoff_sec": 0.1, **extra})


async def test_send_returns_ordered_ids_and_queues_every_task(redis_url: str, store: TaskStore) -> None:
    async with connector(redis_url) as c:
        sub = await c.send([{"n": i} for i in range(12)], session_id="s1")
    assert sub == {"session_id": "s1", "task_ids": [f"s1_{i}" for i in range(12)]}
    assert (await store.counts("s1"))["pending"] == 12
    claimed = await store.claim("s1", "w", 5, lease_seconds=30)
    assert [t.index for t in claimed] == [0, 1, 2, 3, 4]  # FIFO
    assert decode(claimed[3].payload) == {"n": 3} and claimed[0].attempt == 1
    counts = await store.counts("s1")
    assert (counts["pending"], counts["processing"]) == (7, 5)
    record = await store.record("s1", 3)
    assert record.state == "processing" and set(record.timestamps) == {"submitted", "queued", "claimed"}


@BOTH_PLANES
async def test_results_have_the_htc_grid_shape(redis_url: str, store: TaskStore) -> None:
    async with connector(redis_url, max_retries=0) as c:
        sub = await c.send([{"n": 0}, {"n": 1}, {"n": 2}], session_id="s2")
        a, b, _ = await store.claim("s2", "w", 3, lease_seconds=30)
        await store.complete("s2", [Outcome(a.index, a.token, "ok", encode({"r": 0}), time.time()),
                                     Outcome(b.index, b.token, "error", "ValueError: nope")])
        results = await c.get_results(sub, wait=False)
        assert results == {
            "finished": ["s2_0"], "finished_OUTPUT": ['{"r":0}'],
            "failed": ["s2_1"], "failed_OUTPUT": ["read_from_dataplane"],
            "cancelled": [], "cancelled_OUTPUT": [],
            "metadata": {"tasks_in_response": 2, "errors": {"s2_1": "ValueError: nope"},
                         "error_kinds": {"s2_1": "application"}},
        }
        cancelled = await c.cancel_sessions(["s2"])
        assert cancelled == {"s2": {"cancelled_pending": 0, "cancelled_processing": 1, "total_cancelled_tasks": 1}}
        results = await c.get_results(sub)  # HTC-Grid's default: wait until every task is terminal
        assert results["cancelled"] == ["s2_2"] and results["cancelled_OUTPUT"] == ["read_from_dataplane"]
        assert results["metadata"]["tasks_in_response"] == 3
    record = await store.record("s2", 0)
    assert record.output == {"r": 0} and set(record.timestamps) == {"submitted", "queued", "claimed", "started", "finished"}


@contextlib.asynccontextmanager
async def echo_worker(store: TaskStore, sid: str) -> AsyncIterator[None]:
    """A worker that echoes its tasks and waits for more, until the block ends."""
    stop = asyncio.Event()
    running = asyncio.ensure_future(Worker(store, sid, handlers.echo, exit_when_done=False).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def test_each_send_on_a_session_gets_its_own_results_whatever_came_after(redis_url: str, store: TaskStore) -> None:
    async with connector(redis_url) as c, echo_worker(store, "many"):
        first = await c.send([{"n": 0}], session_id="many", append=True)
        assert (await c.get_results(first, timeout_sec=10))["finished"] == ["many_0"]
        second = await c.send([{"n": 1}], session_id="many", append=True)
        third = await c.send([{"n": 2}, {"n": 3}], session_id="many", append=True)
        # Asked in any order, and again: each send's results, not the latest send's.
        for sub, ids in ((first, ["many_0"]), (third, ["many_2", "many_3"]), (second, ["many_1"]), (first, ["many_0"])):
            results = await c.get_results(sub, timeout_sec=10)
            assert results["finished"] == ids
            assert [json.loads(o)["echo"] for o in results["finished_OUTPUT"]] == [{"n": int(i.rsplit("_", 1)[1])} for i in ids]


async def test_results_asked_at_once_or_later_are_each_sends_own(redis_url: str, store: TaskStore) -> None:
    async with connector(redis_url, results_poll_interval_sec=2) as c, echo_worker(store, "rounds"):
        await c.get_results(await c.send([{"n": -1}], session_id="rounds", append=True), timeout_sec=10)
        for n in range(20):  # the round trip of a task at a time, as an interactive client makes it
            results = await c.get_results(await c.send([{"n": n}], session_id="rounds", append=True), timeout_sec=10)
            assert [json.loads(o)["echo"] for o in results["finished_OUTPUT"]] == [{"n": n}]
        later = await c.send([{"n": 100}], session_id="rounds", append=True)  # asked for last
        newer = await c.send([{"n": 101}], session_id="rounds", append=True)
        assert (await c.get_results(newer, timeout_sec=10))["finished"] == ["rounds_22"]
        hasty = await c.send([{"n": 102}], session_id="rounds", append=True)
        started = time.monotonic()
        await c.get_results(hasty, wait=False)  # what has ended now, without a poll's wait
        assert time.monotonic() - started < 1
        assert (await c.get_results(hasty, timeout_sec=10))["finished"] == ["rounds_23"]
        assert (await c.get_results(later, timeout_sec=10))["finished"] == ["rounds_21"]


@BOTH_PLANES
async def test_a_lost_lease_retries_with_backoff_and_the_late_result_is_discarded(store: TaskStore) -> None:
    await declare(store, "s3", [encode({})], RetryPolicy(max_retries=1, max_infrastructure_retries=1, backoff_seconds=0.2))
    (first,) = await store.claim("s3", "w1", 1, lease_seconds=0.1)
    await asyncio.sleep(0.15)
    assert await store.sweep("s3") == {"expired": 1, "retried": 1, "failed": 0, "requeued": 0}
    assert (await store.record("s3", 0)).state == "retrying"
    assert await store.sweep("s3") == {"expired": 0, "retried": 0, "failed": 0, "requeued": 0}  # backoff
    await asyncio.sleep(0.25)
    assert (await store.sweep("s3"))["requeued"] == 1
    (second,) = await store.claim("s3", "w2", 1, lease_seconds=30)
    assert second.attempt == 2 and second.token != first.token

    # The first worker was only slow, not dead: its result arrives late and is ignored.
    assert await store.complete("s3", [Outcome(0, first.token, "ok", encode({"by": "w1"}))]) == (0, 1)
    assert await store.heartbeat("s3", [(0, first.token)], 30) == [0]  # and it learns it lost the task
    assert await store.complete("s3", [Outcome(0, second.token, "ok", encode({"by": "w2"}))]) == (1, 0)
    record = await store.record("s3", 0)
    assert (record.state, record.output, record.attempts) == ("finished", {"by": "w2"}, 2)
    counts = await store.counts("s3")
    assert counts["finished"] == 1 and sum(counts.values()) == 1


async def test_the_retry_budget_runs_out_into_failed(store: TaskStore) -> None:
    await declare(store, "s4", [encode({})], RetryPolicy(max_retries=0, max_infrastructure_retries=0))
    await store.claim("s4", "w", 1, lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert (await store.sweep("s4"))["failed"] == 1
    record = await store.record("s4", 0)
    assert record.state == "failed" and "lease expired" in record.error


@BOTH_PLANES
async def test_cancel_reports_each_state_and_stops_heartbeats(store: TaskStore) -> None:
    await declare(store, "s5", [encode({"i": i}) for i in range(6)], RetryPolicy(max_retries=2, backoff_seconds=60))
    claimed = await store.claim("s5", "w", 3, lease_seconds=30)
    # one of the claimed tasks fails and goes to retrying
    await store.complete("s5", [Outcome(claimed[0].index, claimed[0].token, "error", "boom")])
    assert await store.cancel("s5") == {"pending": 3, "retrying": 1, "processing": 2}
    lost = await store.heartbeat("s5", [(t.index, t.token) for t in claimed[1:]], 30)
    assert sorted(lost) == [claimed[1].index, claimed[2].index]
    assert await store.claim("s5", "w", 10, lease_seconds=30) == []
    assert (await store.counts("s5"))["cancelled"] == 6


async def test_send_is_idempotent_with_a_client_supplied_id(redis_url: str, store: TaskStore) -> None:
    async with connector(redis_url) as c:
        first = await c.send([{"a": 1}, {"a": 2}], session_id="s6")
        again = await c.send([{"a": 1}, {"a": 2}], session_id="s6")
        assert first == again and (await store.counts("s6"))["pending"] == 2
        with pytest.raises(ValueError, match="already holds 2 different tasks"):
            await c.send([{"a": 1}], session_id="s6")
        with pytest.raises(ValueError, match="already holds 2 different tasks"):
            await c.send([{"a": 1}, {"a": 3}], session_id="s6")  # same count, other content
        assert [decode(p) for p in await store.redis.lrange(store.key("s6", "in"), 0, -1)] == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    "tasks, message",
    [
        ("not a list", "must be a list"),
        ([{"ok": 1}, "nope"], r"tasks_list\[1\] must be a dict"),
        ([{"when": object()}], r"tasks_list\[0\] is not JSON-serialisable"),
        ([{"blob": "x" * 2000}], r"tasks_list\[0\] is \d+ bytes encoded, over the 1024-byte limit"),
    ],
)
async def test_bad_task_lists_are_refused_before_anything_is_written(
    redis_url: str, store: TaskStore, tasks, message: str
) -> None:
    async with connector(redis_url, max_payload_bytes=1024) as c:
        with pytest.raises(ValueError, match=message):
            await c.send(tasks, session_id="bad")
    assert await store.redis.dbsize() == 0


async def test_an_empty_list_makes_an_empty_session_as_htc_grid_does(redis_url: str) -> None:
    async with connector(redis_url) as c:
        sub = await c.send([], session_id="nothing")
        assert sub == {"session_id": "nothing", "task_ids": []}
        results = await asyncio.wait_for(c.get_results(sub), 5)
        assert results["metadata"]["tasks_in_response"] == 0 and results["finished"] == []


def test_connector_config_errors(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDOP_REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="redis_url"):
        AsyncGridConnector({})
    with pytest.raises(ValueError, match=r"grid_storage_service'\] 'DYNAMO' is not one of REDIS"):
        AsyncGridConnector({"redis_url": redis_url, "grid_storage_service": "DYNAMO"})
    with pytest.raises(RuntimeError, match=r"call init\(config\) first"):
        asyncio.run(AsyncGridConnector().send([{"a": 1}]))


async def test_appending_to_an_open_batch(redis_url: str, store: TaskStore) -> None:
    async with connector(redis_url) as c:
        first = await c.send([{"a": 0}], session_id="open", append=True)
        more = await c.send([{"a": 1}, {"a": 2}], session_id="open", append=True)
    assert more["task_ids"] == ["open_1", "open_2"] and first["task_ids"] == ["open_0"]
    meta = await store.meta("open")
    assert (meta["total"], meta["submitted"]) == ("3", "3")
    assert [t.index for t in await store.claim("open", "w", 10, 30)] == [0, 1, 2]


@BOTH_PLANES
async def test_an_append_waits_for_the_first_submission_and_leaves_it_intact(store: TaskStore) -> None:
    inputs = [encode({"a": i}) for i in range(3)]
    await store.create("early", inputs, RetryPolicy())  # declared; its tasks not written yet
    append = store._scripts["APPEND"]
    refused = await append(keys=store.keys("early"), args=[time.time(), "early-1:0", encode({"a": 3})])
    assert int(refused[0]) == -3
    assert await store.redis.llen(store.key("early", "in")) == 0  # what it pushed, it took back
    await store.submit("early", inputs)
    assert (await store.append("early", [encode({"a": 3})]))[0] == [3]
    assert [decode(v) for v in await store.redis.lrange(store.key("early", "in"), 0, -1)] == [{"a": i} for i in range(4)]


@BOTH_PLANES
async def test_a_report_is_applied_once_however_it_is_repeated(store: TaskStore) -> None:
    await declare(store, "once", [encode({"a": i}) for i in range(3)], RetryPolicy())
    claimed = await store.claim("once", "w", 3, 30)
    ok = [Outcome(t.index, t.token, "ok", encode(t.index)) for t in claimed]
    assert await store.complete("once", [ok[0], ok[0]]) == (1, 1)  # the same task twice in one report
    assert await store.complete("once", [ok[0], ok[1]]) == (1, 1)  # a replay, with a new task
    late = Outcome(claimed[1].index, claimed[1].token, "error", "too late")
    assert await store.complete("once", [late, ok[2]]) == (1, 1)  # already finished: its failure is stale
    assert await store.complete("once", ok) == (0, 3)  # the claim is over
    counts = await store.counts("once")
    assert (counts["finished"], counts["processing"], counts["failed"]) == (3, 0, 0)
    assert [decode(o) for o in await store.outputs("once", [0, 1, 2])] == [0, 1, 2]
    assert await store.redis.zcard(store.key("once", "lease")) == 0
    assert await store.redis.hlen(store.key("once", "cn")) == 0


async def test_a_claim_live_when_an_earlier_gridop_wrote_it_is_reported_as_before(store: TaskStore) -> None:
    """An earlier gridop kept a live claim as a bare count (its runs in the claim record): claims
    made before an upgrade are still reported, task by task, and then released."""
    await declare(store, "upgrade", [encode({"a": i}) for i in range(2)], RetryPolicy())
    claimed = await store.claim("upgrade", "w", 2, 30)
    await store.redis.hset(store.key("upgrade", "cn"), claimed[0].token, 2)
    ok = [Outcome(t.index, t.token, "ok", encode(t.index)) for t in claimed]
    assert await store.complete("upgrade", [ok[0]]) == (1, 0)
    assert await store.redis.hget(store.key("upgrade", "cn"), claimed[0].token) == b"1"
    assert await store.complete("upgrade", ok) == (1, 1)
    assert (await store.counts("upgrade"))["finished"] == 2
    assert await store.redis.zcard(store.key("upgrade", "lease")) == 0


# -- the fast lane: hot commands off the client's per-command machinery, never at the cost of a fault --


async def finish_first_task_on_the_lane(store: TaskStore, sid: str) -> None:
    """Claim, report and read back task 0 of `sid`; the lane must have carried it (connected)."""
    [task] = await store.claim(sid, "w", 1, 30)
    await store.complete(sid, [Outcome(task.index, task.token, "ok", encode("out"))])
    _, events = await store.events(sid, "0-0")
    assert [e.finished for e in events] == [[0]]
    assert store._lane._shared is not None and store._lane._shared.usable(), "the hot commands did not run on the lane"


async def test_the_fast_lane_reloads_flushed_scripts_and_replaces_killed_connections(redis_url: str, store: TaskStore) -> None:
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url)
    try:
        async with connector(redis_url) as c:
            await c.send([{"a": 0}], session_id="lane", append=True)
            assert store._lane.enabled
            await admin.script_flush()  # a restarted Redis forgets its scripts: NOSCRIPT on the lane
            assert (await store.append("lane", [encode({"a": 1})]))[0] == [1]
            await admin.client_kill_filter(_type="normal", skipme=True)  # every connection dropped, the lane's too
            assert (await store.append("lane", [encode({"a": 2})]))[0] == [2]
            await finish_first_task_on_the_lane(store, "lane")
    finally:
        await admin.aclose()


async def test_a_cancelled_blocking_read_leaves_the_fast_lane_usable(store: TaskStore) -> None:
    await declare(store, "lane-wait", [encode({"a": 0})], RetryPolicy())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await store.events("lane-wait", "$", block_ms=5000)  # cut mid-read: its connection is dropped
    [task] = await store.claim("lane-wait", "w", 1, 30)
    await store.complete("lane-wait", [Outcome(task.index, task.token, "ok", encode("done"))])
    position, events = await store.events("lane-wait", "0-0", block_ms=1000)
    assert [e.finished for e in events] == [[0]] and position != "0-0"


# -- direct hand-off to idle workers --


@BOTH_PLANES
async def test_an_appended_task_is_handed_to_the_first_idle_worker(store: TaskStore) -> None:
    await declare(store, "hand", [encode({"a": 0})], RetryPolicy())
    [first] = await store.claim("hand", "w1", 1, 30)
    await store.complete("hand", [Outcome(first.index, first.token, "ok", encode(0))])
    entry = await store.register_idle("hand", "w1", 30, ttl=60)
    await store.register_idle("hand", "w2", 30, ttl=60)
    [index], _ = await store.append("hand", [encode({"a": 1})])
    handed = await store.wait_for_work("hand", 1)
    assert handed is not None and handed.index == index and handed.token.startswith("w1:")
    assert await store.unidle("hand", entry) is None  # its registration was consumed: nothing more for it
    assert (await store.counts("hand"))["processing"] == 1


@BOTH_PLANES
async def test_a_worker_that_takes_anothers_hand_off_gives_it_its_registration(store: TaskStore) -> None:
    await declare(store, "cross", [encode({"a": 0})], RetryPolicy())
    [first] = await store.claim("cross", "w0", 1, 30)
    await store.complete("cross", [Outcome(first.index, first.token, "ok", encode(0))])
    await store.register_idle("cross", "w1", 30, ttl=60)
    mine = await store.register_idle("cross", "w|2", 30, ttl=60)  # ids may hold the separator
    await store.append("cross", [encode({"a": 1})])
    # Redis woke w|2 first (it blocked first), with the task handed over for w1.
    taken = await store.wait_for_work("cross", 1)
    assert taken is not None and taken.token.startswith("w1:")
    assert await store.unidle("cross", mine, holding=taken) is None
    idle = await store.redis.lrange(store.key("cross", "idle"), 0, -1)
    assert [e.decode().rsplit("|", 2)[0] for e in idle] == ["w1"]  # w1, still waiting, is first in line
    await store.append("cross", [encode({"a": 2})])
    following = await store.wait_for_work("cross", 1)
    assert following is not None and following.token.startswith("w1:") and following.index == 2


async def test_the_fast_lane_pipelines_concurrent_calls_and_matches_each_reply(redis_url: str) -> None:
    lane = FastLane(aioredis.Redis.from_url(redis_url))
    try:
        replies = await asyncio.gather(*(lane.call("ECHO", f"call-{i}") for i in range(300)))
        assert replies == [f"call-{i}".encode() for i in range(300)]
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await lane.call("GET")  # an error reply fails that call only
        assert await lane.call("ECHO", "after") == b"after"
    finally:
        await lane.aclose()


async def test_the_fast_lane_authenticates_and_selects_the_database(redis_url: str) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    await admin.acl_setuser("lane-user", enabled=True, passwords=["+lane-secret"], keys=["*"], commands=["+@all"])
    parts = urlsplit(redis_url)
    base = f"redis://{{}}@{parts.hostname}:{parts.port}/3"
    lane = FastLane(aioredis.Redis.from_url(base.format("lane-user:lane-secret")))
    wrong = FastLane(aioredis.Redis.from_url(base.format("lane-user:not-it")))
    try:
        assert await lane.call("SET", "lane-key", "v") == b"OK"
        assert await admin.get("lane-key") is None  # not in db 0 ...
        db3 = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
        assert await db3.get("lane-key") == b"v"  # ... but in 3
        await db3.aclose()
        with pytest.raises(LaneClosed, match="invalid username-password"):
            await wrong.call("PING")  # the regular path then reports the refused password
    finally:
        await lane.aclose()
        await wrong.aclose()
        await admin.acl_deluser("lane-user")
        await admin.aclose()


async def test_a_fast_lane_call_that_gets_no_reply_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "SOCKET_TIMEOUT_SECONDS", 0.2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a half-open peer: takes the command, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lane = FastLane(aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0"))
    try:
        started = time.monotonic()
        with pytest.raises(LaneClosed, match="no reply"):
            await lane.call("PING")
        assert time.monotonic() - started < 5
        with pytest.raises(LaneClosed, match="no reply"):
            await lane.call("BLPOP", "k", 0.1, blocking=0.1)  # a blocking read gets its wait on top
    finally:
        await lane.aclose()
        server.close()
        await server.wait_closed()


async def test_a_fast_lane_reply_gets_its_full_wait_whenever_it_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """One watchdog per connection: a command sent while an earlier one's wait runs still gets
    the whole of its own, and still gives up when its reply does not come."""
    monkeypatch.setattr(connection, "SOCKET_TIMEOUT_SECONDS", 0.4)

    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"PING\r\n")
        writer.write(b"+PONG\r\n")
        await writer.drain()
        await reader.read()  # then silent

    server = await asyncio.start_server(answers_once, "127.0.0.1", 0)
    lane = FastLane(aioredis.Redis.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"))
    try:
        assert await lane.call("PING") == b"PONG"  # the watchdog is set for this one's wait
        await asyncio.sleep(0.25)
        sent = time.monotonic()
        with pytest.raises(LaneClosed, match="no reply within"):
            await lane.call("ECHO", "x")
        assert 0.35 <= time.monotonic() - sent < 3  # its own wait, not what was left of the first's
    finally:
        await lane.aclose()
        server.close()
        await server.wait_closed()


async def test_a_short_wait_after_a_long_one_gives_up_on_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blocking read's connection is used again for reads of other lengths: one that waits less
    than the read before it still gives up at its own deadline, not at what was left of the other's."""
    monkeypatch.setattr(connection, "SOCKET_TIMEOUT_SECONDS", 0.3)

    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"BLPOP\r\n")
        writer.write(b"*-1\r\n")  # the first read times out in Redis at once: no item
        await writer.drain()
        await reader.read()  # then silent

    server = await asyncio.start_server(answers_once, "127.0.0.1", 0)
    lane = FastLane(aioredis.Redis.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"))
    try:
        assert await lane.call("BLPOP", "k", 60, blocking=60) is None
        sent = time.monotonic()
        with pytest.raises(LaneClosed, match="no reply within"):
            await lane.call("BLPOP", "k", 0.1, blocking=0.1)  # on the same, kept connection
        assert time.monotonic() - sent < 5  # not the first read's 60 s
    finally:
        await lane.aclose()
        server.close()
        await server.wait_closed()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridop-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "redis.crt", directory / "redis.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis that speaks TLS only, with a self-signed certificate."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.05)
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_fast_lane_speaks_tls(tls_redis_url: str) -> None:
    store = TaskStore.from_url(tls_redis_url)
    try:
        await declare(store, "tls", [encode({"a": 0})], RetryPolicy())
        await finish_first_task_on_the_lane(store, "tls")
    finally:
        await store.close()


async def test_waiting_on_what_cannot_come_ends_with_a_reason(redis_url: str) -> None:
    """A wrong address fails within seconds (the outage budget is for a Redis that was there); an
    unknown session id, or one whose keys vanish while waited on, ends the wait with UnknownSession."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    began = time.monotonic()
    async with AsyncGridConnector({"redis_url": f"redis://127.0.0.1:{closed}/0"}) as nowhere:
        with pytest.raises(connection.DataPlaneUnavailable, match=f"nothing answers at Redis 127.0.0.1:{closed}"):
            await nowhere.authenticate()
    assert time.monotonic() - began < 15

    async with AsyncGridConnector({"redis_url": redis_url}) as c:
        ghost = {"session_id": "never-sent", "task_ids": ["never-sent_0"]}
        with pytest.raises(UnknownSession, match="no session 'never-sent' in the data plane"):
            await asyncio.wait_for(c.get_results(ghost), 10)
        with pytest.raises(UnknownSession):
            await asyncio.wait_for(anext(aiter(c.iter_results(ghost))), 10)
        sub = await c.send([{"x": 1}], session_id="vanishing")  # no worker: it stays pending
        waiting = asyncio.ensure_future(c.get_results(sub))
        await asyncio.sleep(0.5)
        await c.store.delete("vanishing")
        with pytest.raises(UnknownSession):
            await asyncio.wait_for(waiting, 10)


async def test_with_the_fast_paths_off_a_batch_runs_on_redis_py_alone(redis_url: str) -> None:
    """The off switch of everything beyond redis-py's documented API (GRIDOP_FAST_LANE=false, or a
    client's `fast_lane: false`): same results, no lane connection, redis-py's own packing."""
    store = TaskStore.from_url(redis_url, fast_lane=False)
    try:
        assert not store._lane.enabled and not type(store.redis.connection_pool.make_connection()).__name__.startswith("Hiredis")
        async with connector(redis_url, fast_lane=False) as c:
            sub = await c.send([{"n": i} for i in range(50)], session_id="plain")
            assert not c._store._lane.enabled
            await Worker(store, "plain", handlers.echo, heartbeat_seconds=0.2, lease_seconds=2).run()
            res = await c.get_results(sub)
        assert res["metadata"]["tasks_in_response"] == 50
    finally:
        await store.close()
