"""The launch plan: the Kubernetes objects one GridSession owns, built from its spec.

Pure functions from (session, settings) to object bodies. Names are fixed per session, so the
reconciler finds its children by name and never needs a list or a selector.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any

from ..api.v1beta1 import GridSession
from ..api.v1beta1.gridsession import KIND
from ..kube.meta import TEMPLATE_HASH, template_hash
from ..kube.meta import owner_reference as _owner_reference
from ..settings import Settings
from .config import CONFIG_FILE_NAME, build_session_config, render_session_config

SESSION_LABEL = "gridop.io/session"
LAST_ACTIVE_ANNOTATION = "gridop.io/last-active"
# The operator watches ConfigMaps and Secrets as metadata only (it never holds token contents in
# memory), so what it must compare is carried in annotations.
CONFIG_HASH = "gridop.io/config-hash"
TOKEN_EXPIRES = "gridop.io/token-expires"
CONFIG_MOUNT = "/etc/gridop/session"
TOKEN_MOUNT = "/var/run/secrets/gridop.io/session"
TOKEN_KEY = "token"


def pod_name(session: GridSession) -> str:
    return session.metadata["name"]


def service_name(session: GridSession) -> str:
    return session.metadata["name"]


def config_map_name(session: GridSession) -> str:
    return f"{session.metadata['name']}-config"


def token_secret_name(session: GridSession) -> str:
    return f"{session.metadata['name']}-token"


def labels(session: GridSession) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "gridsession",
        "app.kubernetes.io/instance": session.metadata["name"],
        "app.kubernetes.io/managed-by": "gridop",
        SESSION_LABEL: session.metadata["name"],
    }


def owner_reference(session: GridSession) -> dict[str, Any]:
    return _owner_reference(KIND, session.metadata)


def _metadata(session: GridSession, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": session.metadata["namespace"],
        "labels": labels(session),
        "ownerReferences": [owner_reference(session)],
        **extra,
    }


def is_owned_by(obj: dict[str, Any], session: GridSession) -> bool:
    return any(ref.get("uid") == session.metadata.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def session_config_text(session: GridSession) -> str:
    return render_session_config(build_session_config(session.spec.config.to_kube(), session.metadata["name"]))


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_map(session: GridSession) -> dict[str, Any]:
    text = session_config_text(session)
    return {
        "metadata": _metadata(session, config_map_name(session), annotations={CONFIG_HASH: config_hash(text)}),
        "data": {CONFIG_FILE_NAME: text},
    }


def config_map_current(session: GridSession, cm: dict[str, Any] | None) -> bool:
    """Whether the observed ConfigMap (metadata is enough) holds this session's configuration."""
    annotations = ((cm or {}).get("metadata") or {}).get("annotations") or {}
    return cm is not None and annotations.get(CONFIG_HASH) == config_hash(session_config_text(session))


def token_expires(secret: dict[str, Any] | None) -> datetime.datetime | None:
    """When the token in the observed Secret expires (from its annotation), None when unknown."""
    raw = (((secret or {}).get("metadata") or {}).get("annotations") or {}).get(TOKEN_EXPIRES)
    try:
        return datetime.datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def token_secret(session: GridSession, token: str, expires: datetime.datetime) -> dict[str, Any]:
    return {
        "metadata": _metadata(session, token_secret_name(session), annotations={TOKEN_EXPIRES: expires.isoformat()}),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def _container(session: GridSession, settings: Settings) -> dict[str, Any]:
    wl = session.spec.workload
    container: dict[str, Any] = {
        "name": "session",
        "image": wl.image or settings.default_session_image,
        # A console session is an interactive process: keep stdin open and give it a terminal.
        "stdin": True,
        "tty": True,
        "env": [
            {"name": "GRIDOP_SESSION_ID", "value": session.metadata["name"]},
            {"name": "GRIDOP_SESSION_USER", "value": session.spec.user},
            {"name": "GRIDOP_SESSION_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE_NAME}"},
            {"name": "GRIDOP_SESSION_TOKEN_FILE", "value": f"{TOKEN_MOUNT}/{TOKEN_KEY}"},
            *({"name": e.name, "value": e.value} for e in wl.env),
        ],
        "volumeMounts": [
            {"name": "session-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "session-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if wl.image_pull_policy:
        container["imagePullPolicy"] = wl.image_pull_policy
    if wl.command:
        container["command"] = list(wl.command)
    if wl.args:
        container["args"] = list(wl.args)
    if wl.resources:
        container["resources"] = wl.resources.to_kube()
    ports = [{"name": p.name, "containerPort": p.container_port, "protocol": p.protocol} for p in wl.ports]
    if wl.console_port:
        ports.append({"name": "console", "containerPort": wl.console_port, "protocol": "TCP"})
    if ports:
        container["ports"] = ports
    return container


def _placement(session: GridSession, settings: Settings) -> dict[str, Any]:
    # Resource nodes may be tainted to keep other workloads off; sessions tolerate that taint.
    placement: dict[str, Any] = {
        "tolerations": [{"key": settings.resource_node_label, "operator": "Exists", "effect": "NoSchedule"}]
    }
    if session.spec.node:
        # Pin through the scheduler (as DaemonSets do), not spec.nodeName, so taints,
        # resources and readiness are still honoured.
        placement["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [session.spec.node]}]}
                    ]
                }
            }
        }
    else:
        placement["nodeSelector"] = dict(session.spec.node_selector or {})
    return placement


def pod_spec(session: GridSession, settings: Settings) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [_container(session, settings)],
        "volumes": [
            {"name": "session-config", "configMap": {"name": config_map_name(session)}},
            {"name": "session-token", "secret": {"secretName": token_secret_name(session)}},
        ],
        **_placement(session, settings),
    }


def pod(session: GridSession, settings: Settings) -> dict[str, Any]:
    spec = pod_spec(session, settings)
    return {
        "metadata": _metadata(session, pod_name(session), annotations={TEMPLATE_HASH: template_hash(spec)}),
        "spec": spec,
    }


def service_ports(session: GridSession) -> list[dict[str, Any]]:
    wl = session.spec.workload
    ports = [
        {"name": p.name, "port": p.container_port, "targetPort": p.name, "protocol": p.protocol} for p in wl.ports
    ]
    if wl.console_port:
        ports.append({"name": "console", "port": wl.console_port, "targetPort": "console", "protocol": "TCP"})
    return ports


def service(session: GridSession) -> dict[str, Any] | None:
    """The per-session Service, or None when the workload declares no ports."""
    ports = service_ports(session)
    if not ports:
        return None
    return {
        "metadata": _metadata(session, service_name(session)),
        "spec": {"type": "ClusterIP", "selector": {SESSION_LABEL: session.metadata["name"]}, "ports": ports},
    }
