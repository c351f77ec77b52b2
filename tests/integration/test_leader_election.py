"""Only one operator replica leads; a standby takes over when the leader stops renewing."""

from __future__ import annotations

import asyncio

import kmock

from gridop.kube import ClusterAccess, KubeClient, resources
from gridop.kube.lease import LeaderElector
from gridop.operator_main import served_kinds_problem
from gridop.settings import Settings
from tests.emulator import ApiServer, register_crds


def elector(api: KubeClient, identity: str) -> LeaderElector:
    return LeaderElector(api, "gridop-system", "gridop-operator", identity, lease_seconds=1, renew_seconds=0.2)


async def test_one_leader_then_takeover_after_the_lease_expires(emulator: kmock.KubernetesEmulator, api: KubeClient) -> None:
    a, b = elector(api, "pod-a"), elector(api, "pod-b")
    assert await a.try_acquire() is True
    assert await b.try_acquire() is False  # a holds a fresh lease
    assert await a.try_acquire() is True  # renewing keeps it

    lost = asyncio.Event()
    holding = asyncio.create_task(a.hold(lost.set))
    waiting = asyncio.create_task(b.acquire())
    await asyncio.sleep(1.5)
    assert not waiting.done(), "b must not lead while a renews"

    holding.cancel()  # a stops renewing (crashed, partitioned)
    await asyncio.wait_for(waiting, timeout=5)
    lease = await api.get(resources.LEASES, "gridop-operator", "gridop-system")
    assert lease["spec"]["holderIdentity"] == "pod-b"
    assert lease["spec"]["leaseTransitions"] == 1

    # a comes back and notices it no longer leads.
    assert await a.try_acquire() is False
    await asyncio.wait_for(a.hold(lost.set), timeout=5)
    assert lost.is_set()


async def test_release_hands_over_immediately(emulator: kmock.KubernetesEmulator, api: KubeClient) -> None:
    a, b = elector(api, "pod-a"), elector(api, "pod-b")
    a.lease_seconds = b.lease_seconds = 60
    assert await a.try_acquire()
    await a.release()
    assert await b.try_acquire() is True


async def test_a_stale_read_cannot_steal_the_lease(emulator: kmock.KubernetesEmulator, api: KubeClient) -> None:
    a = elector(api, "pod-a")
    assert await a.try_acquire()
    lease = await api.get(resources.LEASES, "gridop-operator", "gridop-system")
    await a.try_acquire()  # a renews: the resourceVersion moves on
    stale = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "thief"}}
    from gridop.kube import Conflict

    try:
        await api.patch(resources.LEASES, "gridop-operator", stale, "gridop-system")
    except Conflict:
        pass
    else:
        raise AssertionError("a write with a stale resourceVersion must conflict")
    assert (await api.get(resources.LEASES, "gridop-operator", "gridop-system"))["spec"]["holderIdentity"] == "pod-a"


async def test_an_operator_that_cannot_read_its_kinds_is_not_ready_and_says_why() -> None:
    """CRDs not installed: /readyz stays 503 (Kubernetes keeps the pod out of rotation and the
    rollout waits), and one line says what to do; once installed, the same check passes."""
    async with ApiServer() as emu, kmock.Server(emu):
        emu.resources.load_bundled()
        async with await KubeClient.connect(ClusterAccess(server=str(emu.url).rstrip("/"))) as client:
            problem = await served_kinds_problem(client, Settings(watch_namespaces=["team-a"]))
            assert problem == ("the API server does not serve gridsessions.gridop.io: install the CRDs "
                               "(kubectl apply --server-side -f crds/)")
            register_crds(emu)
            assert await served_kinds_problem(client, Settings(watch_namespaces=["team-a"])) is None
