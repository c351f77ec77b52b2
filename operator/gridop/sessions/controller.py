"""The GridSession controller: the common controller design (`kube.controller`), plus nodes.

A session's children (pod, Service, ConfigMap, Secret) queue it by its label, as every kind's
children do. Nodes are what sessions add: an event on a node queues the sessions placed on or
pinned to it, and the sessions still waiting for a node that matches their selector.
"""

from __future__ import annotations

from typing import Any

from ..kube.controller import Controller, Key
from .cache import SessionCache
from .plan import SESSION_LABEL
from .reconciler import SessionReconciler


class SessionController(Controller):
    def __init__(self, reconciler: SessionReconciler, cache: SessionCache, *, workers: int = 8):
        super().__init__(
            "GridSession", reconciler, cache.sessions,
            children={cache.pods: SESSION_LABEL, cache.services: SESSION_LABEL, cache.config_maps: SESSION_LABEL,
                      cache.secrets: SESSION_LABEL},
            others=[cache.nodes], workers=workers,
        )
        self.cache = cache
        self._by_node: dict[str, set[Key]] = {}  # node name -> sessions placed on or pinned to it
        self._nodes_of: dict[Key, tuple[str, ...]] = {}
        self._selecting: set[Key] = set()  # sessions waiting for a node that matches their selector
        cache.nodes.add_listener(self._on_node)

    def on_object(self, event: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if event == "DELETED":
            self._index(key, ())
            self._selecting.discard(key)
            return
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        self._index(key, tuple(n for n in {spec.get("node"), status.get("nodeName")} if n))
        if spec.get("nodeSelector") and not status.get("podName"):
            self._selecting.add(key)
        else:
            self._selecting.discard(key)

    def _index(self, key: Key, nodes: tuple[str, ...]) -> None:
        old = self._nodes_of.get(key, ())
        if old == nodes:
            return
        for n in old:
            keys = self._by_node.get(n)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_node[n]
        for n in nodes:
            self._by_node.setdefault(n, set()).add(key)
        if nodes:
            self._nodes_of[key] = nodes
        else:
            self._nodes_of.pop(key, None)

    def _on_node(self, event: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        for key in list(self._by_node.get(name or "", ())) + list(self._selecting):
            self.queue.add(key)
