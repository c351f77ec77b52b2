"""End-to-end tests against a real cluster: run only when KUBECONFIG points to one.

What they do to the cluster: apply crds/ (server-side apply; left installed), create a
namespace `gridop-e2e-<random>` (deleted afterwards), and label one schedulable node
`gridop.io/resource-node=true` if none is labelled yet (the label is removed afterwards).
They run `gridop operator` as a subprocess watching only that namespace; set
GRIDOP_E2E_EXTERNAL_OPERATOR=1 to test an operator that is already installed (e.g. `make up`).
The TaskBatch test gives the operator it runs the suite's redis-server on this machine (it is skipped
with an external operator, whose data plane it cannot reach).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml

from gridop.kube import KubeClient, load_cluster_access, resources
from tests.waiting import eventually as _eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESOURCE_LABEL = "gridop.io/resource-node"


async def eventually(check: Callable[[], Any], timeout: float, what: str = "") -> Any:
    """Real clusters are slow: poll once a second."""
    return await _eventually(check, timeout=timeout, interval=1.0, what=what)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KUBECONFIG"):
        return
    skip = pytest.mark.skip(reason="e2e: KUBECONFIG is not set; point it at a real cluster (e.g. `make up`) to run")
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
async def kube() -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(load_cluster_access())
    yield client
    await client.close()


@pytest.fixture
async def crds(kube: KubeClient) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        await kube.apply(resources.CRDS, crd, field_manager="gridop-e2e")

        async def established(name: str = crd["metadata"]["name"]) -> bool:
            obj = await kube.get(resources.CRDS, name)
            conds = (obj or {}).get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        await eventually(established, timeout=60, what=f"CRD {crd['metadata']['name']} established")


@pytest.fixture
async def namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = f"gridop-e2e-{uuid.uuid4().hex[:6]}"
    ns_res = resources.Resource("", "v1", "namespaces", "Namespace", namespaced=False)
    await kube.create(ns_res, {"metadata": {"name": name, "labels": {"gridop.io/e2e": "true"}}})
    yield name
    await kube.delete(ns_res, name)


@pytest.fixture
async def resource_node(kube: KubeClient) -> AsyncIterator[str]:
    """A node labelled as a resource node (labelling one, temporarily, when none is)."""
    nodes = await kube.list(resources.NODES)
    labelled = [n for n in nodes if (n["metadata"].get("labels") or {}).get(RESOURCE_LABEL) == "true"]
    if labelled:
        yield labelled[0]["metadata"]["name"]
        return

    def schedulable(n: dict[str, Any]) -> bool:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        tainted = any(t.get("effect") in ("NoSchedule", "NoExecute") for t in n.get("spec", {}).get("taints") or [])
        return ready and not tainted and not n.get("spec", {}).get("unschedulable")

    candidates = [n for n in nodes if schedulable(n)]
    if not candidates:
        pytest.fail("e2e: the cluster has no ready, untainted node to run a session on")
    name = candidates[0]["metadata"]["name"]
    await kube.patch(resources.NODES, name, {"metadata": {"labels": {RESOURCE_LABEL: "true"}}})
    yield name
    await kube.patch(resources.NODES, name, {"metadata": {"labels": {RESOURCE_LABEL: None}}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def operator_env() -> dict[str, str]:
    """Settings a test module gives the operator this suite runs (GRIDOP_* variables)."""
    return {}


@pytest.fixture
async def operator(crds: None, namespace: str, operator_env: dict[str, str]) -> AsyncIterator[None]:
    if os.environ.get("GRIDOP_E2E_EXTERNAL_OPERATOR"):
        yield
        return
    env = {
        **os.environ,
        "GRIDOP_OPERATOR_NAMESPACE": namespace,
        "GRIDOP_METRICS_PORT": str(_free_port()),
        "GRIDOP_LOG_FORMAT": "text",
        "GRIDOP_RESYNC_SECONDS": "10",
        **operator_env,
    }
    log_path = pathlib.Path(tempfile.gettempdir()) / f"gridop-operator-{namespace}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridop", "operator", "--namespace", namespace],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    await asyncio.sleep(3)
    assert proc.poll() is None, f"gridop operator exited at start-up; see {log_path}"
    yield
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    print(f"operator log: {log_path}")
