"""Upgrading gridop under live work: the previous release runs, then the CRDs and the operator move
to this tree the way `helm upgrade` moves them, and nothing that did not need to restarts.

The previous release is the last revision that served and stored only gridop.io/v1alpha1
(GRIDOP_UPGRADE_FROM names another). It runs as real `gridop operator` and `gridop worker`
processes from `git archive`, against the emulator with that revision's own CRDs. The upgrade:
this tree's CRDs are applied (v1beta1 served and stored, TaskBatch converted by the webhook), a
new operator process starts beside the old one and serves the webhook as a standby, the old one
gets SIGTERM and the new one leads. The emulator calls the webhook over TLS for every TaskBatch it
serves at a version it does not hold, as an API server does.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
from typing import Any

import pytest

from bench.localredis import free_port
from bench.rtt_floor import unpack
from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, resources
from gridop.kube.client import Resource
from tests.emulator import ROOT, ApiServer, as_before_v1beta1, register_crds, write_kubeconfig
from tests.processes import ledger, processes

from .conftest import NAMESPACE, Kubelet, eventually, node, seed

PREVIOUS_RELEASE = os.environ.get("GRIDOP_UPGRADE_FROM", "ad393e4")
ALPHA = {kind: Resource("gridop.io", "v1alpha1", plural, kind)
         for kind, plural in (("GridSession", "gridsessions"), ("TaskBatch", "taskbatches"), ("TaskPool", "taskpools"))}
BATCH_TASKS, POOL_TASKS = 120, 40


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"revision {PREVIOUS_RELEASE} is not in this checkout (a shallow clone?): `git fetch --unshallow`")
    return unpack(PREVIOUS_RELEASE, tmp_path_factory.mktemp("previous"))


def _env(kubeconfig: pathlib.Path, code: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
    # `gridop` from `code`; `tests` (the handlers) from this tree, which the old tree also has.
    env.update(KUBECONFIG=str(kubeconfig), PYTHONPATH=f"{code / 'operator'}{os.pathsep}{ROOT}",
               GRIDOP_OPERATOR_NAMESPACE="gridop-system", GRIDOP_METRICS_PORT="0", GRIDOP_LOG_FORMAT="text",
               GRIDOP_LEADER_ELECTION="true", **extra)
    return env


def start(running: list[subprocess.Popen[bytes]], args: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "gridop", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    running.append(proc)
    return proc


async def uids(api: KubeClient) -> dict[str, Any]:
    """Every child the upgrade must leave alone: its uid (and a Deployment's pod template)."""
    found: dict[str, Any] = {}
    for res, name in ((resources.PODS, "live"), (resources.CONFIGMAPS, "live-config"),
                      (resources.SECRETS, "live-token"), (resources.JOBS, "mid-workers"), (resources.DEPLOYMENTS, "default-pool")):
        obj = await api.get(res, name, NAMESPACE)
        found[f"{res.plural}/{name}"] = (obj or {}).get("metadata", {}).get("uid")
        if res is resources.DEPLOYMENTS and obj:
            found["pool pod template"] = obj["spec"]["template"]
    return found


@pytest.mark.timeout(240)
async def test_an_upgrade_under_live_sessions_batches_and_pools_restarts_nothing_and_loses_nothing(
    emulator: ApiServer, api: KubeClient, redis_url: str, previous_release: pathlib.Path, tmp_path: pathlib.Path,
) -> None:
    # The cluster as the previous release left it: its own CRDs, v1alpha1 only.
    as_before_v1beta1(emulator, previous_release / "crds")
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    kubeconfig = write_kubeconfig(emulator, tmp_path / "kubeconfig", NAMESPACE)
    log, batch_ledger, pool_ledger = tmp_path / "processes.log", tmp_path / "batch.ledger", tmp_path / "pool.ledger"
    kubelet = Kubelet(api)

    with processes() as running:
        old = start(running, ["operator"], _env(kubeconfig, previous_release, GRIDOP_REDIS_URL=redis_url,
                                                GRIDOP_POD_NAME="old-0"), log)

        # Live work, written at v1alpha1 as the previous release's users wrote it.
        await api.create(ALPHA["GridSession"], {"apiVersion": "gridop.io/v1alpha1", "kind": "GridSession",
                                                "metadata": {"name": "live"}, "spec": {
                                                    "user": "alice", "node": "worker-1",
                                                    "config": {"airgen": {"sim": "city"}, "grid": {"mode": "interactive"}}}},
                         NAMESPACE)
        await eventually(lambda: api.get(resources.PODS, "live", NAMESPACE), timeout=30, what="the session's pod")
        await kubelet.run("live", "worker-1", "172.18.0.3")
        await eventually(lambda: _phase(api, ALPHA["GridSession"], "live", "Running"), timeout=30, what="session Running")
        lease = {"attach.gridop.io/alice-laptop": '{"mode": "interactive", "expires": "2099-01-01T00:00:00Z"}'}
        await api.patch(ALPHA["GridSession"], "live", {"metadata": {"annotations": lease}}, NAMESPACE)

        await api.create(ALPHA["TaskBatch"], {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch",
                                              "metadata": {"name": "mid"}, "spec": {
                                                  "handler": "tests.dataplane.handlers:ledger", "workers": {"max": 2},
                                                  "retry": {"maxRetries": 2, "backoffSeconds": 0.25, "onError": "Retry"}}},
                         NAMESPACE)
        await api.create(ALPHA["TaskPool"], {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskPool",
                                             "metadata": {"name": "default"},
                                             "spec": {"handler": "tests.dataplane.handlers:ledger", "workers": {"min": 1}}},
                         NAMESPACE)
        async with AsyncGridConnector({"redis_url": redis_url, "namespace": NAMESPACE}) as c:
            await c.send([{"n": i, "seconds": 0.03} for i in range(BATCH_TASKS)], session_id="mid")
            await c.send([{"n": 1000 + i} for i in range(POOL_TASKS)])  # to the pool named default: nobody serves it yet
        await eventually(lambda: api.get(resources.JOBS, "mid-workers", NAMESPACE), timeout=30, what="the batch's Job")
        await eventually(lambda: api.get(resources.DEPLOYMENTS, "default-pool", NAMESPACE), timeout=30, what="the pool's Deployment")
        # The batch's worker pod, as the previous release's image runs it: it keeps running through the upgrade.
        start(running, ["worker", "--session", "mid", "--handler", "tests.dataplane.handlers:ledger"],
              _env(kubeconfig, previous_release, GRIDOP_REDIS_URL=redis_url, GRIDOP_KEY_PREFIX=f"gridop:{NAMESPACE}",
                   GRIDOP_TEST_LEDGER=str(batch_ledger)), log)
        await eventually(lambda: len(ledger(batch_ledger)) >= 10, timeout=30, what="the batch under way")
        before = await uids(api)
        assert all(before.values()), before

        # The upgrade, in helm's order: the CRDs, then the operator's Deployment rolls.
        register_crds(emulator, ROOT / "crds")
        port = free_port()
        emulator.webhook_endpoint = f"127.0.0.1:{port}"
        start(running, ["operator"], _env(kubeconfig, ROOT, GRIDOP_REDIS_URL=redis_url, GRIDOP_POD_NAME="new-0",
                                          GRIDOP_WEBHOOK="true", GRIDOP_WEBHOOK_PORT=str(port)), log)
        await eventually(lambda: emulator.crd_object("taskbatches.gridop.io")["spec"]["conversion"]["webhook"]["clientConfig"]
                         .get("caBundle"), timeout=30, what="the new operator's CA in the CRD")
        # Both releases running side by side: the old one still leads, at v1alpha1.
        assert (await api.get(ALPHA["TaskBatch"], "mid", NAMESPACE))["spec"]["retry"]["backoffSeconds"] == 0.25
        old.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.wait, 30) == 0
        await eventually(lambda: _holder_is(api, "new-0"), timeout=15, what="the new operator leads")

        # The batch finishes under the new operator: every task ran exactly once.
        done = await eventually(lambda: _phase(api, resources.TASKBATCHES, "mid", "Succeeded"), timeout=90,
                                what=f"the batch Succeeded ({len(ledger(batch_ledger))} tasks run; log {log})")
        assert done["status"]["counts"]["finished"] == BATCH_TASKS
        assert sorted(ledger(batch_ledger)) == list(range(BATCH_TASKS))
        # The pool's queued work, served by a worker of the new release: each task once.
        start(running, ["worker", "--pool", "default", "--handler", "tests.dataplane.handlers:ledger"],
              _env(kubeconfig, ROOT, GRIDOP_REDIS_URL=redis_url, GRIDOP_KEY_PREFIX=f"gridop:{NAMESPACE}",
                   GRIDOP_TEST_LEDGER=str(pool_ledger)), log)
        await eventually(lambda: len(ledger(pool_ledger)) >= POOL_TASKS, timeout=60, what="the pool's tasks run")
        await asyncio.sleep(1)
        assert sorted(ledger(pool_ledger)) == [1000 + i for i in range(POOL_TASKS)]

        # Nothing that did not need to restart did: same pod, Service, ConfigMap, Secret, Job and
        # Deployment, and the Deployment's pod template untouched (no rollout of the pool).
        assert await uids(api) == before
        session = await _phase(api, resources.GRIDSESSIONS, "live", "Running")
        assert session, "the session is no longer Running"
        assert [a["client"] for a in session["status"].get("attachedClients", [])] == ["alice-laptop"]

        # Everything is stored at v1beta1 now, and the CRDs say so: v1alpha1 can go in a later release.
        def migrated() -> bool:
            return all(emulator.crd_object(f"{p}.gridop.io")["status"]["storedVersions"] == ["v1beta1"]
                       for p in ("gridsessions", "taskbatches", "taskpools"))
        await eventually(migrated, timeout=30, what="storedVersions trimmed")
        assert {v for k, v in emulator.encoded.items() if k[0] == "gridop.io"} == {"v1beta1"}
        # and v1alpha1 still reads back exactly what its users applied.
        alpha = await api.get(ALPHA["TaskBatch"], "mid", NAMESPACE)
        assert alpha["spec"]["retry"] == {"maxRetries": 2, "backoffSeconds": 0.25, "onError": "Retry",
                                          "maxInfrastructureRetries": 3, "backoffMultiplier": 2, "backoffMaxSeconds": 60} \
            or {k: alpha["spec"]["retry"][k] for k in ("maxRetries", "backoffSeconds", "onError")} == \
            {"maxRetries": 2, "backoffSeconds": 0.25, "onError": "Retry"}
        assert emulator.conversions > 0


async def _phase(api: KubeClient, res: Resource, name: str, phase: str) -> dict[str, Any] | None:
    obj = await api.get(res, name, NAMESPACE)
    return obj if ((obj or {}).get("status") or {}).get("phase") == phase else None


async def _holder_is(api: KubeClient, name: str) -> bool:
    lease = await api.get(resources.LEASES, "gridop-operator", "gridop-system")
    return ((lease or {}).get("spec") or {}).get("holderIdentity") == name
