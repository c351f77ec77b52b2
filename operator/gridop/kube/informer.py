"""A list+watch cache of one resource: reads are served from memory, kept current by a watch.

What controller-runtime calls an informer, in the small: list once, then watch from the list's
resourceVersion; a 410 Gone (or any broken stream) relists. `fresh` says whether the cache can be
trusted right now; callers that decide access with it fail closed when it cannot.
"""

from __future__ import annotations

import asyncio
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


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespaces: list[str] | None = None,
        *,
        watch_timeout: int = 300,
        stale_after: float = 30.0,
    ):
        self._client = client
        self._resource = resource
        self._namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self._watch_timeout = watch_timeout
        self._stale_after = stale_after
        self._objects: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._healthy: dict[str | None, bool] = {ns: False for ns in self._namespaces}
        self._broken_since: dict[str | None, float | None] = {ns: None for ns in self._namespaces}
        self.synced = asyncio.Event()
        self._synced_namespaces: set[str | None] = set()

    # -- reads -------------------------------------------------------------------------------
    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects.get((namespace, name))

    def items(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._objects.values()))

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
                version = await self._list(namespace)
                failures = 0
                while version is not None:
                    version = await self._watch(namespace, version)
            except asyncio.CancelledError:
                raise
            except (KubeError, aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
                failures += 1
                self._mark_broken(namespace)
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * (0.5 + random.random() / 2)
                log.warning("watch of %s in %s broken (%s); retrying in %.1fs", self._resource.plural,
                            namespace or "all namespaces", exc, delay)
                await asyncio.sleep(delay)

    def _mark_broken(self, namespace: str | None) -> None:
        if self._broken_since[namespace] is None:
            self._broken_since[namespace] = asyncio.get_running_loop().time()

    async def _list(self, namespace: str | None) -> str:
        payload = await self._client.request("GET", self._resource.path(namespace))
        items = payload.get("items") or []
        seen = set()
        for obj in items:
            meta = obj.get("metadata", {})
            key = (meta.get("namespace"), meta["name"])
            seen.add(key)
            old = self._objects.get(key)
            self._objects[key] = obj
            self._notify("ADDED" if old is None else "MODIFIED", obj)
        for key in [k for k in self._objects if (namespace is None or k[0] == namespace) and k not in seen]:
            self._notify("DELETED", self._objects.pop(key))
        self._broken_since[namespace] = None
        self._synced_namespaces.add(namespace)
        if len(self._synced_namespaces) == len(self._namespaces):
            self.synced.set()
        return str((payload.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, namespace: str | None, version: str) -> str | None:
        """Follow the watch; the version to resume from, or None to relist (410 Gone)."""
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(self._watch_timeout)}
        if version:
            params["resourceVersion"] = version
        resp = await self._client.open_stream(self._resource.path(namespace), params)
        try:
            self._broken_since[namespace] = None
            # The server ends the watch at timeoutSeconds; still reading well past that means a
            # half-open connection, which would otherwise freeze the cache silently.
            async with asyncio.timeout(self._watch_timeout + 30):
                version = await self._follow(resp, version)
        finally:
            resp.release()
        return version  # the server ended the watch (timeoutSeconds): resume from here

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
            key = (meta.get("namespace"), meta.get("name"))
            if kind == "DELETED":
                self._objects.pop(key, None)  # type: ignore[arg-type]
            else:
                self._objects[key] = obj  # type: ignore[index]
            self._notify(str(kind), obj)
        return version

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(kind, obj)
            except Exception:  # a listener's bug must not break the cache
                log.exception("informer listener failed")
