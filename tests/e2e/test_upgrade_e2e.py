"""The upgrade under live work, on a real API server (tests/integration/test_upgrade.py is the same on
the emulator): the previous release's CRDs and operator, then this release's, with the API server
calling the new operator's conversion webhook over TLS.

Opt-in, because it replaces gridop's CRDs (deleting them deletes every GridSession, TaskBatch and
TaskPool in the cluster; run it on a cluster of its own):

- GRIDOP_E2E_UPGRADE=1;
- GRIDOP_E2E_WEBHOOK_ADDRESS=<an IP of this machine the API server can reach> (on kind, the
  docker network's gateway, e.g. 172.18.0.1): the operators run here, and the webhook's Service
  (no selector) sends the API server to that address;
- the previous release's revision in this checkout (GRIDOP_UPGRADE_FROM, default as in the
  integration test), and redis-server on this machine (the operators' data plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest
import yaml

from bench.localredis import free_port
from bench.rtt_floor import unpack
from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, resources
from gridop.kube.client import Resource
from gridop.kube.migration import migrate
from tests.processes import ledger, processes

from .conftest import ROOT, eventually

PREVIOUS_RELEASE = os.environ.get("GRIDOP_UPGRADE_FROM", "ad393e4")
ALPHA = {kind: Resource("gridop.io", "v1alpha1", plural, kind)
         for kind, plural in (("GridSession", "gridsessions"), ("TaskBatch", "taskbatches"), ("TaskPool", "taskpools"))}
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
KINDS = ("gridsessions", "taskbatches", "taskpools")
BATCH_TASKS, POOL_TASKS = 60, 20


@pytest.fixture
def upgrade_setup(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    if not os.environ.get("GRIDOP_E2E_UPGRADE"):
        pytest.skip("e2e upgrade: set GRIDOP_E2E_UPGRADE=1 (it replaces gridop's CRDs: a cluster of its own)")
    if os.environ.get("GRIDOP_E2E_EXTERNAL_OPERATOR"):
        pytest.skip("e2e upgrade: runs both releases' operators itself; unset GRIDOP_E2E_EXTERNAL_OPERATOR")
    address = os.environ.get("GRIDOP_E2E_WEBHOOK_ADDRESS")
    if not address:
        pytest.skip("e2e upgrade: set GRIDOP_E2E_WEBHOOK_ADDRESS to an IP of this machine the API server reaches")
    if shutil.which("redis-server") is None:
        pytest.skip("e2e upgrade: needs redis-server on this machine (apt-get install redis-server)")
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"e2e upgrade: revision {PREVIOUS_RELEASE} is not in this checkout: `git fetch --unshallow`")
    return unpack(PREVIOUS_RELEASE, tmp_path), address, request.getfixturevalue("redis_url")


async def apply_crds(kube: KubeClient, directory: pathlib.Path, webhook_namespace: str | None = None) -> None:
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        service = ((crd["spec"].get("conversion") or {}).get("webhook") or {}).get("clientConfig", {}).get("service")
        if service is not None and webhook_namespace:
            service["namespace"] = webhook_namespace
        await kube.apply(resources.CRDS, crd, field_manager="gridop-e2e")

        async def established(name: str = crd["metadata"]["name"]) -> bool:
            obj = await kube.get(resources.CRDS, name)
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in ((obj or {}).get("status") or {}).get("conditions") or [])

        await eventually(established, timeout=60, what=f"CRD {crd['metadata']['name']} established")


def start(running: list[subprocess.Popen[bytes]], code: pathlib.Path, args: list[str], log: pathlib.Path,
          **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
    environ.update(PYTHONPATH=f"{code / 'operator'}{os.pathsep}{ROOT}", GRIDOP_METRICS_PORT="0", GRIDOP_LOG_FORMAT="text",
                   **env)
    proc = subprocess.Popen([sys.executable, "-m", "gridop", *args], env=environ, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    running.append(proc)
    return proc


async def children(kube: KubeClient, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for res, name in ((resources.PODS, "live"), (resources.CONFIGMAPS, "live-config"), (resources.SECRETS, "live-token"),
                      (resources.JOBS, "mid-workers"), (resources.DEPLOYMENTS, "default-pool")):
        obj = await kube.get(res, name, namespace)
        found[f"{res.plural}/{name}"] = (obj or {}).get("metadata", {}).get("uid")
        if res is resources.DEPLOYMENTS and obj:
            found["pool pod template"] = obj["spec"]["template"]
    return found


async def phase(kube: KubeClient, res: Resource, name: str, namespace: str, want: str) -> dict[str, Any] | None:
    obj = await kube.get(res, name, namespace)
    return obj if ((obj or {}).get("status") or {}).get("phase") == want else None


@pytest.mark.timeout(900)
async def test_an_upgrade_on_a_real_api_server_converts_migrates_and_restarts_nothing(
    kube: KubeClient, namespace: str, resource_node: str, upgrade_setup: tuple[pathlib.Path, str, str],
    tmp_path: pathlib.Path,
) -> None:
    previous, address, redis_url = upgrade_setup
    # The cluster as the previous release leaves it.
    for kind in KINDS:
        with contextlib.suppress(Exception):
            await kube.delete(resources.CRDS, f"{kind}.gridop.io")
        await eventually(lambda k=kind: _gone(kube, f"{k}.gridop.io"), timeout=120, what=f"CRD {kind} deleted")
    await apply_crds(kube, previous / "crds")
    log, batch_ledger, pool_ledger = tmp_path / "processes.log", tmp_path / "batch.ledger", tmp_path / "pool.ledger"
    common = {"GRIDOP_OPERATOR_NAMESPACE": namespace, "GRIDOP_REDIS_URL": redis_url, "GRIDOP_LEADER_ELECTION": "true",
              "KUBECONFIG": os.environ["KUBECONFIG"]}
    with processes() as running:
        old = start(running, previous, ["operator", "--namespace", namespace], log, GRIDOP_POD_NAME="old-0", **common)
        await kube.create(ALPHA["GridSession"], {"apiVersion": "gridop.io/v1alpha1", "kind": "GridSession",
                                                 "metadata": {"name": "live"}, "spec": {
                                                     "user": "alice", "node": resource_node,
                                                     "config": {"airgen": {}, "grid": {}}}}, namespace)
        await eventually(lambda: phase(kube, ALPHA["GridSession"], "live", namespace, "Running"), timeout=180,
                         what=f"the session Running (log {log})")
        lease = {"attach.gridop.io/alice-laptop": '{"mode": "interactive", "expires": "2099-01-01T00:00:00Z"}'}
        await kube.patch(ALPHA["GridSession"], "live", {"metadata": {"annotations": lease}}, namespace)
        await kube.create(ALPHA["TaskBatch"], {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": "mid"},
                                               "spec": {"handler": "tests.dataplane.handlers:ledger", "workers": {"max": 1},
                                                        "retry": {"backoffSeconds": 0.0004, "onError": "Retry"}}}, namespace)
        await kube.create(ALPHA["TaskPool"], {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskPool", "metadata": {"name": "default"},
                                              "spec": {"handler": "tests.dataplane.handlers:ledger"}}, namespace)
        async with AsyncGridConnector({"redis_url": redis_url, "namespace": namespace}) as c:
            await c.send([{"n": i, "seconds": 0.1} for i in range(BATCH_TASKS)], session_id="mid")
            await c.send([{"n": 1000 + i} for i in range(POOL_TASKS)])
        await eventually(lambda: kube.get(resources.JOBS, "mid-workers", namespace), timeout=60, what="the batch's Job")
        await eventually(lambda: kube.get(resources.DEPLOYMENTS, "default-pool", namespace), timeout=60, what="the pool's Deployment")
        start(running, previous, ["worker", "--session", "mid", "--handler", "tests.dataplane.handlers:ledger"], log,
              GRIDOP_REDIS_URL=redis_url, GRIDOP_KEY_PREFIX=f"gridop:{namespace}", GRIDOP_TEST_LEDGER=str(batch_ledger))
        await eventually(lambda: len(ledger(batch_ledger)) >= 5, timeout=60, what="the batch under way")
        before = await children(kube, namespace)

        # The webhook's Service, sent to this machine; this release's CRDs calling it; the new operator.
        port = free_port()
        await kube.create(resources.SERVICES, {"metadata": {"name": "gridop-webhook"},
                                               "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}}, namespace)
        await kube.create(ENDPOINTS, {"metadata": {"name": "gridop-webhook"}, "subsets": [
            {"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port}]}]}, namespace)
        await apply_crds(kube, ROOT / "crds", webhook_namespace=namespace)
        start(running, ROOT, ["operator", "--namespace", namespace], log, GRIDOP_POD_NAME="new-0", GRIDOP_WEBHOOK="true",
              GRIDOP_WEBHOOK_PORT=str(port), **common)

        async def injected() -> bool:
            crd = await kube.get(resources.CRDS, "taskbatches.gridop.io")
            return bool((crd or {}).get("spec", {}).get("conversion", {}).get("webhook", {}).get("clientConfig", {}).get("caBundle"))

        await eventually(injected, timeout=60, what="the webhook's CA in the CRD")
        # The API server converts through the webhook: the batch, stored at v1alpha1, read at v1beta1.
        beta = await eventually(lambda: kube.get(resources.TASKBATCHES, "mid", namespace), timeout=60, what="a v1beta1 read")
        assert beta["spec"]["onError"] == "Retry" and beta["spec"]["retry"]["backoffMilliseconds"] == 0
        old.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.wait, 60) == 0

        done = await eventually(lambda: phase(kube, resources.TASKBATCHES, "mid", namespace, "Succeeded"), timeout=300,
                                what=f"the batch Succeeded (log {log})")
        assert done["status"]["counts"]["finished"] == BATCH_TASKS
        assert sorted(ledger(batch_ledger)) == list(range(BATCH_TASKS))
        start(running, ROOT, ["worker", "--pool", "default", "--handler", "tests.dataplane.handlers:ledger"], log,
              GRIDOP_REDIS_URL=redis_url, GRIDOP_KEY_PREFIX=f"gridop:{namespace}", GRIDOP_TEST_LEDGER=str(pool_ledger))
        await eventually(lambda: len(ledger(pool_ledger)) >= POOL_TASKS, timeout=120, what="the pool's tasks run")
        await asyncio.sleep(2)
        assert sorted(ledger(pool_ledger)) == [1000 + i for i in range(POOL_TASKS)]
        assert await children(kube, namespace) == before
        session = await phase(kube, resources.GRIDSESSIONS, "live", namespace, "Running")
        assert session and [a["client"] for a in session["status"].get("attachedClients", [])] == ["alice-laptop"]

        # Storage migration, as an operator watching the whole cluster runs it (this one watches a
        # namespace, so it leaves the CRDs alone): every object rewritten, storedVersions trimmed.
        for res in (resources.GRIDSESSIONS, resources.TASKBATCHES, resources.TASKPOOLS):
            await migrate(kube, res)
            crd = await kube.get(resources.CRDS, f"{res.plural}.gridop.io")
            assert crd["status"]["storedVersions"] == ["v1beta1"]
        alpha = await kube.get(ALPHA["TaskBatch"], "mid", namespace)
        assert (alpha["spec"]["retry"]["backoffSeconds"], alpha["spec"]["retry"]["onError"]) == (0.0004, "Retry")


async def _gone(kube: KubeClient, name: str) -> bool:
    return await kube.get(resources.CRDS, name) is None
