"""TaskBatch through the real operator: workers Job, counters from Redis, phases, cleanup."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging

import kmock
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from gridop.client.tasks import AsyncGridConnector
from gridop.kube import ClusterAccess, KubeClient, resources
from gridop.operator_main import run_operator
from gridop.settings import Settings
from gridop.tasks.store import TaskStore
from gridop.tasks.worker import Worker
from tests.dataplane import handlers

from .conftest import NAMESPACE, eventually


def taskbatch(name: str, **spec) -> dict:
    return {"apiVersion": "gridop.io/v1beta1", "kind": "TaskBatch", "metadata": {"name": name},
            "spec": {"handler": "tests.dataplane.handlers:echo", "workers": {"min": 0, "max": 3, "tasksPerWorker": 10},
                     **spec}}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(operator_namespace="gridop-system", resync_seconds=5.0, log_format="text", redis_url=redis_url,
                    batch_status_interval_seconds=0.2)


@pytest.fixture
async def batch_store(redis_url: str):
    store = TaskStore(aioredis.Redis.from_url(redis_url), prefix=f"gridop:{NAMESPACE}")
    yield store
    await store.close()


def connector(redis_url: str) -> AsyncGridConnector:
    return AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE, "retry_backoff_sec": 0.05})


async def status(api: KubeClient, name: str) -> dict:
    tb = await api.get(resources.TASKBATCHES, name, NAMESPACE)
    return (tb or {}).get("status") or {}


async def phase_is(api: KubeClient, name: str, phase: str) -> dict | None:
    st = await status(api, name)
    return st if st.get("phase") == phase else None


async def test_a_batch_scales_workers_reports_counts_and_cleans_up(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, batch_store: TaskStore
) -> None:
    await api.create(resources.TASKBATCHES, taskbatch("tb1"), NAMESPACE)
    st = await eventually(lambda: phase_is(api, "tb1", "Pending"))
    assert st["conditions"][0]["reason"] == "WaitingForTasks"
    assert await api.get(resources.JOBS, "tb1-workers", NAMESPACE) is None

    async with connector(redis_url) as c:
        sub = await c.send([{"n": i} for i in range(50)], session_id="tb1")

        # 50 pending tasks at 10 per worker, capped at max=3: a Job of 3 workers, owned by the batch.
        job = await eventually(lambda: _job_with_parallelism(api, "tb1-workers", 3))
        assert job["metadata"]["ownerReferences"][0]["kind"] == "TaskBatch"
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GRIDOP_SESSION_ID"] == "tb1" and env["GRIDOP_HANDLER"] == "tests.dataplane.handlers:echo"
        assert env["GRIDOP_KEY_PREFIX"] == f"gridop:{NAMESPACE}"
        # No credentials in the Job: the URL comes from the namespace's own Secret, whose Redis user
        # reaches this namespace's keys only.
        assert env["GRIDOP_REDIS_URL"] == {"secretKeyRef": {"name": "gridop-data-plane", "key": "url"}}
        assert "redis://" not in str(job)
        secret = await api.get(resources.SECRETS, "gridop-data-plane", NAMESPACE)
        url = base64.b64decode(secret["data"]["url"]).decode()
        assert url.startswith(f"redis://gridop-{NAMESPACE}:")
        scoped = aioredis.Redis.from_url(url)
        try:
            assert await scoped.hget(f"gridop:{NAMESPACE}:{{tb1}}:meta", "total") == b"50"
            with pytest.raises(NoPermissionError):
                await scoped.hget("gridop:other-namespace:{tb1}:meta", "total")
        finally:
            await scoped.aclose()
        st = await eventually(lambda: _counts_are(api, "tb1", pending=50, total=50))
        assert st["phase"] == "Running" and st["workers"] == 3

        # The Job's pods (played here by in-process workers) run the tasks.
        await Worker(batch_store, "tb1", handlers.echo, heartbeat_seconds=0.2, lease_seconds=2).run()
        st = await eventually(lambda: phase_is(api, "tb1", "Succeeded"))
        assert st["counts"] == {"pending": 0, "processing": 0, "retrying": 0, "finished": 50, "failed": 0,
                                "cancelled": 0, "total": 50}
        assert st["completionTime"] and st["startTime"] and st["workers"] == 0
        assert (await c.get_results(sub))["metadata"]["tasks_in_response"] == 50
    await eventually(lambda: _job_with_parallelism(api, "tb1-workers", 0))

    # Delete: the data-plane keys go with the batch.
    assert await batch_store.exists("tb1")
    await api.delete(resources.TASKBATCHES, "tb1", NAMESPACE)
    await eventually(lambda: _absent(api, "tb1"))
    assert not await batch_store.exists("tb1")
    assert await batch_store.redis.keys(f"gridop:{NAMESPACE}:{{tb1}}:*") == []


async def _counts_are(api: KubeClient, name: str, **expected: int) -> dict | None:
    st = await status(api, name)
    counts = st.get("counts") or {}
    return st if all(counts.get(k) == v for k, v in expected.items()) else None


async def _job_with_parallelism(api: KubeClient, name: str, n: int) -> dict | None:
    job = await api.get(resources.JOBS, name, NAMESPACE)
    return job if job is not None and job["spec"]["parallelism"] == n else None


async def _absent(api: KubeClient, name: str) -> bool:
    return await api.get(resources.TASKBATCHES, name, NAMESPACE) is None


async def test_cancel_in_the_spec_cancels_the_tasks(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, batch_store: TaskStore
) -> None:
    await api.create(resources.TASKBATCHES, taskbatch("tb2"), NAMESPACE)
    async with connector(redis_url) as c:
        sub = await c.send([{"n": i} for i in range(20)], session_id="tb2")
        await eventually(lambda: phase_is(api, "tb2", "Running"))
        await api.patch(resources.TASKBATCHES, "tb2", {"spec": {"cancel": True}}, NAMESPACE)
        st = await eventually(lambda: phase_is(api, "tb2", "Cancelled"))
        assert st["counts"]["cancelled"] == 20
        assert len((await c.get_results(sub))["cancelled"]) == 20


async def test_restarting_the_operator_mid_batch_converges_on_the_truth(
    emulator: kmock.KubernetesEmulator, api: KubeClient, settings: Settings, redis_url: str, batch_store: TaskStore
) -> None:
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)

    async def start() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_operator(settings, access, stop_flag=stop, ready_flag=ready, serve_metrics=False))
        await asyncio.wait_for(ready.wait(), 15)
        return stop, task

    async def halt(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)

    await api.create(resources.TASKBATCHES, taskbatch("tb3"), NAMESPACE)
    async with connector(redis_url) as c:
        await c.send([{"seconds": 0.002} for _ in range(400)], session_id="tb3")
    stop, task = await start()
    await eventually(lambda: phase_is(api, "tb3", "Running"))
    worker = asyncio.create_task(
        Worker(batch_store, "tb3", handlers.slow, batch_size=10, heartbeat_seconds=0.2, lease_seconds=2).run())
    await asyncio.sleep(0.3)
    await halt(stop, task)  # the operator goes away while the workers keep going
    await worker
    stale = await status(api, "tb3")
    assert stale["counts"]["finished"] < 400  # what it last wrote is out of date

    stop, task = await start()
    try:
        st = await eventually(lambda: phase_is(api, "tb3", "Succeeded"))
        assert st["counts"]["finished"] == 400 and st["counts"] == {**st["counts"], **(await batch_store.counts("tb3"))}
    finally:
        await halt(stop, task)


async def test_without_a_data_plane_the_batch_says_so(
    emulator: kmock.KubernetesEmulator, api: KubeClient
) -> None:
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_operator(Settings(log_format="text", resync_seconds=5.0), access,
                                            stop_flag=stop, ready_flag=ready, serve_metrics=False))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        await api.create(resources.TASKBATCHES, taskbatch("tb4"), NAMESPACE)
        st = await eventually(lambda: _ready_reason(api, "tb4", "DataPlaneUnavailable"))
        assert "GRIDOP_REDIS_URL" in st["conditions"][0]["message"]
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


async def _ready_reason(api: KubeClient, name: str, reason: str) -> dict | None:
    st = await status(api, name)
    conds = st.get("conditions") or []
    return st if conds and conds[0]["reason"] == reason else None


async def test_the_spec_retry_policy_governs_the_tasks_and_appends_reopen_a_finished_batch(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, batch_store: TaskStore
) -> None:
    """spec.retry reaches the data plane (the submitter asked for 3 retries; the batch says none),
    failed attempts are counted by kind in the status, and tasks appended to a finished batch
    bring it back to Running with workers."""
    await api.create(resources.TASKBATCHES, taskbatch("tb5", handler="tests.dataplane.handlers:exits",
                                                      retry={"maxRetries": 0, "backoffMilliseconds": 100}), NAMESPACE)
    await eventually(lambda: phase_is(api, "tb5", "Pending"))
    meta = await eventually(lambda: _meta_with(batch_store, "tb5", "policy_source"))
    assert (meta["max_attempts"], meta["backoff"]) == ("1", "0.1")
    async with connector(redis_url) as c:  # its own max_retries is 3
        await c.send([{"exit": True}, {"n": 1}, {"n": 2}], session_id="tb5")
        await Worker(batch_store, "tb5", handlers.exits, heartbeat_seconds=0.2, lease_seconds=2).run()
        st = await eventually(lambda: phase_is(api, "tb5", "Failed"))
        assert st["counts"]["failed"] == 1 and st["errors"] == {"application": 1, "timeout": 0, "infrastructure": 0}
        assert (await batch_store.record("tb5", 0)).attempts == 1
        await eventually(lambda: _no_workers(api, "tb5-workers"))

        await c.send([{"n": 3}], session_id="tb5", append=True)
        st = await eventually(lambda: phase_is(api, "tb5", "Running"))
        assert st.get("completionTime") is None
        await eventually(lambda: _job_with_parallelism(api, "tb5-workers", 1))
        await Worker(batch_store, "tb5", handlers.exits, heartbeat_seconds=0.2, lease_seconds=2).run()
        st = await eventually(lambda: phase_is(api, "tb5", "Failed"))
        assert st["counts"]["finished"] == 3 and st["counts"]["total"] == 4


async def _no_workers(api: KubeClient, name: str) -> bool:
    job = await api.get(resources.JOBS, name, NAMESPACE)
    return job is None or job["spec"]["parallelism"] == 0


async def _meta_with(store: TaskStore, sid: str, field: str) -> dict | None:
    meta = await store.meta(sid)
    return meta if field in meta else None


async def test_deleting_batches_and_pools_is_quiet(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, caplog: pytest.LogCaptureFixture,
) -> None:
    """A normal delete stops the object's loop through its stop flag: no WARNING from kopf about
    cancelling and escalating, no ERROR."""
    pool = {"apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": "quiet"},
            "spec": {"handler": "tests.dataplane.handlers:echo"}}
    await api.create(resources.TASKBATCHES, taskbatch("quiet"), NAMESPACE)
    await api.create(resources.TASKPOOLS, pool, NAMESPACE)
    await eventually(lambda: phase_is(api, "quiet", "Pending"))
    await eventually(lambda: api.get(resources.DEPLOYMENTS, "quiet-pool", NAMESPACE))
    await api.delete(resources.TASKBATCHES, "quiet", NAMESPACE)
    await api.delete(resources.TASKPOOLS, "quiet", NAMESPACE)

    async def gone() -> bool:
        return (await api.get(resources.TASKBATCHES, "quiet", NAMESPACE) is None
                and await api.get(resources.TASKPOOLS, "quiet", NAMESPACE) is None)

    await eventually(gone, timeout=20)
    await asyncio.sleep(1)
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in noisy if "Will escalate" in m or "cancelled" in m], noisy


async def test_what_a_namespace_stops_using_leaves_redis(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, batch_store: TaskStore
) -> None:
    """A pool's own keys go with the pool, and the namespace's Redis user with its last batch or
    pool (a new one defines it again, with the password its Secret keeps)."""
    admin = aioredis.Redis.from_url(redis_url)
    user = f"gridop-{NAMESPACE}"
    pool = {"apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": "p1"},
            "spec": {"handler": "tests.dataplane.handlers:echo"}}
    try:
        await api.create(resources.TASKBATCHES, taskbatch("last"), NAMESPACE)
        await api.create(resources.TASKPOOLS, pool, NAMESPACE)
        await eventually(lambda: admin.acl_getuser(user))
        async with AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE, "pool": "p1"}) as c:
            await c.send([{"n": 1}])  # the pool's wake list and ready set
        await batch_store.pool_pick("p1")  # a worker's pick moves the pool's turn counter
        assert await admin.exists(batch_store.pool_key("p1", "turn"), batch_store.pool_key("p1", "wake")) == 2

        await api.delete(resources.TASKPOOLS, "p1", NAMESPACE)
        await eventually(lambda: _no_keys(admin, batch_store.pool_key("p1", "turn"), batch_store.pool_key("p1", "wake")))
        assert await admin.acl_getuser(user), "the batch still uses the namespace's data plane"

        await api.delete(resources.TASKBATCHES, "last", NAMESPACE)
        await eventually(lambda: _user_gone(admin, user), what="the namespace's Redis user removed")

        await api.create(resources.TASKBATCHES, taskbatch("again"), NAMESPACE)
        await eventually(lambda: admin.acl_getuser(user), what="the user defined again for a new batch")
    finally:
        await admin.aclose()


async def _no_keys(admin, *keys: str) -> bool:
    return await admin.exists(*keys) == 0


async def _user_gone(admin, user: str) -> bool:
    return await admin.acl_getuser(user) is None
