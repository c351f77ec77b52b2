"""The API request budget of a session start, counted at the API boundary (the emulator).

The operator reconciles sessions from watch caches: once they are warm, starting a session costs
no API reads at all, and its writes are the children it creates plus two status writes.
"""

from __future__ import annotations

import asyncio

from gridop.kube import KubeClient, resources

from .conftest import NAMESPACE, eventually, gridsession, seed

OPERATOR = "gridop-operator"  # the operator's User-Agent
N = 8


def reads(emulator) -> int:
    return emulator.count(OPERATOR, "FETCH") + emulator.count(OPERATOR, "LIST")


def writes(emulator) -> int:
    total = sum(emulator.count(OPERATOR, action) for action in ("CREATE", "UPDATE", "DELETE"))
    return total - emulator.count(OPERATOR, "CREATE", "events")


async def test_starting_sessions_reads_nothing_and_writes_only_what_changes(
    emulator, operator, api: KubeClient, auto_kubelet
) -> None:
    # Unrelated pods: a label-selected watch never brings them to the operator.
    for i in range(20):
        seed(emulator, "v1/pods", {"metadata": {"name": f"other-{i}", "namespace": NAMESPACE}, "spec": {}})
    await asyncio.sleep(1.0)  # caches warm
    before_reads, before_writes = reads(emulator), writes(emulator)

    for i in range(N):
        ports = [{"name": "http", "containerPort": 8080}]
        await api.create(resources.GRIDSESSIONS, gridsession(f"b-{i}", node="worker-1", workload={"ports": ports}),
                         NAMESPACE)

    async def all_ready() -> bool:
        items = await api.list(resources.GRIDSESSIONS, NAMESPACE)
        return len(items) == N and all((s.get("status") or {}).get("phase") == "Running" for s in items)

    await eventually(all_ready, timeout=30)
    await asyncio.sleep(1.5)  # deferred writes and echoes settle

    used_reads = reads(emulator) - before_reads
    used_writes = writes(emulator) - before_writes
    assert used_reads / N <= 1.0, f"{used_reads} API reads for {N} session starts"
    # 4 children (ConfigMap, Secret, Service, Pod) and at most 2 status writes each.
    assert used_writes / N <= 6.0, f"{used_writes} API writes for {N} session starts: {emulator.counts}"
    assert emulator.count(OPERATOR, "CREATE", "pods") == N
    assert emulator.count(OPERATOR, "UPDATE", "gridsessions") == 0  # no finalizer, no kopf annotations

    # Every list and watch of pods the operator made was label-selected.
    assert emulator.selectors[(OPERATOR, "pods")] == {"gridop.io/session"}
    assert None not in emulator.selectors[(OPERATOR, "secrets")]
