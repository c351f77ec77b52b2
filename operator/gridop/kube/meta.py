"""Metadata conventions every gridop child shares: owner references and the template hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..api.v1beta1 import API_VERSION

# The hash of the pod template a child was made from: a changed spec shows as a changed hash.
TEMPLATE_HASH = "gridop.io/template-hash"


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


# What a cache keeps of a child's metadata: identity, versions, labels and annotations, owners.
META_KEPT = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences",
             "deletionTimestamp", "creationTimestamp")


def metadata_view(obj: dict[str, Any]) -> dict[str, Any]:
    """An object trimmed to the metadata a controller compares (a cache transform)."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in META_KEPT if k in meta}}


def owner_reference(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The controller reference of a child: the garbage collector deletes it with its owner."""
    return {"apiVersion": API_VERSION, "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}
