"""Phase rules: given a session and what exists, then these actions and this status."""

from __future__ import annotations

import datetime

from gridop.sessions.rules import Do, Observed, decide

from .sessions import NOW, SETTINGS, ago, running_pod, session

NODE = {"metadata": {"name": "w1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
FRESH_TOKEN = NOW + datetime.timedelta(hours=23)


def observed(**kw) -> Observed:
    defaults = {"pinned_node": NODE, "token_expires": FRESH_TOKEN, "config_map": None}
    defaults.update(kw)
    return Observed(**defaults)


def ready(decision):
    return next(c for c in decision.status.conditions if c.type == "Ready")


def test_a_new_session_creates_its_children_and_starts() -> None:
    d = decide(session(), Observed(pinned_node=NODE), now=NOW, settings=SETTINGS)
    assert d.actions == [Do.APPLY_CONFIG_MAP, Do.ISSUE_TOKEN, Do.CREATE_POD]
    assert d.status.phase == "Starting"
    assert d.status.observed_generation == 3
    assert ready(d).status == "False" and ready(d).reason == "PodCreating"


def test_ports_add_a_service() -> None:
    s = session(workload={"ports": [{"name": "http", "containerPort": 80}]})
    assert Do.APPLY_SERVICE in decide(s, observed(), now=NOW, settings=SETTINGS).actions


def test_a_ready_pod_makes_the_session_running_with_node_and_ip() -> None:
    s = session(status={"phase": "Starting", "podName": "s1"})
    from gridop.sessions import plan

    cm = plan.config_map(s)
    d = decide(s, observed(pod=running_pod(), pod_node=NODE, config_map=cm), now=NOW, settings=SETTINGS)
    assert d.actions == []
    assert d.status.phase == "Running"
    assert (d.status.node_name, d.status.node_ip, d.status.start_time) == ("w1", "10.0.0.1", NOW)
    assert ready(d).status == "True"
    assert d.status.conditions[0].type == "Ready"
    assert [e.reason for e in d.events] == ["Running"]


def test_a_pod_that_is_not_ready_yet_keeps_the_session_starting_with_the_kubelet_reason() -> None:
    pod = running_pod(ready=False, containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}])
    d = decide(session(status={"phase": "Starting"}), observed(pod=pod, pod_node=NODE), now=NOW, settings=SETTINGS)
    assert d.status.phase == "Starting"
    assert (ready(d).reason, ready(d).message) == ("ImagePullBackOff", "no such image")


def test_idle_session_stops_and_then_reports_stopped() -> None:
    s = session(status={"phase": "Running", "startTime": ago(120), "lastActiveTime": ago(61)}, idleTimeoutSeconds=60)
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=SETTINGS)
    assert d.status.phase == "Stopping" and Do.DELETE_POD in d.actions
    assert ready(d).reason == "IdleTimeout"

    stopping = session(status=d.status.to_kube(), idleTimeoutSeconds=60)
    d2 = decide(stopping, observed(pod=None), now=NOW, settings=SETTINGS)
    assert d2.status.phase == "Stopped" and d2.status.stop_time == NOW
    assert ready(d2).reason == "IdleTimeout"


def test_a_client_touch_keeps_the_session_alive() -> None:
    s = session(
        status={"phase": "Running", "startTime": ago(120), "lastActiveTime": ago(90)},
        annotations={"gridop.io/last-active": ago(10)},
        idleTimeoutSeconds=60,
    )
    slow_resync = SETTINGS.model_copy(update={"resync_seconds": 300.0})
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=slow_resync)
    assert d.status.phase == "Running"
    assert d.status.last_active_time == NOW - datetime.timedelta(seconds=10)
    assert 49 < d.requeue_after <= 51  # woken at the idle deadline, not at the next resync


def test_max_lifetime_stops_even_an_active_session() -> None:
    s = session(
        status={"phase": "Running", "startTime": ago(3601)},
        annotations={"gridop.io/last-active": ago(0)},
        maxLifetimeSeconds=3600,
    )
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=SETTINGS)
    assert (d.status.phase, ready(d).reason) == ("Stopping", "MaxLifetimeExceeded")


def test_a_vanished_pod_is_recreated_within_the_budget() -> None:
    s = session(status={"phase": "Running", "podName": "s1", "recoveries": 0}, maxRecoveries=2)
    d = decide(s, observed(pod=None), now=NOW, settings=SETTINGS)
    assert Do.CREATE_POD in d.actions
    assert (d.status.phase, d.status.recoveries, ready(d).reason) == ("Starting", 1, "PodLost")


def test_pod_loss_past_the_budget_fails_the_session() -> None:
    s = session(status={"phase": "Running", "podName": "s1", "recoveries": 2}, maxRecoveries=2)
    d = decide(s, observed(pod=None), now=NOW, settings=SETTINGS)
    assert Do.CREATE_POD not in d.actions
    assert d.status.phase == "Failed"
    assert "recovery budget of 2 spent" in ready(d).message


