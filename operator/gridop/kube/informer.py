"""A list+watch cache of one resource: reads are served from memory, kept current by a watch.

What controller-runtime calls an informer, in the small: list once, then watch from the list's
resourceVersion; a 410 Gone (or any broken stream) relists. `fresh` says whether the cache can be
trusted right now; callers that decide access with it fail closed when it cannot.

Three things keep a controller honest on top of it:

- `label_selector` and `metadata_only` make the API server send only what the controller needs
  (its own children; names, labels and annotations rather than Secret contents).
- `transform` trims each object before it is stored (node heartbeats, managed fields); an event
  whose trimmed object equals the stored one is absorbed without waking anyone.
- `remember(obj)` records the response of the controller's own write, so the next read sees it
  even before the watch echoes it back, and the echo itself does not wake the controller again
  (controller-runtime's "expectations", with resourceVersions treated as opaque: an overlay lasts
  until the watch delivers that very version, a relist, or `overlay_ttl` seconds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from .client import KubeClient, KubeError, Resource

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]
Transform = Callable[[dict[str, Any]], dict[str, Any]]
Key = tuple[str | None, str]

METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_GONE = object()  # overlay for an object this controller deleted outright


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from the resourceVersion (after the transform)."""
    if a.keys() != b.keys():
        return False
    meta_a, meta_b = dict(a.get("metadata") or {}), dict(b.get("metadata") or {})
    meta_a.pop("resourceVersion", None)
    meta_b.pop("resourceVersion", None)
    return meta_a == meta_b and all(a[k] == b[k] for k in a if k != "metadata")


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespaces: list[str] | None = None,
        *,
        watch_timeout: int = 300,
        stale_after: float = 30.0,
        label_selector: str | None = None,
        metadata_only: bool = False,
        transform: Transform | None = None,
        overlay_ttl: float = 30.0,
    ):
        self._client = client
        self._resource = resource
        self._namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self._watch_timeout = watch_timeout
        self._stale_after = stale_after
        self._label_selector = label_selector
        self._metadata_only = metadata_only
        self._transform = transform
        self._overlay_ttl = overlay_ttl
        self._objects: dict[Key, dict[str, Any]] = {}
        # Own writes not yet seen on the watch: key -> (object or _GONE, resourceVersion, since).
        self._overlay: dict[Key, tuple[Any, str, float]] = {}
        self._recent: dict[Key, collections.deque[str]] = {}  # versions the watch delivered lately
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._healthy: dict[str | None, bool] = dict.fromkeys(self._namespaces, False)
        self._broken_since: dict[str | None, float | None] = dict.fromkeys(self._namespaces)
        self.synced = asyncio.Event()
        self._synced_namespaces: set[str | None] = set()

    @property
    def resource(self) -> Resource:
        return self._resource

    # -- reads -------------------------------------------------------------------------------
    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (namespace, name)
        if self._overlay:
            entry = self._overlay.get(key)
            if entry is not None:
                obj, _, since = entry
                if asyncio.get_running_loop().time() - since < self._overlay_ttl:
                    return None if obj is _GONE else obj
                del self._overlay[key]
        return self._objects.get(key)

    def items(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._objects.values()))

    def __len__(self) -> int:
        return len(self._objects)

    # -- own writes --------------------------------------------------------------------------
    def remember(self, obj: dict[str, Any]) -> None:
        """Record the API's answer to our own create/update: reads see it until the watch catches up."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        version = _rv(obj)
        if not version or version in self._recent.get(key, ()):  # type: ignore[arg-type]
            return  # the watch already delivered this version (and maybe later ones)
        self._overlay[key] = (self._trim(obj), version, asyncio.get_running_loop().time())  # type: ignore[index]

    def remember_deleted(self, namespace: str | None, name: str) -> None:
        """We deleted it outright: reads say it is gone until the watch delivers the deletion."""
        key = (namespace, name)
        if key in self._objects:
            self._overlay[key] = (_GONE, "", asyncio.get_running_loop().time())

    def _trim(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata")
        if meta and "managedFields" in meta:
            obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        return self._transform(obj) if self._transform is not None else obj

    def serves(self, namespace: str) -> bool:
        return self._namespaces == [None] or namespace in self._namespaces

    @property
    def fresh(self) -> bool:
        """Synced, and no watch has been broken for longer than `stale_after` seconds."""
        if not self.synced.is_set():
            return False
        now = asyncio.get_running_loop().time()
        return all(since is None or now - since < self._stale_after for since in self._broken_since.values())

    def add_listener(self, listener: Listener) -> None:
        """Called with ("ADDED"|"MODIFIED"|"DELETED", object) after the cache has changed."""
        self._listeners.append(listener)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(ns), name=f"informer-{self._resource.plural}-{ns}") for ns in self._namespaces]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(self, namespace: str | None) -> None:
        failures = 0
        while True:
            try:
                version: str | None = await self._list(namespace)
                failures = 0
                while version is not None:
                    version = await self._watch(namespace, version)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, KubeError, aiohttp.ClientError, OSError, ValueError) as exc:
                failures += 1
                self._mark_broken(namespace)
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * (0.5 + random.random() / 2)
                log.warning("watch of %s in %s broken (%s); retrying in %.1fs", self._resource.plural,
                            namespace or "all namespaces", exc, delay)
                await asyncio.sleep(delay)

    def _mark_broken(self, namespace: str | None) -> None:
        if self._broken_since[namespace] is None:
            self._broken_since[namespace] = asyncio.get_running_loop().time()

    def _params(self) -> dict[str, str]:
        return {"labelSelector": self._label_selector} if self._label_selector else {}

    async def _list(self, namespace: str | None) -> str:
        payload = await self._client.request("GET", self._resource.path(namespace), params=self._params() or None,
                                             accept=METADATA_LIST if self._metadata_only else None)
        items = payload.get("items") or []
        seen = set()
        in_scope = [k for k in self._overlay if namespace is None or k[0] == namespace]
        for key in in_scope:  # a list is newer than any write we made before it
            del self._overlay[key]
        for obj in items:
            meta = obj.get("metadata", {})
            key = (meta.get("namespace"), meta["name"])
            seen.add(key)
            self._store("ADDED", key, obj)
        for key in [k for k in self._objects if (namespace is None or k[0] == namespace) and k not in seen]:
            self._recent.pop(key, None)
            self._notify("DELETED", self._objects.pop(key))
        self._broken_since[namespace] = None
        self._synced_namespaces.add(namespace)
        if len(self._synced_namespaces) == len(self._namespaces):
            self.synced.set()
        return str((payload.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, namespace: str | None, version: str) -> str | None:
        """Follow the watch; the version to resume from, or None to relist (410 Gone)."""
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(self._watch_timeout),
                  **self._params()}
        if version:
            params["resourceVersion"] = version
        resp = await self._client.open_stream(self._resource.path(namespace), params,
                                              accept=METADATA_WATCH if self._metadata_only else None)
        try:
            self._broken_since[namespace] = None
            # The server ends the watch at timeoutSeconds; still reading well past that means a
            # half-open connection, which would otherwise freeze the cache silently.
            async with asyncio.timeout(self._watch_timeout + 30):
                resume = await self._follow(resp, version)
        finally:
            resp.release()
        return resume  # the server ended the watch (timeoutSeconds): resume from here

    async def _follow(self, resp: aiohttp.ClientResponse, version: str) -> str | None:
        async for line in resp.content:
            if not line.strip():
                continue
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise KubeError(int(obj.get("code") or 500), str(obj.get("message")), str(obj.get("reason", "")))
            meta = obj.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            self.deliver(str(kind), obj)
        return version

    def deliver(self, kind: str, obj: dict[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED or DELETED) to the cache."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if kind == "DELETED":
            self._overlay.pop(key, None)  # type: ignore[arg-type]
            self._recent.pop(key, None)  # type: ignore[arg-type]
            self._objects.pop(key, None)  # type: ignore[arg-type]
            self._notify("DELETED", obj)
        else:
            self._store(kind, key, obj)  # type: ignore[arg-type]

    def _store(self, kind: str, key: Key, obj: dict[str, Any]) -> None:
        version = _rv(obj)
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = collections.deque(maxlen=8)
        recent.append(version)
        echo = False
        entry = self._overlay.get(key)
        if entry is not None and entry[1] == version:  # the echo of our own write
            del self._overlay[key]
            echo = True
        old = self._objects.get(key)
        if old is not None and version and _rv(old) == version:
            return  # a replay of what we hold (a re-list, or a watch restarted from an old version)
        obj = self._trim(obj)
        if old is not None and self._transform is not None and _same_content(old, obj):
            return  # nothing the controller looks at changed (a node heartbeat, say)
        self._objects[key] = obj
        if not echo:
            self._notify(kind if old is None or kind != "ADDED" else "MODIFIED", obj)

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(kind, obj)
            except Exception:  # a listener's bug must not break the cache
                log.exception("informer listener failed")
