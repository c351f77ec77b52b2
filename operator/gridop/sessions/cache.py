"""What the session controller reads: GridSessions, their children and nodes, from watch caches.

Children are watched by gridop's own label (a cluster with 100k unrelated pods costs nothing);
ConfigMaps and Secrets as metadata only (the comparisons they need live in annotations, so token
contents are never held in memory); nodes trimmed to name, labels and the Ready condition (so
heartbeats are absorbed and wake nobody).
"""

from __future__ import annotations

from typing import Any

from ..kube import KubeClient, resources
from ..kube.informer import Informer
from ..kube.meta import metadata_view
from .plan import SESSION_LABEL


def node_view(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = [{"type": "Ready", "status": c.get("status"), "reason": c.get("reason")}
             for c in conditions if c.get("type") == "Ready"]
    return {"metadata": {k: meta[k] for k in ("name", "uid", "resourceVersion", "labels") if k in meta},
            "status": {"conditions": ready}}


class SessionCache:
    def __init__(self, client: KubeClient, namespaces: list[str] | None = None):
        scoped: dict[str, Any] = {"namespaces": namespaces or None}
        self.sessions = Informer(client, resources.GRIDSESSIONS, **scoped)
        self.pods = Informer(client, resources.PODS, label_selector=SESSION_LABEL, **scoped)
        self.services = Informer(client, resources.SERVICES, label_selector=SESSION_LABEL, **scoped)
        self.config_maps = Informer(client, resources.CONFIGMAPS, label_selector=SESSION_LABEL, metadata_only=True,
                                    transform=metadata_view, **scoped)
        self.secrets = Informer(client, resources.SECRETS, label_selector=SESSION_LABEL, metadata_only=True,
                                transform=metadata_view, **scoped)
        self.nodes = Informer(client, resources.NODES, transform=node_view)
        self.all = [self.sessions, self.pods, self.services, self.config_maps, self.secrets, self.nodes]
