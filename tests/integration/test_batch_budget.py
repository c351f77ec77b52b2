"""The API request budget of TaskBatches and TaskPools, counted at the API boundary (the emulator).

Their controller reads its objects, Jobs and Deployments from watch caches: once they are warm, a
pass costs no API reads, and a batch's writes are its finalizer, its Job and its status (at most
one status write per `batch_status_interval_seconds`, none when nothing changed).
"""

from __future__ import annotations

import asyncio

import pytest

from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, resources
from gridop.settings import Settings

from .conftest import NAMESPACE, eventually

OPERATOR = "gridop-operator"  # the operator's User-Agent
N = 100


def reads(emulator) -> int:
    return emulator.count(OPERATOR, "FETCH") + emulator.count(OPERATOR, "LIST")


def writes(emulator, resource: str | None = None) -> int:
    total = sum(emulator.count(OPERATOR, action, resource) for action in ("CREATE", "UPDATE", "DELETE"))
    return total - (emulator.count(OPERATOR, "CREATE", "events") if resource is None else 0)


def taskbatch(name: str) -> dict:
    return {"apiVersion": "gridop.io/v1beta1", "kind": "TaskBatch", "metadata": {"name": name},
            "spec": {"handler": "tests.dataplane.handlers:echo", "workers": {"max": 2, "tasksPerWorker": 10}}}


def taskpool(name: str) -> dict:
    return {"apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": name},
            "spec": {"handler": "tests.dataplane.handlers:echo", "workers": {"min": 1, "max": 4, "tasksPerWorker": 10}}}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # The defaults a user gets, with a data plane.
    return Settings(operator_namespace="gridop-system", log_format="text", redis_url=redis_url)


def connector(redis_url: str) -> AsyncGridConnector:
    return AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE, "retry_backoff_sec": 0.05})


async def test_a_hundred_running_batches_cost_the_api_server_only_their_writes(
    emulator, operator, api: KubeClient, redis_url: str,
) -> None:
    await asyncio.sleep(1.0)  # caches warm
    before_reads, before_writes = reads(emulator), writes(emulator)
    for i in range(N):
        await api.create(resources.TASKBATCHES, taskbatch(f"b-{i}"), NAMESPACE)
    async with connector(redis_url) as c:
        for i in range(N):
            await c.send([{"n": n} for n in range(5)], session_id=f"b-{i}")

    async def all_running() -> bool:
        items = await api.list(resources.TASKBATCHES, NAMESPACE)
        return len(items) == N and all((b.get("status") or {}).get("phase") == "Running"
                                       and (b.get("status") or {}).get("workers") == 1 for b in items)

    await eventually(all_running, timeout=60)
    await eventually(lambda: _jobs(api, N), timeout=30)
    await asyncio.sleep(2.0)  # deferred writes and echoes settle
    # Reading nothing per pass: the one read is the namespace's data-plane Secret, once per
    # operator lifetime.
    used_reads = reads(emulator) - before_reads
    assert used_reads <= 1, f"{used_reads} API reads for {N} batches: {emulator.counts}"
    # Per batch: its finalizer, its Job and a few status writes (Pending, Running, its counts).
    used_writes = writes(emulator) - before_writes
    assert used_writes / N <= 5.0, f"{used_writes} API writes for {N} batches: {emulator.counts}"
    assert emulator.count(OPERATOR, "CREATE", "jobs") == N

    # Running, nothing changing: about 100 passes a second, and not one request.
    settled_reads, settled_writes = reads(emulator), writes(emulator)
    await asyncio.sleep(5.0)
    assert reads(emulator) == settled_reads
    assert writes(emulator) == settled_writes, emulator.counts


async def _jobs(api: KubeClient, n: int) -> bool:
    return len(await api.list(resources.JOBS, NAMESPACE)) == n


async def test_a_busy_batch_writes_its_status_at_most_once_a_second(
    emulator, operator, api: KubeClient, redis_url: str,
) -> None:
    from gridop.tasks.store import TaskStore, key_prefix
    from gridop.tasks.worker import Worker
    from tests.dataplane import handlers

    await api.create(resources.TASKBATCHES, taskbatch("busy"), NAMESPACE)
    async with connector(redis_url) as c:
        await c.send([{"seconds": 0.01} for _ in range(1000)], session_id="busy")
    await eventually(lambda: _phase(api, "busy", "Running"))
    store = TaskStore.from_url(redis_url, prefix=key_prefix(NAMESPACE))
    worker = asyncio.create_task(Worker(store, "busy", handlers.slow, batch_size=1, heartbeat_seconds=0.5,
                                        lease_seconds=5).run())
    try:
        await asyncio.sleep(1.0)
        before = emulator.count(OPERATOR, "UPDATE", "taskbatches/status")
        await asyncio.sleep(6.0)  # the counters move all the time
        written = emulator.count(OPERATOR, "UPDATE", "taskbatches/status") - before
        assert 3 <= written <= 7, f"{written} status writes in 6 s of a running batch"
        assert emulator.count(OPERATOR, "FETCH", "taskbatches") == 0
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await store.close()


async def _phase(api: KubeClient, name: str, phase: str) -> bool:
    tb = await api.get(resources.TASKBATCHES, name, NAMESPACE)
    return ((tb or {}).get("status") or {}).get("phase") == phase


async def test_a_pool_pass_reads_nothing(emulator, operator, api: KubeClient, redis_url: str) -> None:
    await asyncio.sleep(1.0)  # caches warm
    before_reads = reads(emulator)
    for i in range(10):
        await api.create(resources.TASKPOOLS, taskpool(f"p-{i}"), NAMESPACE)
    async with AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE, "pool": "p-0"}) as c:
        await c.send([{"worker_arguments": ["1"]} for _ in range(40)])

    async def scaled() -> bool:
        dep = await api.get(resources.DEPLOYMENTS, "p-0-pool", NAMESPACE)
        return dep is not None and dep["spec"]["replicas"] == 4

    await eventually(scaled, timeout=30)
    await eventually(lambda: _pools_served(api, 10), timeout=30)
    assert reads(emulator) - before_reads <= 1  # the namespace's data-plane Secret, once
    assert emulator.count(OPERATOR, "CREATE", "deployments") == 10
    settled = writes(emulator)
    await asyncio.sleep(6.0)  # at least one pass of every pool: nothing changed, nothing written
    assert writes(emulator) == settled, emulator.counts
    assert reads(emulator) - before_reads <= 1


async def _pools_served(api: KubeClient, n: int) -> bool:
    items = await api.list(resources.TASKPOOLS, NAMESPACE)
    return len(items) == n and all((p.get("status") or {}).get("workers") for p in items)
