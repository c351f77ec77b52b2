"""The GridSession lifecycle on a real cluster: apply the example, wait for Ready, delete."""

from __future__ import annotations

import base64
import json
import pathlib

import jwt
import yaml

from gridop.client import GridSessionManager
from gridop.kube import KubeClient, resources

from .conftest import ROOT, eventually


def ready(gs: dict | None) -> dict:
    return next((c for c in (gs or {}).get("status", {}).get("conditions") or [] if c["type"] == "Ready"), {})


async def test_example_session_becomes_ready_and_cleans_up(
    kube: KubeClient, operator: None, namespace: str, resource_node: str
) -> None:
    body = yaml.safe_load((ROOT / "examples" / "gridsession.yaml").read_text())
    name = body["metadata"]["name"]
    await kube.create(resources.GRIDSESSIONS, body, namespace)

    async def is_ready() -> dict | None:
        gs = await kube.get(resources.GRIDSESSIONS, name, namespace)
        return gs if ready(gs).get("status") == "True" else None

    gs = await eventually(is_ready, timeout=240, what="session Ready")
    st = gs["status"]
    assert st["phase"] == "Running"
    assert st["nodeName"] and st["nodeIP"] and st["podName"] == name and st["serviceName"] == name
    assert st["observedGeneration"] == gs["metadata"]["generation"]
    # kstatus: a running session is Current (neither Reconciling nor Stalled).
    kstatus = {c["type"]: c["status"] for c in st["conditions"]}
    assert (kstatus["Reconciling"], kstatus["Stalled"]) == ("False", "False")
    assert not gs["metadata"].get("finalizers")  # children go with the garbage collector
    node = await kube.get(resources.NODES, st["nodeName"])
    assert node["metadata"]["labels"]["gridop.io/resource-node"] == "true"

    uid = gs["metadata"]["uid"]
    pod = await kube.get(resources.PODS, name, namespace)
    cm = await kube.get(resources.CONFIGMAPS, f"{name}-config", namespace)
    secret = await kube.get(resources.SECRETS, f"{name}-token", namespace)
    svc = await kube.get(resources.SERVICES, name, namespace)
    for child in (pod, cm, secret, svc):
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    assert json.loads(cm["data"]["session_config.json"])["session_id"] == name
    claims = jwt.decode(base64.b64decode(secret["data"]["token"]), options={"verify_signature": False})
    assert (claims["sub"], claims["sid"], claims["tenant"]) == ("alice", name, "acme")
    assert svc["spec"]["ports"][0]["port"] == 8080
    assert pod["status"]["hostIP"] == st["nodeIP"]

    # What the operator compares lives in annotations (it watches these as metadata only).
    assert secret["metadata"]["annotations"]["gridop.io/token-expires"]
    assert cm["metadata"]["annotations"]["gridop.io/config-hash"]

    await kube.delete(resources.GRIDSESSIONS, name, namespace)

    async def all_gone() -> bool:
        checks = [
            await kube.get(resources.GRIDSESSIONS, name, namespace),
            await kube.get(resources.CONFIGMAPS, f"{name}-config", namespace),
            await kube.get(resources.SECRETS, f"{name}-token", namespace),
            await kube.get(resources.SERVICES, name, namespace),
            await kube.get(resources.PODS, name, namespace),
        ]
        return all(c is None for c in checks)

    await eventually(all_gone, timeout=120, what="session and children deleted")


async def test_seed_sdk_against_the_cluster(
    kube: KubeClient, operator: None, namespace: str, resource_node: str, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "resources.json"
    config.write_text(json.dumps({
        "tokens": {}, "resources": {"node0": resource_node}, "namespace": namespace,
        "session": {"workload": {"image": "busybox:1.36", "command": ["sleep", "3600"]}},
    }))
    manager = GridSessionManager("user123", str(config), start_timeout=240)
    try:
        assert await manager.start_session("e2e-sdk", "node0", str(ROOT / "examples" / "session_config.json")) is True
        sessions = await manager.list_sessions()
        assert [s["session_id"] for s in sessions] == ["e2e-sdk"] and sessions[0]["node_ip"]
        assert await manager.stop_session("e2e-sdk") is True

        async def gone() -> bool:
            return await kube.get(resources.GRIDSESSIONS, "e2e-sdk", namespace) is None

        await eventually(gone, timeout=120, what="session deleted")
    finally:
        await manager.close()
