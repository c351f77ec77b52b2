"""The GRID-compatible SDK and gridctl, against the real operator on the emulator."""

from __future__ import annotations

import asyncio
import json
import pathlib

import kmock
import pytest
import yaml

from gridop.cli.gridctl import main as gridctl
from gridop.client import GridSessionManager
from gridop.kube import ClusterAccess, KubeClient, resources

from .conftest import NAMESPACE, Kubelet, eventually, node, seed


@pytest.fixture
def resource_config(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "resources.json"
    path.write_text(json.dumps({
        "tokens": {"node0": "t0"},
        "resources": {"node0": "worker-1", "pool": {"nodeSelector": {"gridop.io/resource-node": "true"}}},
        "namespace": NAMESPACE,
        "session": {"idleTimeoutSeconds": 600},
    }))
    return path


@pytest.fixture
def session_config(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "session.json"
    path.write_text(json.dumps({"airgen": {"vehicle": "drone"}, "grid": {"scene": "city"}}))
    return path


@pytest.fixture
def kubeconfig(tmp_path: pathlib.Path, emulator: kmock.KubernetesEmulator) -> pathlib.Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "me", "user": {"token": "dev-token"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "me", "namespace": NAMESPACE}}],
    }))
    return path


async def test_seed_api_start_list_stop(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, kubelet: Kubelet,
    resource_config: pathlib.Path, session_config: pathlib.Path,
) -> None:
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    async with GridSessionManager("user123", str(resource_config), access=access, start_timeout=20) as manager:
        assert manager.tokens == {"node0": "t0"}
        start = asyncio.create_task(manager.start_session("session-001", "node0", str(session_config)))
        await eventually(lambda: api.get(resources.PODS, "session-001", NAMESPACE))
        await kubelet.run("session-001", "worker-1", "172.18.0.3")
        assert await start is True

        gs = await api.get(resources.GRIDSESSIONS, "session-001", NAMESPACE)
        assert gs["spec"]["node"] == "worker-1" and gs["spec"]["idleTimeoutSeconds"] == 600
        assert gs["spec"]["config"] == {"airgen": {"vehicle": "drone"}, "grid": {"scene": "city"}}

        sessions = await manager.list_sessions()
        assert [(s["session_id"], s["node_ip"]) for s in sessions] == [("session-001", "172.18.0.3")]
        assert sessions[0]["last_active_time"]

        assert await manager.touch("session-001") is True
        assert await manager.start_session("session-002", "no-such-resource", str(session_config)) is None
        assert await manager.stop_session("session-001") is True
        await eventually(lambda: _absent(api, "session-001"))
        assert await manager.list_sessions() == []
        assert await manager.stop_session("session-001") is False


async def _absent(api: KubeClient, name: str) -> bool:
    return await api.get(resources.GRIDSESSIONS, name, NAMESPACE) is None


async def test_start_session_reports_failure_as_false(
    emulator: kmock.KubernetesEmulator, operator, resource_config: pathlib.Path, session_config: pathlib.Path,
) -> None:
    # worker-1 does not exist here, but a session whose pod fails outright returns False:
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    api = await KubeClient.connect(access)
    try:
        async with GridSessionManager("u", str(resource_config), access=access, start_timeout=20) as manager:
            start = asyncio.create_task(manager.start_session("doomed", "node0", str(session_config)))
            await eventually(lambda: api.get(resources.PODS, "doomed", NAMESPACE))
            await api.patch(resources.PODS, "doomed", {"spec": {"nodeName": "worker-1"}}, NAMESPACE)
            await api.patch(resources.PODS, "doomed", {"status": {"phase": "Failed", "containerStatuses": [
                {"state": {"terminated": {"exitCode": 3}}}]}}, NAMESPACE, subresource="status")
            # maxRecoveries defaults to 3: lose the recreated pods too.
            for _ in range(3):
                await eventually(lambda: _fresh_pod(api, "doomed"))
                await api.patch(resources.PODS, "doomed", {"spec": {"nodeName": "worker-1"}, "status": {"phase": "Failed"}}, NAMESPACE)
            assert await start is False
    finally:
        await api.close()


async def _fresh_pod(api: KubeClient, name: str) -> bool:
    pod = await api.get(resources.PODS, name, NAMESPACE)
    return pod is not None and "phase" not in (pod.get("status") or {})


