"""The real operator (kopf, in-process) against the kmock Kubernetes API emulator.

The emulator stores objects and serves watches, but has no scheduler, kubelet or garbage
collector: tests play those parts (bind and start pods, report nodes) and assert end states.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonpatch
import kmock
from kmock._internal.k8s import KubernetesObjectConflictError
import pytest
import yaml

from gridop.kube import ClusterAccess, KubeClient
from gridop.operator_main import run_operator
from gridop.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "grid"
_rv = itertools.count(1000)


def rv() -> str:
    return str(next(_rv))


def register_crds(emulator: kmock.KubernetesEmulator) -> None:
    """Make the emulator discover our kinds from the committed CRD YAML (so the YAML is exercised)."""
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        for version in crd["spec"]["versions"]:
            emulator.resources[f"{crd['spec']['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names["singular"],
                namespaced=crd["spec"]["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {})),
            )


class ApiServer(kmock.KubernetesEmulator):
    """The emulator plus the bookkeeping a real API server does on every write.

    Real objects always carry a uid, creationTimestamp and a resourceVersion that changes on
    each write (kopf relies on it), and generation moves when the spec changes.
    """

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.data is not None:
            self._stamp(request)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:  # a stale resourceVersion in a JSON patch
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
        except KubernetesObjectConflictError as exc:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f"{request.data.get('metadata', {}).get('name')} already exists") from exc

    def _stamp(self, request: kmock.Request) -> None:
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta["resourceVersion"] = rv()
        elif request.action == kmock.action.UPDATE and request.name:
            if isinstance(data, list):  # JSON patch
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv()})
            elif isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = rv()
                key = (request.resource, request.namespace, request.name)
                if "spec" in data and request.subresource is None and key in self.objects:
                    current = self.objects[key]
                    if not current.deleted:
                        meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1


@pytest.fixture
async def emulator() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with ApiServer() as emu, kmock.Server(emu):
        emu.resources.load_bundled()
        register_crds(emu)
        yield emu


@pytest.fixture
def settings() -> Settings:
    return Settings(namespace="gridop-system", resync_seconds=5.0, log_format="text")


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
    with contextlib.suppress(asyncio.CancelledError):  # kopf cancels its own tasks on a stop flag
        await asyncio.wait_for(task, timeout=20)


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until `check()` returns a truthy value (or an awaitable of one); fail with the last state."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        last = result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last result: {last!r}")
        await asyncio.sleep(interval)


def seed(emulator: kmock.KubernetesEmulator, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Put an object into the emulator as if it had always existed."""
    meta = obj.setdefault("metadata", {})
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("resourceVersion", rv())
    meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    emulator.objects[resource, meta.get("namespace"), meta["name"]] = obj
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
        "apiVersion": "gridop.io/v1alpha1",
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
