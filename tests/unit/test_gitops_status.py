"""kstatus conditions, and the documented Argo CD health checks run in a real Lua runtime.

The sample objects are not written by hand: they are what the operator's own rules produce for
each situation, so the Lua scripts are checked against what the operator really writes.
"""

from __future__ import annotations

import pathlib
import textwrap
from typing import Any

import lupa
import pytest

from gridop.api.v1beta1.taskbatch import TaskBatchSpec, TaskBatchStatus, TaskCounts
from gridop.api.v1beta1.taskpool import TaskPoolStatus
from gridop.batches import taskbatch_rules as batch
from gridop.batches.taskpool_rules import pool_status
from gridop.sessions import plan
from gridop.sessions.rules import Observed, decide

from .sessions import NOW, SETTINGS, running_pod, session

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE = {"metadata": {"name": "w1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
FRESH = NOW.replace(year=NOW.year + 1)


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run docs/argocd/<kind>.lua as Argo CD does: the object in the global `obj`, a table back."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((ROOT / "docs" / "argocd" / f"{kind}.lua").read_text())
    return str(result["status"]), str(result["message"] or "")


def conditions(status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def session_object(status: Any, generation: int = 3) -> dict[str, Any]:
    return {"metadata": {"name": "s1", "generation": generation}, "status": status.to_kube()}


def running() -> Any:
    s = session(status={"phase": "Starting", "podName": "s1"})
    obs = Observed(pod=running_pod(), pod_node=NODE, pinned_node=NODE, config_map=plan.config_map(s), token_expires=FRESH)
    return decide(s, obs, now=NOW, settings=SETTINGS).status


def test_a_running_session_is_ready_reconciled_and_healthy() -> None:
    st = running()
    assert conditions(st) == {
        "Ready": ("True", "Running"), "Scheduled": ("True", "Scheduled"),
        "Reconciling": ("False", "AsExpected"), "Stalled": ("False", "AsExpected"),
    }
    assert st.conditions[0].type == "Ready"
    assert all(c.observed_generation == 3 for c in st.conditions)
    assert health("gridsession", session_object(st)) == ("Healthy", "session running on node 'w1' (10.0.0.1)")


def test_a_starting_session_is_reconciling_and_progressing() -> None:
    st = decide(session(), Observed(pinned_node=NODE), now=NOW, settings=SETTINGS).status
    assert conditions(st)["Reconciling"] == ("True", "PodCreating")
    assert conditions(st)["Stalled"][0] == "False"
    assert health("gridsession", session_object(st)) == ("Progressing", "creating pod 's1'")


@pytest.mark.parametrize(
    ("observed", "spec", "reason"),
    [
        (Observed(pinned_node=None), {}, "NodeNotFound"),
        (Observed(matching_nodes=0), {"node": None, "nodeSelector": {"pool": "gpu"}}, "NoMatchingNode"),
        (Observed(pinned_node=NODE, signing_key_error="bad pem"), {}, "SigningKeyUnavailable"),
    ],
)
def test_a_session_the_operator_cannot_place_is_stalled_and_degraded(observed: Observed, spec: dict, reason: str) -> None:
    st = decide(session(**spec), observed, now=NOW, settings=SETTINGS).status
    assert conditions(st)["Stalled"] == ("True", reason)
    assert conditions(st)["Reconciling"][0] == "False"
    status, message = health("gridsession", session_object(st))
    assert status == "Degraded" and message


def test_a_failed_session_never_reads_as_healthy() -> None:
    s = session(status={"phase": "Running", "podName": "s1"}, podLossPolicy="Fail")
    obs = Observed(pod=None, pinned_node=NODE, config_map=plan.config_map(s), token_expires=FRESH)
    st = decide(s, obs, now=NOW, settings=SETTINGS).status
    assert st.phase == "Failed"
    assert conditions(st)["Stalled"] == ("True", "PodLost")
    assert health("gridsession", session_object(st))[0] == "Degraded"
    # ... and it stays that way on later passes.
    later = decide(session(status=st.to_kube(), podLossPolicy="Fail"), obs, now=NOW, settings=SETTINGS).status
    assert health("gridsession", session_object(later))[0] == "Degraded"


def test_a_stopped_session_is_current_and_suspended() -> None:
    s = session(status={"phase": "Stopping", "conditions": [
        {"type": "Ready", "status": "False", "reason": "IdleTimeout", "message": "idle for 600s",
         "lastTransitionTime": NOW.isoformat()}]})
    st = decide(s, Observed(pinned_node=NODE), now=NOW, settings=SETTINGS).status
    assert st.phase == "Stopped"
    assert (conditions(st)["Reconciling"][0], conditions(st)["Stalled"][0]) == ("False", "False")
    assert health("gridsession", session_object(st)) == ("Suspended", "Stopped: idle for 600s")


def test_a_spec_change_not_yet_observed_is_progressing() -> None:
    assert health("gridsession", session_object(running(), generation=4))[0] == "Progressing"
    assert health("gridsession", {"metadata": {"generation": 1}}) == ("Progressing", "Waiting for the operator")


META = {"name": "b", "namespace": "ns", "uid": "u", "generation": 2}
SUBMITTED = {"total": "10", "submitted": "10"}


def batch_status(counts: TaskCounts, data_meta: dict[str, str], error: str | None = None, **spec: Any) -> Any:
    s = TaskBatchSpec.model_validate({"handler": "m:f", **spec})
    d = batch.decide(META, s, TaskBatchStatus(), counts, data_meta, data_plane_error=error, now=NOW, resync=30)
    return d.status


@pytest.mark.parametrize(
    ("counts", "data_meta", "error", "spec", "reconciling", "stalled", "argo"),
    [
        (TaskCounts(total=0), {}, None, {}, "True", "False", "Progressing"),
        (TaskCounts(pending=6, finished=4, total=10), SUBMITTED, None, {}, "True", "False", "Progressing"),
        (TaskCounts(finished=10, total=10), SUBMITTED, None, {}, "False", "False", "Healthy"),
        (TaskCounts(finished=8, failed=2, total=10), SUBMITTED, None, {}, "False", "True", "Degraded"),
        (TaskCounts(pending=6, finished=4, total=10), SUBMITTED, None, {"suspend": True}, "False", "False", "Suspended"),
        (TaskCounts(), {}, "redis unreachable", {}, "False", "True", "Degraded"),
    ],
)
def test_taskbatch_conditions_and_health(counts, data_meta, error, spec, reconciling, stalled, argo) -> None:
    st = batch_status(counts, data_meta, error, **spec)
    assert (conditions(st)["Reconciling"][0], conditions(st)["Stalled"][0]) == (reconciling, stalled)
    assert health("taskbatch", {"metadata": META, "status": st.to_kube()})[0] == argo


@pytest.mark.parametrize(
    ("workers", "ready", "error", "argo"),
    [(2, 2, None, "Healthy"), (2, 0, None, "Progressing"), (0, 0, "redis unreachable", "Degraded")],
)
def test_taskpool_conditions_and_health(workers: int, ready: int, error: str | None, argo: str) -> None:
    st = pool_status({"generation": 1}, TaskPoolStatus(), 1, TaskCounts(), workers, ready, error, NOW)
    assert health("taskpool", {"metadata": {"generation": 1}, "status": st.to_kube()})[0] == argo


def test_the_docs_carry_the_tested_scripts_verbatim() -> None:
    doc = (ROOT / "docs" / "gitops.md").read_text()
    for kind in ("GridSession", "TaskBatch", "TaskPool"):
        lua = (ROOT / "docs" / "argocd" / f"{kind.lower()}.lua").read_text()
        assert f"resource.customizations.health.gridop.io_{kind}: |\n" + textwrap.indent(lua, "    ") in doc, kind
