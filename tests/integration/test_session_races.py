"""Sessions under contention, from many OS processes (not one event loop), and the lifecycle
decisions around leftovers: the API server's create decides who initialized a session; shared
attachments never conflict; Stopped leftovers are replaced, Terminating ones refused; a session
may close itself when its last client leaves; the blocking API works with `with`."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pathlib

import kmock
import pytest

from gridop.client import (
    GridSessionManager,
    SessionStartError,
    SyncGridSessionManager,
)
from gridop.client import (
    SessionInitializationBehavior as B,
)
from gridop.kube import ClusterAccess, KubeClient, resources

from .conftest import NAMESPACE, Kubelet, eventually, gridsession, seed

CLIENTS = 12


@pytest.fixture
def config_files(tmp_path: pathlib.Path) -> tuple[str, str]:
    res = tmp_path / "resources.json"
    res.write_text(json.dumps({"tokens": {}, "resources": {"node0": "worker-1"}, "namespace": NAMESPACE}))
    sess = tmp_path / "session.json"
    sess.write_text(json.dumps({"airgen": {}, "grid": {}}))
    return str(res), str(sess)


def _client(server: str, res: str, sess: str, name: str, behavior: int, index: int,
            replies: multiprocessing.Queue, leave: multiprocessing.Event) -> None:
    """One client process: open the session, report what it was told, hold on until told to leave."""
    access = ClusterAccess(server=server, namespace=NAMESPACE)
    with SyncGridSessionManager("alice", res, access=access, start_timeout=60) as manager:
        try:
            session = manager.open_session(name, "node0", sess, B(behavior), client_id=f"client-{index}")
        except Exception as exc:  # reported, not raised: the parent judges
            replies.put((index, type(exc).__name__, str(exc)))
            return
        replies.put((index, "ok", session.new_session_initialized))
        leave.wait(60)
        session.detach()
        replies.put((index, "detached", None))


def _race(server: str, res: str, sess: str, name: str, behavior: B, clients: int) -> tuple[list, multiprocessing.Event,
                                                                                          list, multiprocessing.Queue]:
    ctx = multiprocessing.get_context("spawn")
    replies, leave = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_client, args=(server, res, sess, name, int(behavior), i, replies, leave))
             for i in range(clients)]
    for p in procs:
        p.start()
    return [replies.get(timeout=90) for _ in procs], leave, procs, replies


async def test_racing_auto_clients_one_initializes_all_attach(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    server = str(emulator.url).rstrip("/")
    outcomes, leave, procs, replies = await asyncio.to_thread(_race, server, res, sess, "raced", B.AUTO, CLIENTS)
    assert all(kind == "ok" for _, kind, _ in outcomes), outcomes
    assert sorted(flag for _, _, flag in outcomes) == [False] * (CLIENTS - 1) + [True]
    gs = await api.get(resources.GRIDSESSIONS, "raced", NAMESPACE)
    held = [k for k in gs["metadata"].get("annotations", {}) if k.startswith("attach.gridop.io/")]
    assert len(held) == CLIENTS  # every attachment landed, none lost to a conflict

    leave.set()  # all detach at once: none fails, none is left behind
    detached = await asyncio.to_thread(lambda: [replies.get(timeout=60) for _ in procs])
    assert sorted(i for i, kind, _ in detached if kind == "detached") == list(range(CLIENTS))
    for p in procs:
        await asyncio.to_thread(p.join, 30)
    assert [p.exitcode for p in procs] == [0] * CLIENTS
    gs = await api.get(resources.GRIDSESSIONS, "raced", NAMESPACE)
    assert not [k for k in gs["metadata"].get("annotations", {}) if k.startswith("attach.gridop.io/")]


async def test_racing_initializers_exactly_one_wins(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    server = str(emulator.url).rstrip("/")
    outcomes, leave, procs, _ = await asyncio.to_thread(
        _race, server, res, sess, "init-race", B.INITIALIZE_SERVER_SESSION, 8)
    leave.set()
    for p in procs:
        await asyncio.to_thread(p.join, 60)
    winners = [o for o in outcomes if o[1] == "ok"]
    assert len(winners) == 1 and winners[0][2] is True, outcomes
    assert all(kind == "SessionAlreadyExistsError" for _, kind, _ in outcomes if kind != "ok"), outcomes


def manager(emulator: kmock.KubernetesEmulator, res: str) -> GridSessionManager:
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)
    return GridSessionManager("alice", res, access=access, start_timeout=20)


async def test_a_stopped_leftover_is_replaced_and_a_terminating_one_refused(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    res, sess = config_files
    async with manager(emulator, res) as m:
        assert await m.start_session("again", "node0", sess) is True
        first_uid = (await api.get(resources.GRIDSESSIONS, "again", NAMESPACE))["metadata"]["uid"]
        await api.patch(resources.GRIDSESSIONS, "again", {"spec": {"maxLifetimeSeconds": 1}}, NAMESPACE)
        await eventually(lambda: _phase(api, "again", "Stopped"))
        assert await m.list_sessions() == []

        # A new run under the same name replaces the leftover: AUTO initializes a fresh session.
        async with await m.open_session("again", "node0", sess, B.AUTO) as shared:
            assert shared.new_session_initialized is True
            gs = await api.get(resources.GRIDSESSIONS, "again", NAMESPACE)
            assert gs["metadata"]["uid"] != first_uid and gs["status"]["phase"] == "Running"

    # A session being deleted (held here by a foreign finalizer) is refused with its state.
    seed(emulator, "gridop.io/v1beta1/gridsessions", {
        **gridsession("leaving", user="alice", node="worker-1"),
        "metadata": {"name": "leaving", "namespace": NAMESPACE, "resourceVersion": "1",
                     "finalizers": ["example.com/hold"], "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Stopping"},
    })
    async with manager(emulator, res) as m:
        assert await m.start_session("leaving", "node0", sess) is False
        assert await m.list_sessions() == []
        with pytest.raises(SessionStartError, match=r"'leaving' is being deleted \(phase Stopping\)"):
            await m.open_session("leaving", "node0", sess, B.AUTO)


async def test_close_when_unused_stops_the_session_after_the_last_client_leaves(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files,
    tmp_path: pathlib.Path,
) -> None:
    _, sess = config_files
    res = tmp_path / "closing.json"
    res.write_text(json.dumps({"tokens": {}, "namespace": NAMESPACE,
                               "resources": {"node0": {"node": "worker-1", "closeWhenUnused": True}}}))
    async with manager(emulator, str(res)) as m:
        assert await m.start_session("unused", "node0", sess) is True
        await asyncio.sleep(1.5)
        assert await _phase(api, "unused", "Running")  # nobody attached yet: it keeps running
        shared = await m.open_session("unused", "node0", sess, B.ATTACH_TO_SERVER_SESSION, client_id="only")
        await eventually(lambda: _attached(api, "unused", ["only"]))
        await shared.detach()
        st = await eventually(lambda: _phase(api, "unused", "Stopped"))
        assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "Unused"


async def test_the_blocking_api_works_with_with(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, auto_kubelet: Kubelet, config_files
) -> None:
    """No event loop of the caller's: plain `with` blocks, as in the reference (run in a thread
    here, so the operator and kubelet keep running on the test's loop)."""
    res, sess = config_files
    access = ClusterAccess(server=str(emulator.url).rstrip("/"), namespace=NAMESPACE)

    def script() -> tuple[bool, list[str], list[dict]]:
        with SyncGridSessionManager("alice", res, access=access, start_timeout=20) as m:
            with m.open_session("blocking", "node0", sess) as shared:
                created = shared.new_session_initialized
                names = [s["session_id"] for s in m.list_sessions()]
            return created, names, m.list_sessions()

    created, names, after = await asyncio.wait_for(asyncio.to_thread(script), 90)
    assert created is True and names == ["blocking"]
    assert after == []  # AUTO creator, nobody else attached: leaving closed it


async def _phase(api: KubeClient, name: str, phase: str) -> dict | None:
    gs = await api.get(resources.GRIDSESSIONS, name, NAMESPACE)
    st = (gs or {}).get("status") or {}
    return st if st.get("phase") == phase else None


async def _attached(api: KubeClient, name: str, clients: list[str]) -> bool:
    gs = await api.get(resources.GRIDSESSIONS, name, NAMESPACE)
    return [a["client"] for a in (gs or {}).get("status", {}).get("attachedClients") or []] == clients