def test_constructor_and_config_errors_are_value_errors(tmp_path: pathlib.Path, session_config: pathlib.Path) -> None:
    for missing in ("tokens", "resources"):
        cfg = {"tokens": {}, "resources": {}}
        del cfg[missing]
        path = tmp_path / f"no-{missing}.json"
        path.write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=f"'{missing}'"):
            GridSessionManager("u", str(path))
    bad = tmp_path / "bad-resource.json"
    bad.write_text(json.dumps({"tokens": {}, "resources": {"r": {"node": "a", "nodeSelector": {"x": "y"}}}}))
    with pytest.raises(ValueError, match=r"resources\['r'\]"):
        GridSessionManager("u", str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"tokens": {}, "resources": {"r": "n"}}))
    manager = GridSessionManager("u", str(good))
    no_grid = tmp_path / "no-grid.json"
    no_grid.write_text(json.dumps({"airgen": {}}))
    with pytest.raises(ValueError, match="'grid'"):
        manager.create_config(str(no_grid), "s")
    assert manager.create_config(str(session_config), "s")["session_id"] == "s"
    with pytest.raises(ValueError, match="session_id"):
        asyncio.run(manager.start_session("Not_A_Name", "r", str(session_config)))
    with pytest.raises(ValueError, match="user_id"):
        GridSessionManager("", str(good))


async def test_gridctl_start_list_get_stop(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, kubeconfig: pathlib.Path,
    session_config: pathlib.Path, capsys: pytest.CaptureFixture[str],
) -> None:
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    base = ["--kubeconfig", str(kubeconfig)]
    rc = await asyncio.to_thread(
        gridctl, [*base, "session", "start", "cli-1", "--node", "worker-1", "--config", str(session_config), "--user", "bob"]
    )
    assert rc == 0 and "gridsession.gridop.io/cli-1 created" in capsys.readouterr().out
    await eventually(lambda: api.get(resources.PODS, "cli-1", NAMESPACE))
    await Kubelet(api).run("cli-1", "worker-1", "172.18.0.3")
    await eventually(lambda: _phase(api, "cli-1", "Running"))

    assert await asyncio.to_thread(gridctl, [*base, "session", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "USER", "NODE", "NODE-IP", "LAST-ACTIVE", "AGE", "REASON"]
    assert out[1].split()[:5] == ["cli-1", "Running", "bob", "worker-1", "172.18.0.3"]

    assert await asyncio.to_thread(gridctl, [*base, "session", "get", "cli-1", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["phase"] == "Running"
    assert await asyncio.to_thread(gridctl, [*base, "gs", "ls", "-o", "yaml", "--user", "bob"]) == 0
    listed = yaml.safe_load(capsys.readouterr().out)
    assert listed["kind"] == "List" and [g["metadata"]["name"] for g in listed["items"]] == ["cli-1"]
    assert await asyncio.to_thread(gridctl, [*base, "session", "list", "-o", "name"]) == 0
    assert capsys.readouterr().out == "gridsession.gridop.io/cli-1\n"
    assert await asyncio.to_thread(gridctl, [*base, "session", "list", "-A", "-o", "wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert wide[0].split()[0] == "NAMESPACE" and wide[0].split()[-4:] == ["TENANT", "SHARING", "ATTACHED", "CONSOLE"]
    assert wide[1].split()[:3] == [NAMESPACE, "cli-1", "Running"]
    assert await asyncio.to_thread(gridctl, [*base, "session", "list", "--user", "nobody"]) == 0
    assert capsys.readouterr().err.startswith("No sessions found")

    assert await asyncio.to_thread(gridctl, [*base, "session", "stop", "cli-1"]) == 0
    await eventually(lambda: _absent(api, "cli-1"))
    assert await asyncio.to_thread(gridctl, [*base, "session", "get", "cli-1"]) == 1
    assert "not found" in capsys.readouterr().err

    # Bad input never reaches the cluster.
    rc = await asyncio.to_thread(
        gridctl, [*base, "session", "start", "Bad_Name", "--node", "w", "--config", str(session_config)]
    )
    assert rc == 2 and "session_id" in capsys.readouterr().err


async def _phase(api: KubeClient, name: str, phase: str) -> bool:
    gs = await api.get(resources.GRIDSESSIONS, name, NAMESPACE)
    return (gs or {}).get("status", {}).get("phase") == phase


async def test_a_start_that_is_stalled_returns_at_once_with_the_reason(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, kubeconfig: pathlib.Path,
    session_config: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session on a node that does not exist is Stalled (NodeNotFound): the SDK and `--wait` say so
    at once instead of waiting out their 300-second default."""
    config = tmp_path / "resources.json"
    config.write_text(json.dumps({"tokens": {"n": ""}, "resources": {"n": "no-such-node"}, "namespace": NAMESPACE}))
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with GridSessionManager("alice", str(config), access=access) as manager:
        assert manager.start_timeout >= 300
        assert await manager.start_session("stuck-1", "n", str(session_config)) is False
    assert loop.time() - began < 30
    assert "Stalled: NodeNotFound" in caplog.text and "no-such-node" in caplog.text

    began = loop.time()
    rc = await asyncio.to_thread(gridctl, ["--kubeconfig", str(kubeconfig), "session", "start", "stuck-2", "--node",
                                           "no-such-node", "--config", str(session_config), "--wait"])
    assert rc == 1 and loop.time() - began < 30
    err = capsys.readouterr().err
    assert err.startswith("Error: stuck-2 did not start: Stalled: NodeNotFound: ") and "no-such-node" in err
