"""Session sharing: initialization behaviours, attachment leases, exclusive sessions."""

from __future__ import annotations

import json
import pathlib

import kmock
import pytest

from gridop.client import (
    GridSessionManager,
    SessionAlreadyExistsError,
    SessionBusyError,
    SessionNotFoundError,
)
from gridop.client import (
    SessionInitializationBehavior as B,
)
from gridop.kube import ClusterAccess, KubeClient, resources

from .conftest import NAMESPACE, Kubelet, eventually


@pytest.fixture
def config_files(tmp_path: pathlib.Path) -> tuple[str, str]:
    res = tmp_path / "resources.json"
    res.write_text(json.dumps({"tokens": {}, "resources": {"node0": "worker-1"}, "namespace": NAMESPACE}))
    exclusive = tmp_path / "exclusive.json"
    exclusive.write_text(json.dumps({"tokens": {}, "resources": {"node0": {"node": "worker-1", "sharing": "Exclusive"}},
                                     "namespace": NAMESPACE}))
    sess = tmp_path / "session.json"
    sess.write_text(json.dumps({"airgen": {}, "grid": {}}))
    return str(res), str(sess)


def manager(emulator: kmock.KubernetesEmulator, res: str, user: str = "alice") -> GridSessionManager:
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    return GridSessionManager(user, res, access=access, start_timeout=20)


async def attached(api: KubeClient, name: str) -> list[str]:
    gs = await api.get(resources.GRIDSESSIONS, name, NAMESPACE)
    return [a["client"] for a in (gs or {}).get("status", {}).get("attachedClients") or []]


async def test_auto_creates_then_attaches_and_the_last_one_out_closes(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    async with manager(emulator, res) as m1, manager(emulator, res) as m2:
        first = await m1.open_session("shared-1", "node0", sess, B.AUTO, client_id="plugin-a")
        assert first.new_session_initialized is True
        second = await m2.open_session("shared-1", "node0", sess, B.AUTO, client_id="plugin-b")
        assert second.new_session_initialized is False
        await eventually(lambda: _equals(attached(api, "shared-1"), ["plugin-a", "plugin-b"]))

        with pytest.raises(SessionAlreadyExistsError) as exc:
            await m2.open_session("shared-1", "node0", sess, B.INITIALIZE_SERVER_SESSION)
        assert exc.value.code == "ALREADY_EXISTS"

        # The creator leaves first: others are attached, so it only detaches.
        await first.__aexit__(None, None, None)
        await eventually(lambda: _equals(attached(api, "shared-1"), ["plugin-b"]))
        assert await api.get(resources.GRIDSESSIONS, "shared-1", NAMESPACE) is not None
        # The attached client leaves: it never closes what it did not create.
        await second.__aexit__(None, None, None)
        await eventually(lambda: _equals(attached(api, "shared-1"), []))
        assert await api.get(resources.GRIDSESSIONS, "shared-1", NAMESPACE) is not None


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


async def test_attach_behaviours_need_an_open_session(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    async with manager(emulator, res) as m:
        for behavior in (B.ATTACH_TO_SERVER_SESSION, B.ATTACH_TO_SESSION_THEN_CLOSE):
            with pytest.raises(SessionNotFoundError) as exc:
                await m.open_session("absent", "node0", sess, behavior)
            assert exc.value.code == "NOT_FOUND"
        assert await api.get(resources.GRIDSESSIONS, "absent", NAMESPACE) is None


async def test_initialize_then_detach_leaves_it_running_and_attach_then_close_stops_it(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    async with manager(emulator, res) as m:
        async with await m.open_session("shared-2", "node0", sess, B.INITIALIZE_SESSION_THEN_DETACH) as s:
            assert s.new_session_initialized is True
        gs = await api.get(resources.GRIDSESSIONS, "shared-2", NAMESPACE)
        assert gs is not None and gs["status"]["phase"] == "Running"

        async with await m.open_session("shared-2", "node0", sess, B.ATTACH_TO_SESSION_THEN_CLOSE) as s:
            assert s.new_session_initialized is False
        await eventually(lambda: _gone(api, "shared-2"))


async def _gone(api: KubeClient, name: str) -> bool:
    return await api.get(resources.GRIDSESSIONS, name, NAMESPACE) is None


async def test_exclusive_sessions_admit_one_client_at_a_time(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files, tmp_path
) -> None:
    _, sess = config_files
    res = str(tmp_path / "exclusive.json")
    async with manager(emulator, res) as m1, manager(emulator, res, user="alice") as m2:
        holder = await m1.open_session("solo", "node0", sess, B.INITIALIZE_SESSION_THEN_DETACH, client_id="one")
        with pytest.raises(SessionBusyError, match="Exclusive and attached to one"):
            await m2.open_session("solo", "node0", sess, B.ATTACH_TO_SERVER_SESSION, client_id="two")
        await holder.detach()
        other = await m2.open_session("solo", "node0", sess, B.ATTACH_TO_SERVER_SESSION, client_id="two")
        await other.detach()


async def test_a_crashed_client_lease_lapses_and_is_pruned(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    async with manager(emulator, res) as m:
        s = await m.open_session("shared-3", "node0", sess, B.INITIALIZE_SESSION_THEN_DETACH, client_id="crashy",
                                 lease_seconds=3)
        await eventually(lambda: _equals(attached(api, "shared-3"), ["crashy"]))
        await s._stop_renewing()  # the client process dies: no detach, no renewals
        await eventually(lambda: _equals(attached(api, "shared-3"), []), timeout=10)
        gs = await api.get(resources.GRIDSESSIONS, "shared-3", NAMESPACE)
        assert not any(k.startswith("attach.gridop.io/") for k in gs["metadata"].get("annotations", {}))
