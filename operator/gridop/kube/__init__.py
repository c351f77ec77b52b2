"""Async Kubernetes access: cluster credentials, a thin REST client, and object builders."""

from . import resources
from .access import ClusterAccess, load_cluster_access
from .client import AlreadyExists, Conflict, KubeClient, KubeError, NotFound, Resource, merge_patch

__all__ = [
    "AlreadyExists",
    "ClusterAccess",
    "Conflict",
    "KubeClient",
    "KubeError",
    "NotFound",
    "Resource",
    "load_cluster_access",
    "merge_patch",
    "resources",
]
