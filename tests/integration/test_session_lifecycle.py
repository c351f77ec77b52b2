"""GridSession lifecycle, end to end through the real operator and the API emulator."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import jwt
import kmock
import pytest

from gridop.kube import KubeClient, resources

from .conftest import NAMESPACE, Kubelet, eventually, gridsession, node, seed


def ready(gs: dict | None) -> dict:
    conds = (gs or {}).get("status", {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Ready"), {})


async def get_gs(api: KubeClient, name: str) -> dict | None:
    return await api.get(resources.GRIDSESSIONS, name, NAMESPACE)


async def phase_is(api: KubeClient, name: str, phase: str) -> dict | None:
    gs = await get_gs(api, name)
    return gs if (gs or {}).get("status", {}).get("phase") == phase else None


@pytest.fixture
def nodes(emulator: kmock.KubernetesEmulator) -> None:
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3", {"gridop.io/resource-node": "true"}))
    seed(emulator, "v1/nodes", node("worker-2", "172.18.0.4", {"gridop.io/resource-node": "true"}))


async def test_session_runs_goes_idle_stops_and_cleans_up(
    emulator: kmock.KubernetesEmulator, nodes: None, operator, api: KubeClient, kubelet: Kubelet
) -> None:
    body = gridsession(
        "sim-1",
        node="worker-1",
        tenant="acme",
        idleTimeoutSeconds=2,
        workload={"image": "busybox:1.36", "ports": [{"name": "http", "containerPort": 8080}], "consolePort": 9000},
    )
    await api.create(resources.GRIDSESSIONS, body, NAMESPACE)

    # Given a new session, the operator creates its children...
    pod = await eventually(lambda: api.get(resources.PODS, "sim-1", NAMESPACE))
    cm = await eventually(lambda: api.get(resources.CONFIGMAPS, "sim-1-config", NAMESPACE))
    secret = await eventually(lambda: api.get(resources.SECRETS, "sim-1-token", NAMESPACE))
    svc = await eventually(lambda: api.get(resources.SERVICES, "sim-1", NAMESPACE))

    # ...all owned by the session,
    for child in (pod, cm, secret, svc):
        assert child["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    # with the merged GRID configuration,
    assert json.loads(cm["data"]["session_config.json"]) == {
        "session_id": "sim-1",
        "airgen": {"sim": "city"},
        "grid": {"mode": "interactive"},
    }
    # a session JWT with the documented claims,
    token = base64.b64decode(secret["data"]["token"]).decode()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["sid"], claims["tenant"], claims["iss"], claims["aud"]) == (
        "alice", "sim-1", "acme", "gridop", "gridop"
    )
    assert jwt.get_unverified_header(token)["kid"]
    # a pod pinned to the node,
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == ["worker-1"]
    # and a Service exposing the declared ports and the console.
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("http", 8080), ("console", 9000)}
    gs = await eventually(lambda: phase_is(api, "sim-1", "Starting"))
    assert ready(gs)["status"] == "False"

    # When the pod runs, the session is Running and reports where.
    await kubelet.run("sim-1", "worker-1", "172.18.0.3")
    gs = await eventually(lambda: phase_is(api, "sim-1", "Running"))
    st = gs["status"]
    assert (st["nodeName"], st["nodeIP"], st["podName"], st["serviceName"]) == ("worker-1", "172.18.0.3", "sim-1", "sim-1")
    assert st["startTime"] and st["lastActiveTime"] and st["observedGeneration"] == 1
    assert st["conditions"][0]["type"] == "Ready" and ready(gs)["status"] == "True"

    # When nobody is active for idleTimeoutSeconds, the session stops with a clear reason.
    gs = await eventually(lambda: phase_is(api, "sim-1", "Stopped"), timeout=20)
    assert ready(gs)["reason"] == "IdleTimeout"
    assert await api.get(resources.PODS, "sim-1", NAMESPACE) is None
    assert gs["status"]["stopTime"]

    # When the session is deleted, everything it created is gone, and so is the session.
    await api.delete(resources.GRIDSESSIONS, "sim-1", NAMESPACE)
    await eventually(lambda: _gone(api, "sim-1"))
    for res, name in (
        (resources.CONFIGMAPS, "sim-1-config"),
        (resources.SECRETS, "sim-1-token"),
        (resources.SERVICES, "sim-1"),
    ):
        assert await api.get(res, name, NAMESPACE) is None, name

    # Transitions were announced as Kubernetes Events.
    reasons = {e["reason"] for e in await api.list(resources.EVENTS, NAMESPACE)}
    assert {"Running", "IdleTimeout", "Stopped"} <= reasons


async def _gone(api: KubeClient, name: str) -> bool:
    return await get_gs(api, name) is None


async def test_lost_pod_is_recreated_then_the_session_fails_when_the_budget_is_spent(
    emulator: kmock.KubernetesEmulator, nodes: None, operator, api: KubeClient, kubelet: Kubelet
) -> None:
    await api.create(resources.GRIDSESSIONS, gridsession("sim-2", node="worker-2", maxRecoveries=1), NAMESPACE)
    await eventually(lambda: api.get(resources.PODS, "sim-2", NAMESPACE))
    await kubelet.run("sim-2", "worker-2", "172.18.0.4")
    await eventually(lambda: phase_is(api, "sim-2", "Running"))

    # The pod is deleted behind the operator's back: it is recreated, and the reason is reported.
    await api.delete(resources.PODS, "sim-2", NAMESPACE)
    gs = await eventually(lambda: _recoveries(api, "sim-2", 1))
    assert ready(gs)["reason"] == "PodLost" and "recreating" in ready(gs)["message"]
    await eventually(lambda: api.get(resources.PODS, "sim-2", NAMESPACE))
    await kubelet.run("sim-2", "worker-2", "172.18.0.4")
    await eventually(lambda: phase_is(api, "sim-2", "Running"))

    # Evicted again with no budget left: the session fails, saying why.
    await kubelet.evict("sim-2")
    gs = await eventually(lambda: phase_is(api, "sim-2", "Failed"))
    assert ready(gs)["reason"] == "PodEvicted"
    assert "recovery budget of 1 spent" in ready(gs)["message"]
    await eventually(lambda: _pod_gone(api, "sim-2"))


async def _recoveries(api: KubeClient, name: str, n: int) -> dict | None:
    gs = await get_gs(api, name)
    return gs if (gs or {}).get("status", {}).get("recoveries") == n else None


async def _pod_gone(api: KubeClient, name: str) -> bool:
    return await api.get(resources.PODS, name, NAMESPACE) is None


async def test_node_loss_is_reported_and_recovered(
    emulator: kmock.KubernetesEmulator, nodes: None, operator, api: KubeClient, kubelet: Kubelet
) -> None:
    await api.create(
        resources.GRIDSESSIONS,
        gridsession("sim-3", nodeSelector={"gridop.io/resource-node": "true"}, podLossPolicy="Fail"),
        NAMESPACE,
    )
    pod = await eventually(lambda: api.get(resources.PODS, "sim-3", NAMESPACE))
    assert pod["spec"]["nodeSelector"] == {"gridop.io/resource-node": "true"}
    await kubelet.run("sim-3", "worker-2", "172.18.0.4")
    await eventually(lambda: phase_is(api, "sim-3", "Running"))

    # The node disappears: the session fails (podLossPolicy=Fail) with NodeLost.
    await api.delete(resources.NODES, "worker-2")
    gs = await eventually(lambda: phase_is(api, "sim-3", "Failed"))
    assert ready(gs)["reason"] == "NodeLost"
    assert "worker-2" in ready(gs)["message"]


async def test_unknown_node_lands_in_a_condition_and_recovers_when_the_node_appears(
    emulator: kmock.KubernetesEmulator, nodes: None, operator, api: KubeClient, settings
) -> None:
    await api.create(resources.GRIDSESSIONS, gridsession("sim-4", node="no-such-node"), NAMESPACE)
    gs = await eventually(lambda: _ready_reason(api, "sim-4", "NodeNotFound"))
    assert gs["status"]["phase"] == "Pending"
    assert "no-such-node" in ready(gs)["message"]
    sched = next(c for c in gs["status"]["conditions"] if c["type"] == "Scheduled")
    assert sched["status"] == "False" and sched["reason"] == "NodeNotFound"
    assert await api.get(resources.PODS, "sim-4", NAMESPACE) is None

    # The node is added later: the session proceeds without anyone touching it.
    seed(emulator, "v1/nodes", node("no-such-node", "172.18.0.9"))
    await eventually(lambda: api.get(resources.PODS, "sim-4", NAMESPACE), timeout=30)


async def test_no_node_matches_the_selector(
    emulator: kmock.KubernetesEmulator, nodes: None, operator, api: KubeClient
) -> None:
    await api.create(resources.GRIDSESSIONS, gridsession("sim-5", nodeSelector={"pool": "gpu"}), NAMESPACE)
    gs = await eventually(lambda: _ready_reason(api, "sim-5", "NoMatchingNode"))
    assert gs["status"]["phase"] == "Pending"
    assert "pool=gpu" in ready(gs)["message"]


async def _ready_reason(api: KubeClient, name: str, reason: str) -> dict | None:
    gs = await get_gs(api, name)
    return gs if ready(gs).get("reason") == reason else None


async def test_an_unusable_signing_key_is_reported_and_picked_up_once_fixed(
    emulator: kmock.KubernetesEmulator, nodes: None, api: KubeClient, settings
) -> None:
    import asyncio
    import contextlib

    from gridop.auth import Keyring
    from gridop.kube import ClusterAccess
    from gridop.operator_main import run_operator

    # An administrator's key Secret with a broken PEM: the operator must not overwrite it.
    broken = {"metadata": {"name": "gridop-signing-keys", "namespace": "gridop-system"},
              "data": {"k1.pem": base64.b64encode(b"-----BEGIN PRIVATE KEY-----\ngarbage").decode()}}
    await api.create(resources.SECRETS, broken, "gridop-system")
    stop, ready_flag = asyncio.Event(), asyncio.Event()
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    task = asyncio.create_task(run_operator(settings, access, stop_flag=stop, ready_flag=ready_flag, serve_metrics=False))
    try:
        await asyncio.wait_for(ready_flag.wait(), 15)
        await api.create(resources.GRIDSESSIONS, gridsession("sim-6", node="worker-1"), NAMESPACE)
        gs = await eventually(lambda: _ready_reason(api, "sim-6", "SigningKeyUnavailable"))
        assert gs["status"]["phase"] == "Pending"
        assert "'k1.pem' is not a readable PEM private key" in ready(gs)["message"]
        assert await api.get(resources.PODS, "sim-6", NAMESPACE) is None

        # The administrator repairs the Secret: the session proceeds without a restart.
        good = {k: base64.b64encode(v).decode() for k, v in Keyring.generate().to_secret_data().items()}
        await api.patch(resources.SECRETS, "gridop-signing-keys", {"data": {"k1.pem": None, **good}}, "gridop-system")
        await eventually(lambda: api.get(resources.SECRETS, "sim-6-token", NAMESPACE), timeout=30)
        await eventually(lambda: api.get(resources.PODS, "sim-6", NAMESPACE))
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


@pytest.mark.parametrize(("workload", "reason", "refusal"), [
    # the operator's own model refuses it: nothing is created
    ({"resources": {"requests": {"cpu": "lots"}}}, "InvalidSpec", "spec.workload.resources.requests.cpu"),
    # the API server refuses the pod
    ({"ports": [{"name": "a", "containerPort": 80}, {"name": "a", "containerPort": 81}]}, "SpecRejected",
     'spec.containers[0].ports[1].name: Duplicate value: "a"'),
])
async def test_a_spec_that_cannot_be_run_is_reported_as_stalled_once(
    emulator, nodes: None, operator, api: KubeClient, caplog: pytest.LogCaptureFixture, workload: dict, reason: str,
    refusal: str,
) -> None:
    """Objects admitted before the schema checked these (or by a laxer schema): the session says why
    it cannot run (Stalled, with the model's or the API server's message), the operator stops trying
    until the spec changes, and logs no traceback."""
    await api.create(resources.GRIDSESSIONS, gridsession("bad-pod", node="worker-1", workload=workload), NAMESPACE)
    gs = await eventually(lambda: _ready_reason(api, "bad-pod", reason))
    assert gs["status"]["phase"] == "Pending" and refusal in ready(gs)["message"], ready(gs)
    stalled = next(c for c in gs["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == reason
    tries = emulator.count("gridop-operator", "CREATE", "pods")
    await asyncio.sleep(3)
    assert emulator.count("gridop-operator", "CREATE", "pods") == tries, "the operator kept creating a refused pod"
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]

    # Fixed: the new generation gets its pod.
    await api.patch(resources.GRIDSESSIONS, "bad-pod", {"spec": {"workload": None}}, NAMESPACE)
    await eventually(lambda: api.get(resources.PODS, "bad-pod", NAMESPACE))


async def test_a_namespace_being_deleted_gets_nothing_new_and_no_alarm(
    emulator, nodes: None, operator, api: KubeClient, caplog: pytest.LogCaptureFixture,
) -> None:
    """A namespace being deleted refuses every create with 403 "being terminated": the operator
    stops creating there, and logs it once, at INFO."""
    caplog.set_level(logging.INFO, logger="gridop")
    for i in range(5):
        await api.create(resources.GRIDSESSIONS, gridsession(f"doomed-{i}", node="worker-1"), NAMESPACE)
    for i in range(5):
        await eventually(lambda i=i: api.get(resources.PODS, f"doomed-{i}", NAMESPACE))
    # `kubectl delete namespace`: the namespace starts terminating and its pods go first.
    emulator.terminating.add(NAMESPACE)
    before = emulator.count("gridop-operator", "CREATE", "pods")
    for i in range(5):
        await api.delete(resources.PODS, f"doomed-{i}", NAMESPACE)
    await eventually(lambda: _tried(emulator, before + 5))
    await asyncio.sleep(2)
    refused = emulator.count("gridop-operator", "CREATE")
    await asyncio.sleep(3)
    assert emulator.count("gridop-operator", "CREATE") - refused <= 5, "the operator kept creating in a dying namespace"
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING") and r.name.startswith("gridop")]
    assert caplog.text.count("is being deleted: creating no more") == 1


async def _tried(emulator, n: int) -> bool:
    return emulator.count("gridop-operator", "CREATE", "pods") >= n
