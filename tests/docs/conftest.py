"""The documented paths, run as a user runs them: the real operator (on the emulator, playing the
cluster), a real redis-server, real `gridop worker` processes playing the pods the operator asks
for, and each snippet in a subprocess with the installed entry points, in a fresh directory."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import yaml

from gridop.kube import KubeClient, resources
from gridop.settings import Settings
from tests.integration.conftest import api, emulator, node, operator, seed  # noqa: F401 (fixtures)

from .snippets import ROOT, fresh_dir

#: What `make up` creates (kind-config.yaml): two worker nodes labelled as resource nodes.
NODES = {"gridop-worker": "172.18.0.3", "gridop-worker2": "172.18.0.4"}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(namespace="gridop-system", resync_seconds=5.0, log_format="text", redis_url=redis_url,
                    batch_status_interval_seconds=0.2)


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    return fresh_dir(tmp_path)


@pytest.fixture
def kubeconfig(tmp_path: pathlib.Path, emulator: kmock.KubernetesEmulator) -> pathlib.Path:  # noqa: F811
    """What `kind create cluster` leaves a user: a kubeconfig whose context's namespace is `default`."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kind-gridop",
        "clusters": [{"name": "kind-gridop", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "kind-gridop", "user": {"token": "dev-token"}}],
        "contexts": [{"name": "kind-gridop", "context": {"cluster": "kind-gridop", "user": "kind-gridop"}}],
    }))
    return path


@pytest.fixture
async def kind_nodes(emulator: kmock.KubernetesEmulator, api: KubeClient) -> AsyncIterator[None]:  # noqa: F811
    """The kind cluster's resource nodes, and a kubelet that runs each new pod on the node it is pinned to."""
    for name, ip in NODES.items():
        seed(emulator, "v1/nodes", node(name, ip, {"gridop.io/resource-node": "true"}))

    async def kubelet() -> None:
        while True:
            for pod in await api.list(resources.PODS):
                spec, meta = pod.get("spec", {}), pod["metadata"]
                if (pod.get("status") or {}).get("phase") == "Running" or meta.get("deletionTimestamp"):
                    continue
                name = spec.get("nodeName") or next(
                    (t["matchFields"][0]["values"][0] for t in spec.get("affinity", {}).get("nodeAffinity", {})
                     .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
                     if t.get("matchFields")), "gridop-worker")
                await api.patch(resources.PODS, meta["name"], {"spec": {"nodeName": name}}, meta["namespace"])
                await api.patch(resources.PODS, meta["name"], {"status": {
                    "phase": "Running", "hostIP": NODES.get(name, "172.18.0.3"), "podIP": "10.244.1.7",
                    "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                }}, meta["namespace"], subresource="status")
            await asyncio.sleep(0.05)

    task = asyncio.create_task(kubelet())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def worker_env(api: KubeClient, namespace: str, deployment: str) -> dict[str, str]:  # noqa: F811
    """The environment the Deployment's pods get: its values, and its Secret references resolved."""
    dep = await api.get(resources.DEPLOYMENTS, deployment, namespace)
    assert dep is not None, f"no Deployment {namespace}/{deployment}"
    env: dict[str, str] = {}
    for item in dep["spec"]["template"]["spec"]["containers"][0].get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = await api.get(resources.SECRETS, ref["name"], namespace)
            assert secret is not None, f"the Deployment reads Secret {ref['name']}, which does not exist"
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def pods_as_processes(env: dict[str, str], count: int) -> list[subprocess.Popen[bytes]]:
    """The Deployment's pods: `gridop worker` (the container's args) with the pod's environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
    return [subprocess.Popen([sys.executable, "-m", "gridop", "worker"], cwd=ROOT, stdin=subprocess.DEVNULL,
                             # pods have a network of their own each; processes on one machine share one,
                             # so the pods' metrics port is left unserved here
                             env={**base, **env, "GRIDOP_METRICS_PORT": "0", "GRIDOP_LOG_LEVEL": "WARNING",
                                  "PYTHONPATH": str(ROOT)})
            for _ in range(count)]


async def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        await asyncio.to_thread(w.wait, 30)


def load_yaml(path: pathlib.Path | str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
