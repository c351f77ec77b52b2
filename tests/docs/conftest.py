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
    return Settings(operator_namespace="gridop-system", resync_seconds=5.0, log_format="text", redis_url=redis_url,
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


async def pod_env(api: KubeClient, namespace: str, template: dict[str, Any]) -> dict[str, str]:  # noqa: F811
    """The environment a pod of this template gets: its values, and its Secret references resolved."""
    env: dict[str, str] = {}
    for item in template["spec"]["containers"][0].get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = await api.get(resources.SECRETS, ref["name"], namespace)
            assert secret is not None, f"the pods read Secret {ref['name']}, which does not exist"
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def pod_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A pod of gridop's worker image: `gridop worker` (the container's args) with the pod's environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
    # Pods have a network of their own each; processes on one machine share one, so the pods'
    # metrics port is left unserved here.
    return subprocess.Popen([sys.executable, "-m", "gridop", "worker"], cwd=ROOT, stdin=subprocess.DEVNULL,
                            env={**base, **env, "GRIDOP_METRICS_PORT": "0", "GRIDOP_LOG_LEVEL": "WARNING",
                                 "PYTHONPATH": str(ROOT)})


class Pods(dict[str, list[subprocess.Popen[bytes]]]):
    """Workload key -> its running worker processes; `peak` keeps the most each ever had at once
    (a pool scales back down as soon as its queue is empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak: dict[str, int] = {}


@pytest.fixture
async def worker_pods(api: KubeClient) -> AsyncIterator[Pods]:  # noqa: F811
    """Plays the scheduler and kubelet for the operator's worker Jobs and Deployments: keeps as many
    local `gridop worker` processes running per workload as it asks for (Job parallelism, Deployment
    replicas), each with its pods' environment."""
    running = Pods()

    async def play() -> None:
        while True:
            wanted: dict[str, tuple[int, str, dict[str, Any]]] = {}
            for res, field in ((resources.JOBS, "parallelism"), (resources.DEPLOYMENTS, "replicas")):
                for obj in await api.list(res):
                    meta = obj["metadata"]
                    key = f"{res.plural}/{meta['namespace']}/{meta['name']}"
                    wanted[key] = (int(obj["spec"].get(field) or 0), meta["namespace"], obj["spec"]["template"])
            for key in set(running) | set(wanted):
                count, namespace, template = wanted.get(key, (0, "", {}))
                procs = [p for p in running.get(key, []) if p.poll() is None or key.startswith("jobs/")]
                while len(procs) < count:
                    procs.append(pod_process(await pod_env(api, namespace, template)))
                for extra in procs[count:] if not key.startswith("jobs/") else []:
                    extra.terminate()
                running[key] = procs[:count] if not key.startswith("jobs/") else procs
                running.peak[key] = max(running.peak.get(key, 0), len([p for p in running[key] if p.poll() is None]))
            await asyncio.sleep(0.2)

    task = asyncio.create_task(play())
    yield running
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    everyone = [p for procs in running.values() for p in procs]
    for p in everyone:
        if p.poll() is None:
            p.terminate()
    for p in everyone:
        await asyncio.to_thread(p.wait, 30)


async def applied(api: KubeClient, res: resources.Resource, obj: dict[str, Any],  # noqa: F811
                  namespace: str = "default") -> str:
    """`kubectl apply` of a TaskBatch or TaskPool; once the operator has written the namespace's
    data-plane Secret, the URL in it (what the docs have a user export as GRIDOP_REDIS_URL)."""
    from tests.waiting import eventually

    await api.create(res, obj, namespace)
    secret = await eventually(lambda: api.get(resources.SECRETS, "gridop-data-plane", namespace))
    return base64.b64decode(secret["data"]["url"]).decode()


def load_yaml(path: pathlib.Path | str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
