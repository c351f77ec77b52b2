"""`kubectl delete namespace` with all three kinds in it: every finalizer runs, the namespace empties.

The namespace controller marks every object deleted; an object that carries gridop's finalizer
stays until the operator has cleaned up after it (a TaskBatch's data-plane keys). The operator must
keep watching a namespace while it terminates, in the cluster-wide and the namespaced mode alike,
and must create nothing new there (every create is refused with 403).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import redis.asyncio as aioredis

from gridop.api.v1beta1.common import FINALIZER
from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, NotFound, resources
from gridop.settings import Settings

from .conftest import NAMESPACE, eventually, gridsession, node, seed

GRIDOP_KINDS = (resources.GRIDSESSIONS, resources.TASKBATCHES, resources.TASKPOOLS)
EVERYTHING = (*GRIDOP_KINDS, resources.JOBS, resources.DEPLOYMENTS, resources.PODS, resources.SERVICES,
              resources.CONFIGMAPS, resources.SECRETS)


@pytest.fixture(params=["cluster-wide", "namespaced"])
def settings(request: pytest.FixtureRequest, redis_url: str) -> Settings:
    watched = [NAMESPACE] if request.param == "namespaced" else []
    return Settings(operator_namespace="gridop-system", log_format="text", redis_url=redis_url, watch_namespaces=watched)


async def delete_namespace(emulator, api: KubeClient, namespace: str) -> None:
    """What kube-controller-manager's namespace controller does: refuse new content, then delete
    everything in the namespace."""
    emulator.terminating.add(namespace)
    seed(emulator, "v1/namespaces", {  # as watchers of namespaces see it from now on
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Terminating", "conditions": [
            {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
             "message": "Some resources are remaining: taskbatches.gridop.io has 1 resource instances"},
            {"type": "NamespaceFinalizersRemaining", "status": "True", "reason": "SomeFinalizersRemain",
             "message": "Some content in the namespace has finalizers remaining: gridop.io/finalizer in 1 resource instances"},
        ]}})
    for res in EVERYTHING:
        for obj in await api.list(res, namespace):
            with contextlib.suppress(NotFound):
                await api.delete(res, obj["metadata"]["name"], namespace)


async def test_deleting_a_namespace_runs_every_finalizer(
    emulator, operator, api: KubeClient, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridop")
    seed(emulator, "v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
                                     "status": {"phase": "Active"}})
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    await api.create(resources.GRIDSESSIONS, gridsession("s1", node="worker-1"), NAMESPACE)
    await api.create(resources.TASKBATCHES, {
        "apiVersion": "gridop.io/v1beta1", "kind": "TaskBatch", "metadata": {"name": "tb"},
        "spec": {"handler": "tests.dataplane.handlers:echo"}}, NAMESPACE)
    for name, finalizers in (("pool", []), ("older-pool", [FINALIZER])):  # as an earlier gridop left one
        await api.create(resources.TASKPOOLS, {
            "apiVersion": "gridop.io/v1beta1", "kind": "TaskPool",
            "metadata": {"name": name, "finalizers": finalizers},
            "spec": {"handler": "tests.dataplane.handlers:echo"}}, NAMESPACE)
    async with AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE}) as c:
        await c.send([{"n": i} for i in range(10)], session_id="tb")
    await eventually(lambda: api.get(resources.PODS, "s1", NAMESPACE))
    await eventually(lambda: api.get(resources.JOBS, "tb-workers", NAMESPACE))
    await eventually(lambda: api.get(resources.DEPLOYMENTS, "pool-pool", NAMESPACE))
    tb = await api.get(resources.TASKBATCHES, "tb", NAMESPACE)
    assert FINALIZER in tb["metadata"]["finalizers"]
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert await redis.keys(f"gridop:{NAMESPACE}:{{tb}}:*")

        await delete_namespace(emulator, api, NAMESPACE)

        async def empty() -> bool:
            return all([not await api.list(res, NAMESPACE) for res in GRIDOP_KINDS])

        await eventually(empty, timeout=20, what="every GridSession, TaskBatch and TaskPool gone")
        assert await redis.keys(f"gridop:{NAMESPACE}:{{tb}}:*") == []
    finally:
        await redis.aclose()
    await asyncio.sleep(1.0)
    noisy = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING and r.name.startswith("gridop")]
    assert not noisy, noisy
    assert "Traceback" not in caplog.text
