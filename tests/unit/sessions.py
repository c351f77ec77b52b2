"""Builders for session-domain unit tests."""

from __future__ import annotations

import datetime
from typing import Any

from gridop.api.v1beta1 import GridSession
from gridop.settings import Settings

NOW = datetime.datetime(2026, 11, 1, 12, 0, tzinfo=datetime.UTC)
SETTINGS = Settings(resync_seconds=30.0)


def session(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> GridSession:
    return GridSession.model_validate(
        {
            "metadata": {"name": "s1", "namespace": "grid", "uid": "u-1", "generation": 3, "annotations": annotations or {}},
            "spec": {"user": "alice", "node": "w1", "config": {"airgen": {}, "grid": {}}, **spec},
            "status": status or {},
        }
    )


def running_pod(node: str = "w1", ip: str = "10.0.0.1", *, ready: bool = True, **status: Any) -> dict[str, Any]:
    from gridop.sessions import plan

    s = session()
    pod = plan.pod(s, SETTINGS)
    pod["metadata"]["uid"] = "pod-uid"
    pod["spec"]["nodeName"] = node
    pod["status"] = {
        "phase": "Running",
        "hostIP": ip,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        **status,
    }
    return pod


def ago(seconds: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).isoformat()
