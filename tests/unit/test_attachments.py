"""Attachment leases as the operator reads them."""

import datetime

import pytest

from gridop.sessions import attachments
from gridop.sessions.rules import Do, Observed, decide

from .sessions import NOW, SETTINGS, ago, running_pod, session
from .test_rules import NODE, observed


def lease(client: str, seconds_from_now: float) -> dict[str, str]:
    expires = NOW + datetime.timedelta(seconds=seconds_from_now)
    return {attachments.annotation_key(client): attachments.lease_value("interactive", expires)}


def test_live_leases_are_reported_and_lapsed_ones_pruned() -> None:
    s = session(status={"phase": "Running", "startTime": ago(60)},
                annotations={**lease("a", 30), **lease("b", -1), "attach.gridop.io/junk": "not json"})
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=SETTINGS)
    assert [a.client for a in d.status.attached_clients] == ["a"]
    assert Do.PRUNE_ATTACHMENTS in d.actions and d.expired_attachments == ["attach.gridop.io/b"]
    assert d.requeue_after <= 30.1  # woken when a's lease lapses


def test_a_live_attachment_keeps_an_idle_session_alive() -> None:
    s = session(status={"phase": "Running", "startTime": ago(600), "lastActiveTime": ago(600)},
                annotations=lease("a", 30), idleTimeoutSeconds=60)
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=SETTINGS)
    assert d.status.phase == "Running" and d.status.last_active_time == NOW


def test_once_the_lease_lapses_the_session_can_go_idle() -> None:
    s = session(status={"phase": "Running", "startTime": ago(600), "lastActiveTime": ago(120)},
                annotations=lease("a", -100), idleTimeoutSeconds=60)
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=SETTINGS)
    assert d.status.phase == "Stopping"


@pytest.mark.parametrize("bad", ["", "-x", "a" * 64, "has space", "slash/y"])
def test_client_ids_must_fit_an_annotation_key(bad: str) -> None:
    with pytest.raises(ValueError, match="client_id"):
        attachments.annotation_key(bad)


def test_terminal_sessions_report_no_attachments() -> None:
    s = session(status={"phase": "Stopped", "attachedClients": [{"client": "a", "mode": "x", "expires": NOW.isoformat()}]},
                annotations=lease("a", 30))
    assert decide(s, Observed(), now=NOW, settings=SETTINGS).status.attached_clients == []
