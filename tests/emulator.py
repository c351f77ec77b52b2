"""An in-memory Kubernetes API for tests and benchmarks: kmock plus an API server's bookkeeping."""

from __future__ import annotations

import base64
import collections
import copy
import datetime
import itertools
import pathlib
import re
import ssl
import uuid
from typing import Any

import aiohttp
import jsonpatch
import kmock
import yaml
from kmock._internal.k8s import KubernetesObjectConflictError, KubernetesObjectNotFoundError
from kmock._internal.k8s_views import _parse_resource

ROOT = pathlib.Path(__file__).resolve().parents[1]
_rv = itertools.count(1000)


def rv() -> str:
    return str(next(_rv))


class ApiServer(kmock.KubernetesEmulator):
    """The emulator plus the bookkeeping a real API server does on every write.

    Real objects always carry a uid, creationTimestamp and a resourceVersion that changes on
    each write (kopf relies on it), and generation moves when the spec changes.
    """

    # kmock keeps every request for assertions and scans that log on each new request (its DSL
    # matching, once per fallback reaction), which makes a long run quadratic. Our tests assert on
    # objects and on `counts`, not on kmock's request log, so only the last few are kept.
    request_log_limit = 2

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # (User-Agent, action, resource plural[/subresource]) -> requests: request budgets are
        # counted here, at the API boundary.
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # (User-Agent, resource plural) -> the label selectors its lists and watches asked for.
        self.selectors: dict[tuple[str, str], set[str | None]] = collections.defaultdict(set)
        # Namespaces being deleted: a real API server refuses every create in them (403).
        self.terminating: set[str] = set()
        # The CRDs' versions, as an API server serves them: (group, plural) -> the versions whose
        # copies of the objects are kept (a version is filled the first time anyone asks for it,
        # through the CRD's conversion: the webhook's for strategy Webhook).
        self.materialized: dict[tuple[str, str], set[str]] = {}
        # (group, plural, namespace, name) -> the version its last write was encoded at (storage).
        self.encoded: dict[tuple[str, str, str | None, str], str] = {}
        # Where the cluster's network puts the conversion webhook's Service (host:port), set by a test.
        self.webhook_endpoint: str | None = None
        self.conversions = 0  # webhook calls
        self._in_flight: set[int] = set()

    def count(self, agent: str, action: str, resource: str | None = None) -> int:
        return sum(n for (a, act, res), n in self.counts.items()
                   if a == agent and act == action and (resource is None or res == resource))

    async def _handle(self, request: kmock.Request) -> Any:
        self._in_flight.add(id(request))  # kmock finds a request's reaction in its log: keep it there
        try:
            return await self._handle_logged(request)
        finally:
            self._in_flight.discard(id(request))

    async def _handle_logged(self, request: kmock.Request) -> Any:
        crd = self._crd(request.resource) if request.resource is not None else None
        if crd is not None:
            await self._materialize(crd, request.resource.version)
        if request.resource is not None and request.action is not None:
            plural = str(request.resource.plural) + (f"/{request.subresource}" if request.subresource else "")
            agent = request.headers.get("User-Agent", "")
            self.counts[(agent, request.action.value, plural)] += 1
            if request.action in (kmock.action.LIST, kmock.action.WATCH):
                self.selectors[(agent, plural)].add((request.params or {}).get("labelSelector"))
        if len(self._requests) > 2 * self.request_log_limit:
            cut = len(self._requests) - self.request_log_limit
            self._requests[:] = [r for i, r in enumerate(self._requests) if i >= cut or id(r) in self._in_flight]
        if request.action == kmock.action.CREATE and request.resource is not None:
            self._admit(request)
        if request.resource is not None and request.data is not None:
            self._stamp(request)
        if request.action == kmock.action.DELETE and request.resource is not None and request.name:
            self._stamp_deletion(request)
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:  # a stale resourceVersion in a JSON patch
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
        except KubernetesObjectConflictError as exc:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f"{request.data.get('metadata', {}).get('name')} already exists") from exc
        if request.action == kmock.action.DELETE and request.resource is not None and request.name:
            await self._collect_garbage()
        if crd is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            name = request.name or ((request.data or {}).get("metadata") or {}).get("name")
            namespace = request.namespace or ((request.data or {}).get("metadata") or {}).get("namespace")
            await self._replicate(crd, request.resource, namespace, name)
        return response

    # -- a CRD's versions ------------------------------------------------------------------------

    def apply_crd(self, crd: dict[str, Any]) -> None:
        """`kubectl apply` of a CRD: its served versions become resources, its storage version joins
        status.storedVersions (as the API server records it), the CRD object is stored."""
        names, group = crd["spec"]["names"], crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            self.resources[f"{group}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"], singular=names["singular"], namespaced=crd["spec"]["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {})))
        key = (CRD_RESOURCE, None, crd["metadata"]["name"])
        existing = self.objects._objects.get(key)
        before = copy.deepcopy(existing.raw) if existing is not None and not existing.deleted else {}
        stored = list((before.get("status") or {}).get("storedVersions") or [])
        storage = next(v["name"] for v in crd["spec"]["versions"] if v["storage"])
        caBundle = (((before.get("spec") or {}).get("conversion") or {}).get("webhook") or {}).get("clientConfig", {}).get("caBundle")
        crd = copy.deepcopy(crd)
        if caBundle and crd["spec"].get("conversion", {}).get("strategy") == "Webhook":
            crd["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"] = caBundle  # apply keeps what it does not set
        crd.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
        crd["metadata"]["resourceVersion"] = rv()
        crd["status"] = {"storedVersions": [*stored, storage] if storage not in stored else stored}
        self.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]] = crd
        self.materialized.setdefault((group, names["plural"]), set())

    def crd_object(self, name: str) -> dict[str, Any]:
        return self.objects._objects[(CRD_RESOURCE, None, name)].raw

    def _crd(self, resource: Any) -> dict[str, Any] | None:
        if resource is None or (str(resource.group), str(resource.plural)) not in self.materialized:
            return None
        obj = self.objects._objects.get((CRD_RESOURCE, None, f"{resource.plural}.{resource.group}"))
        return None if obj is None or obj.deleted else obj.raw

    def _others(self, crd: dict[str, Any], version: str) -> list[Any]:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        return [_parse_resource(f"{group}/{v}/{plural}") for v in sorted(self.materialized[(group, plural)]) if v != version]

    async def _materialize(self, crd: dict[str, Any], version: str) -> None:
        """Copies at `version` of every object, converted from a version that holds them (a real
        API server converts on each read; keeping copies is the emulator's way to serve watches)."""
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        have = self.materialized[(group, plural)]
        if version in have:
            return
        if have:
            source = _parse_resource(f"{group}/{sorted(have)[0]}/{plural}")
            target = _parse_resource(f"{group}/{version}/{plural}")
            for (res, namespace, name), obj in list(self.objects._objects.items()):
                if res == source and not obj.deleted:
                    self.objects._objects[(target, namespace, name)] = kmock.Object(await self._convert(crd, obj.raw, version))
        have.add(version)

    async def _replicate(self, crd: dict[str, Any], resource: Any, namespace: str | None, name: str | None) -> None:
        """A write at one version, seen at every other: converted copies and their watch events."""
        if name is None:
            return
        obj = self.objects._objects.get((resource, namespace, name))
        storage = next(v["name"] for v in crd["spec"]["versions"] if v["storage"])
        if obj is not None and not obj.deleted:
            self.encoded[(str(resource.group), str(resource.plural), namespace, name)] = storage
        for other in self._others(crd, str(resource.version)):
            mirror = self.objects._objects.get((other, namespace, name))
            if obj is None or obj.deleted:
                if mirror is not None and not mirror.deleted:
                    raw = mirror.raw
                    mirror.delete()
                    await self._buses[other].put({"type": "DELETED", "object": raw})
                continue
            converted = await self._convert(crd, obj.raw, str(other.version))
            event = "ADDED" if mirror is None or mirror.deleted else "MODIFIED"
            self.objects._objects[(other, namespace, name)] = kmock.Object(converted)
            await self._buses[other].put({"type": event, "object": converted})

    async def _convert(self, crd: dict[str, Any], obj: dict[str, Any], version: str) -> dict[str, Any]:
        """The CRD's conversion: renaming apiVersion (None), or a ConversionReview to the webhook
        over TLS, trusting only the CRD's caBundle, as the API server does."""
        conversion = crd["spec"].get("conversion") or {"strategy": "None"}
        target = f"{crd['spec']['group']}/{version}"
        if conversion["strategy"] == "None":
            return {**copy.deepcopy(obj), "apiVersion": target}
        config = conversion["webhook"]["clientConfig"]
        service = config["service"]
        failed = f"conversion webhook for {target}, Kind={crd['spec']['names']['kind']} failed"
        if self.webhook_endpoint is None:
            raise kmock.KubernetesError(status=500, reason="InternalError", message=f"{failed}: no endpoints available for service")
        context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode() if config.get("caBundle") else None)
        uid = str(uuid.uuid4())
        review = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                  "request": {"uid": uid, "desiredAPIVersion": target, "objects": [obj]}}
        url = f"https://{self.webhook_endpoint}{service.get('path', '/')}"
        try:
            async with aiohttp.ClientSession() as http, http.post(
                    url, json=review, ssl=context, server_hostname=f"{service['name']}.{service['namespace']}.svc",
                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                answer = await resp.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise kmock.KubernetesError(status=500, reason="InternalError", message=f"{failed}: {exc}") from exc
        self.conversions += 1
        response = answer.get("response") or {}
        if response.get("uid") != uid or (response.get("result") or {}).get("status") != "Success":
            raise kmock.KubernetesError(status=500, reason="InternalError",
                                        message=f"{failed}: {(response.get('result') or {}).get('message')}")
        (converted,) = response["convertedObjects"]
        return converted

    def _admit(self, request: kmock.Request) -> None:
        """The refusals of a real API server that gridop must answer to: a create in a namespace
        being deleted (403), and a pod whose spec fails validation (400 for a malformed quantity,
        422 for duplicate port names), with the real messages."""
        namespace = request.namespace or ((request.data or {}).get("metadata") or {}).get("namespace")
        if namespace in self.terminating:
            raise kmock.KubernetesError(status=403, reason="Forbidden", message=(
                f"{request.resource.plural} \"{(request.data or {}).get('metadata', {}).get('name')}\" is forbidden: "
                f"unable to create new content in namespace {namespace} because it is being terminated"))
        if str(request.resource.plural) != "pods":
            return
        name = (request.data or {}).get("metadata", {}).get("name")
        for i, container in enumerate(((request.data or {}).get("spec") or {}).get("containers") or []):
            for kind in ("requests", "limits"):
                for resource, value in ((container.get("resources") or {}).get(kind) or {}).items():
                    if not re.fullmatch(r"[+-]?[0-9.]+([eEinumkKMGTP]*[-+]?[0-9]*)", str(value)):
                        raise kmock.KubernetesError(status=400, reason="BadRequest", message=(
                            f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (spec.containers[{i}].resources.{kind}.{resource})"))
            seen: set[str] = set()
            for j, port in enumerate(container.get("ports") or []):
                if port.get("name") in seen:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=(
                        f"Pod \"{name}\" is invalid: spec.containers[{i}].ports[{j}].name: "
                        f"Duplicate value: \"{port['name']}\""))
                seen.add(port.get("name"))

    async def _collect_garbage(self) -> None:
        """What kube-controller-manager's garbage collector does (background propagation): delete
        every object whose owners are all gone, until nothing changes."""
        while True:
            live = {obj.get("metadata", {}).get("uid") for obj in self.objects._objects.values() if not obj.deleted}
            orphans = [
                (key, obj) for key, obj in self.objects._objects.items()
                if not obj.deleted and (refs := obj.get("metadata", {}).get("ownerReferences"))
                and not any(ref.get("uid") in live for ref in refs)
            ]
            if not orphans:
                return
            async with self._lock:
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        # A real list names its kind (kubectl's decoder insists): `TaskBatchList`, `v1`'s `PodList`.
        res = request.resource
        info = self.resources._resources.get(res)
        if info is not None and info.kind:
            payload = {"kind": f"{info.kind}List", "apiVersion": f"{res.group}/{res.version}" if res.group else str(res.version),
                       **payload}
        selector = _selector(request)
        if selector is not None:
            payload["items"] = [o for o in payload["items"] if selector(o)]
        return payload

    async def _serve_watch(self, request: kmock.Request) -> Any:
        # kmock ignores labelSelector; a real API server filters, and gridop relies on it.
        selector = _selector(request)
        async for event in super()._serve_watch(request):
            if selector is None or not isinstance(event, dict) or selector(event.get("object") or {}):
                yield event

    def _get_resources(self) -> list[Any]:
        # kmock rescans every stored object per request to learn their resources; ours are all
        # declared up front (bundled built-ins + our CRDs), so the declared list is the answer.
        return kmock.KubernetesScaffold._get_resources(self)

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        # kmock scans every stored object per GET; a real API server looks the object up by key.
        obj = self.objects._objects.get((request.resource, request.namespace, request.name))
        if obj is None or obj.deleted:
            raise KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        meta = (request.data or {}).get("metadata", {})
        obj = self.objects._objects.get((request.resource, request.namespace or meta.get("namespace"), meta.get("name")))
        if obj is None:
            return await super()._serve_create(request)
        return obj.raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        obj = self.objects._objects.get((request.resource, request.namespace, request.name))
        if obj is None:
            return await super()._serve_update(request)
        return obj.last.raw

    _serve_delete = _serve_update  # the last state, as kmock answers (one lookup, not a scan)

    def _stamp_deletion(self, request: kmock.Request) -> None:
        """Marking an object held by finalizers as deleted is a write: a new resourceVersion, as the
        API server gives it (watchers tell a new version from a replay by it)."""
        obj = self.objects._objects.get((request.resource, request.namespace, request.name))
        if obj is not None and not obj.deleted:
            meta = obj.get("metadata", {})
            if meta.get("finalizers") and not meta.get("deletionTimestamp"):
                obj.patch({"metadata": {"resourceVersion": rv()}})

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
                key = (request.resource, request.namespace, request.name)
                expected = meta.get("resourceVersion")
                if expected and key in self.objects and not self.objects[key].deleted:
                    current_rv = self.objects[key].get("metadata", {}).get("resourceVersion")
                    if expected != current_rv:  # optimistic concurrency, as the API server does it
                        raise kmock.KubernetesError(
                            status=409, reason="Conflict",
                            message="the object has been modified; please apply your changes to the latest version",
                        )
                meta["resourceVersion"] = rv()
                if "spec" in data and request.subresource is None and key in self.objects:
                    current = self.objects[key]
                    if not current.deleted:
                        meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1


def _selector(request: kmock.Request) -> Any:
    """A predicate for the request's labelSelector (equality and existence terms), or None."""
    raw = (request.params or {}).get("labelSelector")
    if not raw:
        return None
    terms = []
    for term in (t.strip() for t in raw.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append(lambda labels, k=k, v=v: labels.get(k) != v)
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append(lambda labels, k=k, v=v: labels.get(k) == v)
        elif term.startswith("!"):
            terms.append(lambda labels, k=term[1:]: k not in labels)
        else:
            terms.append(lambda labels, k=term: k in labels)
    return lambda obj: all(t((obj.get("metadata") or {}).get("labels") or {}) for t in terms)


CRD_RESOURCE = _parse_resource("apiextensions.k8s.io/v1/customresourcedefinitions")


def register_crds(emulator: ApiServer, directory: pathlib.Path = ROOT / "crds") -> None:
    """Apply the committed CRD YAML to the emulator (so the YAML is exercised)."""
    for path in sorted(directory.glob("*.yaml")):
        emulator.apply_crd(yaml.safe_load(path.read_text()))


def write_kubeconfig(emulator: kmock.KubernetesEmulator, path: pathlib.Path, namespace: str) -> pathlib.Path:
    """A kubeconfig for processes (operators, workers) to reach the emulator, as they would a cluster."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": namespace}}],
    }))
    return path


def as_before_v1beta1(emulator: ApiServer, directory: pathlib.Path | None = None) -> None:
    """The cluster as a release before v1beta1 left it: gridop's CRDs serve and store v1alpha1 alone
    (a previous release's own crds/ when given; else this tree's, cut down to v1alpha1)."""
    for name in ("gridsessions", "taskbatches", "taskpools"):
        del emulator.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, f"{name}.gridop.io"]
    emulator.materialized.clear()
    if directory is not None:
        register_crds(emulator, directory)
        return
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crd["spec"]["versions"] = [dict(v, storage=True) for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        crd["spec"]["conversion"] = {"strategy": "None"}
        emulator.apply_crd(crd)


async def serve(port: int, crds: pathlib.Path = ROOT / "crds") -> None:
    """Serve the emulator on 127.0.0.1:port until killed (for benchmarks and manual poking), with
    the CRDs in `crds` (a benchmark of an earlier revision gives that revision's)."""
    import asyncio

    async with ApiServer() as emu, kmock.Server(emu, host="127.0.0.1", port=port):
        emu.resources.load_bundled()
        register_crds(emu, crds)
        print(f"emulator listening on {emu.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(description="Run the test Kubernetes API emulator.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--crds", type=pathlib.Path, default=ROOT / "crds", help="the CRDs to serve (a directory)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.crds))
