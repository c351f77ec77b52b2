"""`kubectl delete namespace` on a real cluster, with a GridSession, a TaskBatch and a TaskPool in it.

The operator this suite runs watches that namespace alone (`--namespace`), the mode in which an
operator that stops watching a namespace as soon as it starts terminating never removes its
finalizers. The namespace must be gone within two minutes, and the batch's data-plane keys with it.
"""

from __future__ import annotations

import os
import shutil

import pytest
import redis.asyncio as aioredis
import yaml

from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, resources

from .conftest import ROOT, eventually

NAMESPACES = resources.Resource("", "v1", "namespaces", "Namespace", namespaced=False)


@pytest.fixture
def operator_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if os.environ.get("GRIDOP_E2E_EXTERNAL_OPERATOR"):
        pytest.skip("e2e: this test hands its own Redis to the operator it runs; unset GRIDOP_E2E_EXTERNAL_OPERATOR")
    if shutil.which("redis-server") is None:
        pytest.skip("e2e: this test needs redis-server on this machine (apt-get install redis-server)")
    return {"GRIDOP_REDIS_URL": request.getfixturevalue("redis_url")}


async def test_deleting_a_namespace_with_all_three_kinds_finishes(
    kube: KubeClient, operator: None, namespace: str, resource_node: str, operator_env: dict[str, str],
) -> None:
    redis_url = operator_env["GRIDOP_REDIS_URL"]
    session = yaml.safe_load((ROOT / "examples" / "gridsession.yaml").read_text())
    batch = yaml.safe_load((ROOT / "examples" / "taskbatch.yaml").read_text())
    pool = {"apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": "default"},
            "spec": {"handler": batch["spec"]["handler"], "workers": {"min": 1, "max": 2}}}
    for res, body in ((resources.GRIDSESSIONS, session), (resources.TASKBATCHES, batch), (resources.TASKPOOLS, pool)):
        await kube.create(res, body, namespace)
    batch_name = batch["metadata"]["name"]
    async with AsyncGridConnector({"redis_url": redis_url, "namespace": namespace}) as c:
        await c.send([{"n": i} for i in range(20)], session_id=batch_name)

    async def children() -> bool:
        tb = await kube.get(resources.TASKBATCHES, batch_name, namespace)
        return (await kube.get(resources.JOBS, f"{batch_name}-workers", namespace) is not None
                and await kube.get(resources.DEPLOYMENTS, f"{pool['metadata']['name']}-pool", namespace) is not None
                and "gridop.io/finalizer" in ((tb or {}).get("metadata", {}).get("finalizers") or []))

    await eventually(children, timeout=120, what="the batch's Job, the pool's Deployment and the batch's finalizer")

    await kube.delete(NAMESPACES, namespace)

    async def namespace_gone() -> bool:
        return await kube.get(NAMESPACES, namespace) is None

    await eventually(namespace_gone, timeout=180, what=f"namespace {namespace} deleted")
    plane = aioredis.Redis.from_url(redis_url)
    try:
        assert await plane.keys(f"gridop:{namespace}:{{{batch_name}}}:*") == []
    finally:
        await plane.aclose()
