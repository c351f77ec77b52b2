"""The real operator (kopf, in-process) against the kmock Kubernetes API emulator.

The emulator stores objects and serves watches, but has no scheduler, kubelet or garbage
collector: tests play those parts (bind and start pods, report nodes) and assert end states.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from kmock._internal.k8s_views import _parse_resource

from gridop.kube import ClusterAccess, KubeClient
from gridop.operator_main import run_operator
from gridop.settings import Settings
from tests.emulator import ApiServer, register_crds, rv
from tests.waiting import eventually  # noqa: F401  (re-exported for the tests)

NAMESPACE = "grid"
_announcing: set[asyncio.Task[None]] = set()  # seeded objects' watch events on their way
_stopping: set[asyncio.Task[None]] = set()  # in-process operators told to stop


@pytest.fixture
async def emulator() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with ApiServer() as emu, kmock.Server(emu):
        emu.resources.load_bundled()
        register_crds(emu)
        yield emu
        if _stopping:  # operators still winding down (see the operator fixture): they end first
            await asyncio.wait(list(_stopping), timeout=20)
            _stopping.clear()


@pytest.fixture
def settings() -> Settings:
    return Settings(operator_namespace="gridop-system", resync_seconds=5.0, log_format="text")


@pytest.fixture
async def api(emulator: kmock.KubernetesEmulator) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE))
    yield client
    await client.close()


@pytest.fixture
async def operator(emulator: kmock.KubernetesEmulator, settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """Run `gridop operator` in this event loop until the test ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    task = asyncio.create_task(run_operator(settings, access, stop_flag=stop, ready_flag=ready, serve_metrics=False))
    done, _ = await asyncio.wait([task, asyncio.create_task(ready.wait())], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # surface the start-up error
    assert ready.is_set(), "operator did not become ready"
    yield task
    stop.set()
    # kopf's wind-down cancels every task it finds that started after it did, this teardown's
    # among them, and waits for each to end. Awaiting the operator itself here would then wait
    # for a kopf that waits for us: so the wait is shielded, a cancelled teardown simply ends, and
    # the emulator's teardown (a task kopf never saw) waits for the operator to finish.
    _stopping.add(task)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), timeout=20)


def seed(emulator: kmock.KubernetesEmulator, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Put an object into the emulator as if it had always existed (while the test runs: as if it
    had just been created, so watchers hear of it as they would from an API server)."""
    meta = obj.setdefault("metadata", {})
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("resourceVersion", rv())
    meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    emulator.objects[resource, meta.get("namespace"), meta["name"]] = obj
    with contextlib.suppress(RuntimeError):  # no running loop: nobody is watching yet
        loop = asyncio.get_running_loop()
        bus = emulator._buses[_parse_resource(resource)]
        _announcing.add(task := loop.create_task(
            bus.put({"type": "ADDED", "object": emulator.objects[resource, meta.get("namespace"), meta["name"]].raw})))
        task.add_done_callback(_announcing.discard)
    return obj


def node(name: str, ip: str, labels: dict[str, str] | None = None, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def gridsession(name: str, **spec: Any) -> dict[str, Any]:
    """A GridSession as `kubectl apply` would create it (with what the API server fills in)."""
    return {
        "apiVersion": "gridop.io/v1beta1",
        "kind": "GridSession",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "resourceVersion": rv(),
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"user": "alice", "config": {"airgen": {"sim": "city"}, "grid": {"mode": "interactive"}}, **spec},
    }


class Kubelet:
    """Plays the scheduler and kubelet for the emulator: binds pods and reports their status."""

    def __init__(self, api: KubeClient):
        self.api = api

    async def run(self, name: str, node: str, ip: str, namespace: str = NAMESPACE) -> None:
        from gridop.kube import resources

        await self.api.patch(resources.PODS, name, {"spec": {"nodeName": node}}, namespace)
        await self.api.patch(
            resources.PODS,
            name,
            {
                "status": {
                    "phase": "Running",
                    "hostIP": ip,
                    "podIP": "10.244.1.7",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                }
            },
            namespace,
            subresource="status",
        )

    async def evict(self, name: str, namespace: str = NAMESPACE) -> None:
        from gridop.kube import resources

        await self.api.patch(
            resources.PODS,
            name,
            {"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}},
            namespace,
            subresource="status",
        )


@pytest.fixture
def kubelet(api: KubeClient) -> Kubelet:
    return Kubelet(api)


@pytest.fixture
async def auto_kubelet(emulator: kmock.KubernetesEmulator, api: KubeClient) -> AsyncIterator[Kubelet]:
    """A kubelet that starts every new pod on worker-1 as soon as it appears."""
    from gridop.kube import resources

    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    kubelet = Kubelet(api)

    async def loop() -> None:
        while True:
            for pod in await api.list(resources.PODS, NAMESPACE):
                if not pod.get("spec", {}).get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                    await kubelet.run(pod["metadata"]["name"], "worker-1", "172.18.0.3")
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    yield kubelet
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