def test_fail_policy_fails_at_the_first_loss() -> None:
    s = session(status={"phase": "Running", "podName": "s1"}, podLossPolicy="Fail")
    pod = running_pod(phase="Failed", reason="Evicted", message="low on memory")
    d = decide(s, observed(pod=pod, pod_node=NODE), now=NOW, settings=SETTINGS)
    assert d.status.phase == "Failed" and Do.DELETE_POD in d.actions
    assert ready(d).reason == "PodEvicted" and "podLossPolicy is Fail" in ready(d).message


def test_a_pod_on_a_deleted_node_is_force_deleted_as_node_lost() -> None:
    s = session(status={"phase": "Running", "podName": "s1"})
    d = decide(s, observed(pod=running_pod(), pod_node=None), now=NOW, settings=SETTINGS)
    assert Do.FORCE_DELETE_POD in d.actions
    assert (ready(d).reason, d.status.recoveries, d.status.pod_name) == ("NodeLost", 1, None)


def test_a_not_ready_node_is_reported_while_the_pod_still_runs() -> None:
    sick = {"metadata": {"name": "w1"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    s = session(status={"phase": "Running", "podName": "s1", "startTime": ago(5)})
    d = decide(s, observed(pod=running_pod(), pod_node=sick), now=NOW, settings=SETTINGS)
    assert d.status.phase == "Running" and ready(d).reason == "NodeNotReady"


def test_unknown_node_and_unusable_keys_land_in_conditions() -> None:
    d = decide(session(), Observed(pinned_node=None), now=NOW, settings=SETTINGS)
    assert (d.status.phase, ready(d).reason, d.actions) == ("Pending", "NodeNotFound", [])
    sched = next(c for c in d.status.conditions if c.type == "Scheduled")
    assert sched.status == "False"

    d = decide(session(), Observed(pinned_node=NODE, signing_key_error="bad pem"), now=NOW, settings=SETTINGS)
    assert (d.status.phase, ready(d).reason) == ("Pending", "SigningKeyUnavailable")
    assert "bad pem" in ready(d).message


def test_no_matching_node_for_the_selector() -> None:
    s = session(node=None, nodeSelector={"pool": "gpu"})
    d = decide(s, Observed(matching_nodes=0), now=NOW, settings=SETTINGS)
    assert (d.status.phase, ready(d).reason) == ("Pending", "NoMatchingNode")


def test_a_workload_change_replaces_the_pod() -> None:
    s = session(status={"phase": "Running", "podName": "s1"}, workload={"image": "busybox:1.37"})
    d = decide(s, observed(pod=running_pod(), pod_node=NODE), now=NOW, settings=SETTINGS)
    assert Do.DELETE_POD in d.actions and ready(d).reason == "SpecChanged"


def test_someone_elses_pod_of_the_same_name_is_left_alone() -> None:
    pod = running_pod()
    pod["metadata"]["ownerReferences"] = [{"uid": "other"}]
    d = decide(session(status={"phase": "Starting"}), observed(pod=pod, pod_node=NODE), now=NOW, settings=SETTINGS)
    assert ready(d).reason == "NameConflict"
    assert Do.DELETE_POD not in d.actions and Do.CREATE_POD not in d.actions


def test_stopped_sessions_are_deleted_after_their_ttl() -> None:
    s = session(status={"phase": "Stopped", "stopTime": ago(30)}, ttlSecondsAfterStopped=60)
    d = decide(s, observed(), now=NOW, settings=SETTINGS)
    assert d.actions == [] and 29 < d.requeue_after <= 30
    s = session(status={"phase": "Stopped", "stopTime": ago(61)}, ttlSecondsAfterStopped=60)
    assert decide(s, observed(), now=NOW, settings=SETTINGS).actions == [Do.DELETE_SESSION]


def test_tokens_are_renewed_before_they_expire() -> None:
    s = session(status={"phase": "Starting"})
    soon = NOW + datetime.timedelta(hours=1)  # less than a third of the 24h lifetime left
    assert Do.ISSUE_TOKEN in decide(s, observed(token_expires=soon), now=NOW, settings=SETTINGS).actions
    assert Do.ISSUE_TOKEN not in decide(s, observed(), now=NOW, settings=SETTINGS).actions


def test_a_short_lived_session_keeps_its_fresh_token() -> None:
    """Its token is issued for maxLifetimeSeconds + 5 min (15 min here): renewal is due after two
    thirds of that, not on every pass (it was: the renewal point used the 24 h default)."""
    s = session(status={"phase": "Running"}, maxLifetimeSeconds=600)
    fresh = NOW + datetime.timedelta(seconds=900)  # just issued
    assert Do.ISSUE_TOKEN not in decide(s, observed(token_expires=fresh), now=NOW, settings=SETTINGS).actions
    aged = NOW + datetime.timedelta(seconds=299)  # two thirds gone
    assert Do.ISSUE_TOKEN in decide(s, observed(token_expires=aged), now=NOW, settings=SETTINGS).actions
