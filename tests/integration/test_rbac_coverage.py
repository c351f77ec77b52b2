"""The operator's RBAC is what its code does: every request it makes is granted by the chart, and
the chart grants nothing it never asks for (but the few rights named below, with why).

The operator runs every kind through its life against the emulator, which records each request by
User-Agent: a GridSession started, stopped by its lifetime and deleted by its TTL; a TaskBatch
submitted, run, finished and deleted by its TTL (its finalizer taken off); a TaskPool scaled;
leader election on. The chart is rendered with its defaults (cluster scope).
"""

from __future__ import annotations

import asyncio

import pytest

from bench.localredis import free_port
from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, resources
from gridop.settings import Settings
from gridop.tasks.store import TaskStore, key_prefix
from gridop.tasks.worker import Worker
from tests.chart.test_chart import _rules, by_kind, render
from tests.dataplane import handlers

from .conftest import NAMESPACE, eventually, gridsession

OPERATOR = "gridop-operator"
VERBS = {"FETCH": "get", "LIST": "list", "WATCH": "watch", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}
GROUPS = {"gridsessions": "gridop.io", "taskbatches": "gridop.io", "taskpools": "gridop.io", "jobs": "batch",
          "deployments": "apps", "leases": "coordination.k8s.io", "customresourcedefinitions": "apiextensions.k8s.io"}
# Granted, though this run does not ask for them.
NOT_EXERCISED = {
    ("", "pods", "get"): "a pod create that finds the name taken reads it once (another writer won)",
    ("gridop.io", "gridsessions/finalizers", "update"): "blockOwnerDeletion under OwnerReferencesPermissionEnforcement",
    ("gridop.io", "taskbatches/finalizers", "update"): "blockOwnerDeletion under OwnerReferencesPermissionEnforcement",
    ("gridop.io", "taskpools/finalizers", "update"): "blockOwnerDeletion under OwnerReferencesPermissionEnforcement",
    ("", "configmaps", "patch"): "a session's configuration changed (and the public signing keys rotated)",
    ("", "services", "patch"): "a session's ports changed",
    ("", "secrets", "patch"): "a session's token renewed; a namespace's data-plane credentials changed; "
                              "the webhook's certificate renewed",
    ("apiextensions.k8s.io", "customresourcedefinitions/status", "patch"):
        "storedVersions trimmed after an upgrade (tests/integration/test_upgrade.py runs it)",
    ("gridop.io", "taskpools", "patch"): "a pool left with an earlier gridop's finalizer, let go on deletion",
    ("gridop.io", "gridsessions", "patch"): "lapsed attachments pruned; an earlier gridop's finalizer taken off",
    ("coordination.k8s.io", "leases", "patch"): "the leader's renewals (every 5 s) and its release on stop",
}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(operator_namespace="gridop-system", log_format="text", redis_url=redis_url, leader_election=True,
                    resync_seconds=5.0, batch_status_interval_seconds=0.2, pod_name="op-0",
                    webhook=True, webhook_port=free_port())  # the webhook's certificate and CA injection too


def granted() -> set[tuple[str, str, str]]:
    docs = render()
    roles = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "gridop-cluster"]
    roles += [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "gridop-self"]
    assert len(roles) == 2
    return set().union(*(_rules(r) for r in roles))


def used(emulator) -> set[tuple[str, str, str]]:
    out = set()
    for (agent, action, plural), n in emulator.counts.items():
        if agent == OPERATOR and n:
            out.add((GROUPS.get(plural.split("/")[0], ""), plural, VERBS[action]))
    return out


@pytest.mark.timeout(120)
async def test_the_chart_grants_what_the_operator_uses_and_no_more(
    emulator, operator, api: KubeClient, auto_kubelet, redis_url: str,
) -> None:
    # A session: started, stopped by its lifetime, deleted by its TTL.
    ports = [{"name": "http", "containerPort": 8080}]
    await api.create(resources.GRIDSESSIONS, gridsession(
        "short", node="worker-1", workload={"ports": ports}, maxLifetimeSeconds=2, ttlSecondsAfterStopped=1), NAMESPACE)
    # A batch: run to the end, then deleted by its TTL.
    await api.create(resources.TASKBATCHES, {
        "apiVersion": "gridop.io/v1beta1", "kind": "TaskBatch", "metadata": {"name": "tb"},
        "spec": {"handler": "tests.dataplane.handlers:echo", "ttlSecondsAfterFinished": 1}}, NAMESPACE)
    # A pool with work: its Deployment made and scaled.
    await api.create(resources.TASKPOOLS, {
        "apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": "default"},
        "spec": {"handler": "tests.dataplane.handlers:echo", "workers": {"min": 0, "max": 2, "tasksPerWorker": 5}}},
        NAMESPACE)
    async with AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE}) as client:
        await client.send([{"n": i} for i in range(5)], session_id="tb")
        await client.send([{"worker_arguments": ["1"]} for _ in range(10)])  # to the pool
    await eventually(lambda: api.get(resources.JOBS, "tb-workers", NAMESPACE))
    store = TaskStore.from_url(redis_url, prefix=key_prefix(NAMESPACE))
    try:
        await Worker(store, "tb", handlers.echo, heartbeat_seconds=0.2, lease_seconds=2).run()
    finally:
        await store.close()

    async def gone(res: object, name: str) -> bool:
        return await api.get(res, name, NAMESPACE) is None  # type: ignore[arg-type]

    await eventually(lambda: gone(resources.TASKBATCHES, "tb"), timeout=30, what="the batch deleted by its TTL")
    await eventually(lambda: gone(resources.GRIDSESSIONS, "short"), timeout=30, what="the session deleted by its TTL")

    async def scaled() -> bool:
        dep = await api.get(resources.DEPLOYMENTS, "default-pool", NAMESPACE)
        return dep is not None and dep["spec"]["replicas"] == 2

    await eventually(scaled, timeout=30)
    await asyncio.sleep(1)

    have, asked = granted(), used(emulator)
    assert asked <= have, f"the operator asked for what the chart does not grant: {sorted(asked - have)}"
    unused = have - asked - set(NOT_EXERCISED)
    assert not unused, f"the chart grants what the operator never asked for: {sorted(unused)}"
