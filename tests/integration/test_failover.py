"""Two `gridop operator` processes with leader election: how fast leadership moves, measured.

A leader stopped by SIGTERM gives the Lease up as soon as its controllers have stopped, and the
standby leads within its next look (1 s). A leader killed with SIGKILL renews nothing more: the
standby leads 15-17 s after the last renewal it saw, 10-17 s after the kill. Either way the new
leader reconciles what was created meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time

import kmock
import pytest

from gridop.kube import KubeClient, resources
from tests.emulator import write_kubeconfig

from .conftest import NAMESPACE, eventually, gridsession, node, seed

LEASE = ("gridop-operator", "gridop-system")
LOAD = 30  # sessions created just before the leader is killed


def start_operator(kubeconfig: pathlib.Path, name: str, log: pathlib.Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
    env.update(KUBECONFIG=str(kubeconfig), GRIDOP_LEADER_ELECTION="true", GRIDOP_POD_NAME=name,
               GRIDOP_OPERATOR_NAMESPACE="gridop-system", GRIDOP_METRICS_PORT="0", GRIDOP_LOG_FORMAT="text",
               GRIDOP_WEBHOOK="false")  # two operators on one machine: one webhook port between them
    return subprocess.Popen([sys.executable, "-m", "gridop", "operator"], env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def holder(api: KubeClient) -> str | None:
    lease = await api.get(resources.LEASES, *LEASE)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


async def running(api: KubeClient, name: str) -> bool:
    gs = await api.get(resources.GRIDSESSIONS, name, NAMESPACE)
    return ((gs or {}).get("status") or {}).get("phase") in ("Starting", "Running")


@pytest.mark.timeout(120)
async def test_leadership_moves_at_once_on_sigterm_and_within_the_lease_on_a_kill(
    emulator: kmock.KubernetesEmulator, api: KubeClient, tmp_path: pathlib.Path,
) -> None:
    seed(emulator, "v1/nodes", node("worker-1", "172.18.0.3"))
    kubeconfig = write_kubeconfig(emulator, tmp_path / "kubeconfig", NAMESPACE)
    log = tmp_path / "operators.log"
    procs = {name: start_operator(kubeconfig, name, log) for name in ("op-a", "op-b")}
    try:
        first = await eventually(lambda: holder(api), timeout=30, what="a leader")
        second = "op-b" if first == "op-a" else "op-a"
        await asyncio.sleep(2)  # the standby has seen the Lease

        # SIGTERM: the standby leads at its next look.
        stopped = time.monotonic()
        procs[first].send_signal(signal.SIGTERM)
        await eventually(lambda: _held_by(api, second), timeout=10, interval=0.05, what="the standby leads")
        handover = time.monotonic() - stopped
        assert handover < 3.0, f"leadership moved {handover:.1f}s after SIGTERM"
        assert await asyncio.to_thread(procs[first].wait, 30) == 0

        # A new standby; then the leader is killed outright.
        procs[first] = start_operator(kubeconfig, first, log)
        await asyncio.sleep(3)  # started and looking
        # Under load: a burst of sessions the leader is working through when it is killed.
        creates_before = emulator.count("gridop-operator", "CREATE", "pods")
        for i in range(LOAD):
            await api.create(resources.GRIDSESSIONS, gridsession(f"load-{i}", node="worker-1"), NAMESPACE)
        await eventually(lambda: emulator.count("gridop-operator", "CREATE", "pods") > creates_before, timeout=10,
                         interval=0.01, what="the leader at work")
        procs[second].kill()
        killed = time.monotonic()
        await api.create(resources.GRIDSESSIONS, gridsession("after-kill", node="worker-1"), NAMESPACE)
        await eventually(lambda: _held_by(api, first), timeout=25, interval=0.1, what="the standby leads")
        takeover = time.monotonic() - killed
        assert 9.0 <= takeover <= 18.0, f"the standby led {takeover:.1f}s after the kill"
        names = ["after-kill", *(f"load-{i}" for i in range(LOAD))]
        await eventually(lambda: _all_running(api, names), timeout=30, what="the new leader reconciles them all")
        reconciled = time.monotonic() - killed
        # No work done twice: one pod created per session, across both leaders.
        assert emulator.count("gridop-operator", "CREATE", "pods") - creates_before == LOAD + 1
        print(f"handover after SIGTERM {handover:.2f}s; takeover after SIGKILL {takeover:.1f}s; "
              f"{LOAD + 1} sessions reconciled {reconciled:.1f}s after the kill")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def _all_running(api: KubeClient, names: list[str]) -> bool:
    return all([await running(api, name) for name in names])


async def _held_by(api: KubeClient, name: str) -> bool:
    return await holder(api) == name
