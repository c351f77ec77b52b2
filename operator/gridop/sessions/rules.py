"""Phase rules: from what exists to what to do and what to report.

`decide()` is pure: it takes the session, the objects observed in the cluster and the time,
and returns the actions that close the gap plus the status to write. The reconciler gathers the
observation and carries the actions out; nothing here talks to Kubernetes.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

from ..api.v1beta1 import GridSession, GridSessionStatus, Phase, find_condition, set_condition, set_progress
from ..api.v1beta1.gridsession import ConsoleURLs, PodLossPolicy
from ..settings import Settings
from . import attachments, plan
from .policy import last_active_time, next_deadline, stop_reason

READY = "Ready"
SCHEDULED = "Scheduled"

ACTIVE_PHASES = (Phase.STARTING, Phase.RUNNING)
FAST_REQUEUE = 2.0
PLACEMENT_RETRY = 15.0


class Do(str, enum.Enum):
    APPLY_CONFIG_MAP = "ApplyConfigMap"
    ISSUE_TOKEN = "IssueToken"
    APPLY_SERVICE = "ApplyService"
    CREATE_POD = "CreatePod"
    DELETE_POD = "DeletePod"
    FORCE_DELETE_POD = "ForceDeletePod"
    DELETE_SESSION = "DeleteSession"
    PRUNE_ATTACHMENTS = "PruneAttachments"


@dataclasses.dataclass
class Observed:
    """What the reconciler found; None means "does not exist"."""

    pod: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    config_map: dict[str, Any] | None = None
    token_expires: datetime.datetime | None = None  # None: no token Secret (or unreadable token)
    pod_node: dict[str, Any] | None = None  # the Node the pod is bound to
    pinned_node: dict[str, Any] | None = None  # spec.node's Node
    matching_nodes: int = 0  # nodes matching spec.nodeSelector
    signing_key_error: str | None = None
    rejected: str | None = None  # the API server refused a child of this generation: what and why


@dataclasses.dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass
class Decision:
    status: GridSessionStatus
    actions: list[Do] = dataclasses.field(default_factory=list)
    expired_attachments: list[str] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def _ready(d: Decision, status: bool, reason: str, message: str, now: datetime.datetime, gen: int | None) -> None:
    d.status.conditions = set_condition(
        d.status.conditions, type=READY, status=status, reason=reason, message=message, now=now, generation=gen
    )
    # Ready first, as kubectl and humans read it.
    d.status.conditions.sort(key=lambda c: c.type != READY)


def _scheduled(d: Decision, status: bool, reason: str, message: str, now: datetime.datetime, gen: int | None) -> None:
    d.status.conditions = set_condition(
        d.status.conditions, type=SCHEDULED, status=status, reason=reason, message=message, now=now, generation=gen
    )


def _pod_condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in pod.get("status", {}).get("conditions") or [] if c.get("type") == type_), None)


def _node_ready(node: dict[str, Any]) -> bool:
    cond = next((c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    return cond is None or cond.get("status") == "True"


def _pod_loss(session: GridSession, observed: Observed) -> tuple[str, str] | None:
    """Why the existing pod counts as lost, or None while it is healthy or starting."""
    pod = observed.pod or {}
    name = pod.get("metadata", {}).get("name")
    st = pod.get("status", {})
    node = pod.get("spec", {}).get("nodeName")
    if node and observed.pod_node is None:
        return "NodeLost", f"node {node!r} of pod {name!r} no longer exists"
    if st.get("phase") == "Unknown":
        return "NodeLost", f"pod {name!r} is in phase Unknown: its node {node!r} stopped reporting"
    if st.get("phase") == "Failed":
        if st.get("reason") == "Evicted":
            return "PodEvicted", f"pod {name!r} was evicted: {st.get('message', '')}".rstrip(": ")
        terminated = next(
            (c.get("state", {}).get("terminated") for c in st.get("containerStatuses") or [] if c.get("state", {}).get("terminated")),
            None,
        ) or {}
        detail = f"exit code {terminated.get('exitCode')}" if "exitCode" in terminated else st.get("message", "")
        return "WorkloadFailed", f"session workload failed ({detail or 'no detail'})"
    return None


def _lose_pod(
    d: Decision, session: GridSession, reason: str, message: str, now: datetime.datetime, gen: int | None
) -> None:
    """Account for a lost pod: recreate it within the budget, or fail the session."""
    spec = session.spec
    d.status.pod_name = None
    d.status.pod_uid = None
    if spec.pod_loss_policy == PodLossPolicy.FAIL or d.status.recoveries >= spec.max_recoveries:
        why = "podLossPolicy is Fail" if spec.pod_loss_policy == PodLossPolicy.FAIL else (
            f"recovery budget of {spec.max_recoveries} spent"
        )
        d.status.phase = Phase.FAILED
        d.status.stop_time = now
        _ready(d, False, reason, f"{message}; {why}", now, gen)
        d.events.append(Event("Warning", reason, f"{message}; session failed ({why})"))
        return
    d.status.recoveries += 1
    d.status.phase = Phase.STARTING
    msg = f"{message}; recreating the pod ({d.status.recoveries}/{spec.max_recoveries})"
    _ready(d, False, reason, msg, now, gen)
    d.events.append(Event("Warning", reason, msg))
    d.requeue(FAST_REQUEUE)


# Ready reasons that mean the operator cannot make progress until someone fixes something.
STALLED_REASONS = frozenset({
    "NodeNotFound", "NoMatchingNode", "SigningKeyUnavailable", "NameConflict", "SpecRejected",
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
})


def decide(
    session: GridSession, observed: Observed, *, now: datetime.datetime, settings: Settings
) -> Decision:
    d = _decide(session, observed, now=now, settings=settings)
    st = d.status
    ready = find_condition(st.conditions, READY)
    why = (ready.reason, ready.message) if ready is not None else ("Pending", "waiting for the operator")
    reconciling = stalled = None
    if st.phase == Phase.FAILED or (why[0] in STALLED_REASONS and st.phase not in (Phase.STOPPED, Phase.STOPPING)):
        stalled = why
    elif st.phase != Phase.STOPPED and not (ready is not None and ready.status == "True"):
        reconciling = why
    st.conditions = set_progress(st.conditions, reconciling=reconciling, stalled=stalled, now=now,
                                 generation=session.metadata.get("generation"))
    return d


@dataclasses.dataclass
class _Pass:
    """One decision in the making: what it reads, and the Decision it fills in."""

    session: GridSession
    observed: Observed
    now: datetime.datetime
    settings: Settings
    d: Decision

    @property
    def st(self) -> GridSessionStatus:
        return self.d.status

    @property
    def gen(self) -> int | None:
        return self.session.metadata.get("generation")

    def ready(self, ok: bool, reason: str, message: str) -> None:
        _ready(self.d, ok, reason, message, self.now, self.gen)

    def scheduled(self, ok: bool, reason: str, message: str) -> None:
        _scheduled(self.d, ok, reason, message, self.now, self.gen)


def _decide(
    session: GridSession, observed: Observed, *, now: datetime.datetime, settings: Settings
) -> Decision:
    """The session's life, stage by stage: each stage returns True when the decision is made."""
    d = Decision(status=session.status.model_copy(deep=True))
    d.status.observed_generation = session.metadata.get("generation")
    p = _Pass(session, observed, now, settings, d)
    _console_urls(p)
    for stage in (_terminal, _stopping, _attachments_and_deadlines, _placement, _rejected, _children,
                  _without_pod, _pod_in_the_way, _pod_lost_or_outdated, _scheduling, _pod_progress):
        if stage(p):
            break
    return d


def _console_urls(p: _Pass) -> None:
    if p.settings.gateway_url:
        base = p.settings.gateway_url.rstrip("/")
        ns, name = p.session.metadata.get("namespace", "default"), p.session.metadata["name"]
        p.st.console = ConsoleURLs(interact=f"{base}/interact/{ns}/{name}", tail=f"{base}/tail/{ns}/{name}")


def _terminal(p: _Pass) -> bool:
    """Stopped or Failed: keep the pod gone, then honour the TTL."""
    st, d = p.st, p.d
    if not Phase(st.phase).is_terminal:
        return False
    st.attached_clients = []
    if p.observed.pod is not None and not p.observed.pod["metadata"].get("deletionTimestamp"):
        d.actions.append(Do.DELETE_POD)
    if p.session.spec.ttl_seconds_after_stopped is not None and st.stop_time is not None:
        expires = st.stop_time + datetime.timedelta(seconds=p.session.spec.ttl_seconds_after_stopped)
        if p.now >= expires:
            d.actions.append(Do.DELETE_SESSION)
        else:
            d.requeue((expires - p.now).total_seconds())
    return True


def _stopping(p: _Pass) -> bool:
    """Stopping: the pod goes, then the session is Stopped."""
    st, d = p.st, p.d
    if st.phase != Phase.STOPPING:
        return False
    if p.observed.pod is not None:
        if not p.observed.pod["metadata"].get("deletionTimestamp"):
            d.actions.append(Do.DELETE_POD)
        d.requeue(FAST_REQUEUE)
        return True
    st.phase = Phase.STOPPED
    st.stop_time = p.now
    st.pod_name = st.pod_uid = None
    ready = find_condition(st.conditions, READY)
    reason = ready.reason if ready else "Stopped"
    message = ready.message if ready else "session stopped"
    p.ready(False, reason, message)
    d.events.append(Event("Normal", "Stopped", f"session stopped ({reason})"))
    if p.session.spec.ttl_seconds_after_stopped is not None:
        d.requeue(float(p.session.spec.ttl_seconds_after_stopped))
    return True


def _attachments_and_deadlines(p: _Pass) -> bool:
    """Attachments (leases): report the live ones, prune the lapsed ones, wake when the next lapses.
    Then activity and deadlines, for a session that has started: stop one that is due."""
    session, st, d, now = p.session, p.st, p.d, p.now
    recorded = attachments.parse(session.metadata.get("annotations"))
    st.attached_clients = attachments.live(recorded, now)
    d.expired_attachments = [attachments.PREFIX + a.client for a in recorded if a.expires <= now]
    if d.expired_attachments:
        d.actions.append(Do.PRUNE_ATTACHMENTS)
    if st.attached_clients:
        d.requeue(max(0.0, (min(a.expires for a in st.attached_clients) - now).total_seconds()) + 0.05)

    st.last_active_time = last_active_time(session.model_copy(update={"status": st}), now)
    if st.phase not in ACTIVE_PHASES:
        return False
    why = stop_reason(session, st, now)
    if why is None and session.spec.close_when_unused and session.status.attached_clients and not st.attached_clients:
        why = "Unused", "the last attached client detached or lapsed (closeWhenUnused)"
    if why is None:
        return False
    reason, message = why
    st.phase = Phase.STOPPING
    p.ready(False, reason, message)
    d.events.append(Event("Normal", reason, message))
    if p.observed.pod is not None:
        d.actions.append(Do.DELETE_POD)
    d.requeue(FAST_REQUEUE)
    return True


def _placement(p: _Pass) -> bool:
    """What only the operator can check: the pinned node, a selector's nodes, the signing key."""
    session, observed, st, d = p.session, p.observed, p.st, p.d
    if session.spec.node and observed.pinned_node is None:
        st.phase = Phase.PENDING if observed.pod is None else st.phase
        msg = f"node {session.spec.node!r} does not exist; fix spec.node or add the node"
        p.scheduled(False, "NodeNotFound", msg)
        p.ready(False, "NodeNotFound", msg)
        d.requeue(PLACEMENT_RETRY)
        if observed.pod is None:
            return True
    if session.spec.node_selector and observed.matching_nodes == 0 and observed.pod is None:
        st.phase = Phase.PENDING
        sel = ",".join(f"{k}={v}" for k, v in sorted(session.spec.node_selector.items()))
        msg = f"no node matches spec.nodeSelector {sel}"
        p.scheduled(False, "NoMatchingNode", msg)
        p.ready(False, "NoMatchingNode", msg)
        d.requeue(PLACEMENT_RETRY)
        return True
    if observed.signing_key_error is not None:
        p.ready(False, "SigningKeyUnavailable", f"cannot sign the session token: {observed.signing_key_error}")
        st.phase = Phase.PENDING if observed.pod is None else st.phase
        d.requeue(PLACEMENT_RETRY)
        if observed.pod is None:
            return True
    return False


def _rejected(p: _Pass) -> bool:
    """A child of this generation the API server refused: creating it again would be refused
    again, so wait for a new spec."""
    if p.observed.rejected is None:
        return False
    msg = f"the API server refused {p.observed.rejected}; fix the session's spec"
    p.st.phase = Phase.PENDING if p.observed.pod is None else p.st.phase
    p.ready(False, "SpecRejected", msg)
    p.d.events.append(Event("Warning", "SpecRejected", msg))
    return True


def _children(p: _Pass) -> bool:
    """The children that must exist before the pod can start: ConfigMap, token Secret, Service."""
    session, observed, st, d, now = p.session, p.observed, p.st, p.d, p.now
    if not plan.config_map_current(session, observed.config_map):
        d.actions.append(Do.APPLY_CONFIG_MAP)
    st.config_map_name = plan.config_map_name(session)
    if observed.signing_key_error is None:
        renew_at = _renew_at(observed.token_expires, token_lifetime(session, p.settings))
        if renew_at is None or now >= renew_at:
            d.actions.append(Do.ISSUE_TOKEN)
        elif renew_at is not None:
            d.requeue((renew_at - now).total_seconds())
        st.token_secret_name = plan.token_secret_name(session)
    desired_service = plan.service(session)
    if desired_service is not None:
        if observed.service is None or observed.service.get("spec", {}).get("ports") != desired_service["spec"]["ports"]:
            d.actions.append(Do.APPLY_SERVICE)
        st.service_name = plan.service_name(session)
    return False


def _without_pod(p: _Pass) -> bool:
    """No pod: create it (a lost one counts against the recovery budget)."""
    st, d = p.st, p.d
    if p.observed.pod is not None:
        return False
    if st.pod_name is not None and st.phase in ACTIVE_PHASES:
        _lose_pod(d, p.session, "PodLost", f"pod {st.pod_name!r} was deleted", p.now, p.gen)
        if st.phase == Phase.FAILED:
            return True
    d.actions.append(Do.CREATE_POD)
    if st.phase == Phase.PENDING or st.phase not in ACTIVE_PHASES:
        st.phase = Phase.STARTING
        p.ready(False, "PodCreating", f"creating pod {plan.pod_name(p.session)!r}")
    d.requeue(FAST_REQUEUE)
    return True


def _pod_in_the_way(p: _Pass) -> bool:
    """A pod of the session's name that is not its own, or its old pod still going."""
    meta = (p.observed.pod or {}).get("metadata", {})
    if not plan.is_owned_by(p.observed.pod or {}, p.session):
        msg = f"a pod named {meta.get('name')!r} exists and is not owned by this session; delete or rename it"
        p.ready(False, "NameConflict", msg)
        p.d.requeue(PLACEMENT_RETRY)
        return True
    if meta.get("deletionTimestamp"):
        p.d.requeue(FAST_REQUEUE)  # wait for the old pod to go before making a new one
        return True
    return False


def _pod_lost_or_outdated(p: _Pass) -> bool:
    """The session's pod: lost (node gone, evicted, failed) or made from an older spec."""
    st, d = p.st, p.d
    pod = p.observed.pod or {}
    meta = pod.get("metadata", {})
    st.pod_name = meta.get("name")
    st.pod_uid = meta.get("uid")
    loss = _pod_loss(p.session, p.observed)
    if loss is not None:
        reason, message = loss
        d.actions.append(Do.FORCE_DELETE_POD if reason == "NodeLost" else Do.DELETE_POD)
        _lose_pod(d, p.session, reason, message, p.now, p.gen)
        return True
    desired_hash = plan.template_hash(plan.pod_spec(p.session, p.settings))
    if meta.get("annotations", {}).get(plan.TEMPLATE_HASH) != desired_hash:
        d.actions.append(Do.DELETE_POD)
        st.phase = Phase.STARTING
        p.ready(False, "SpecChanged", "the workload changed; replacing the pod")
        d.events.append(Event("Normal", "SpecChanged", "the workload changed; replacing the pod"))
        d.requeue(FAST_REQUEUE)
        return True
    return False


def _scheduling(p: _Pass) -> bool:
    """Where the pod runs; a pod not yet bound to a node waits (or says why it cannot be)."""
    st, d = p.st, p.d
    pod = p.observed.pod or {}
    node_name = pod.get("spec", {}).get("nodeName")
    if node_name:
        st.node_name = node_name
        st.node_ip = pod.get("status", {}).get("hostIP") or st.node_ip
        p.scheduled(True, "Scheduled", f"pod {st.pod_name!r} is on node {node_name!r}")
        return False
    sched = _pod_condition(pod, "PodScheduled")
    if sched is not None and sched.get("status") == "False":
        p.scheduled(False, sched.get("reason") or "Unschedulable", sched.get("message", ""))
        p.ready(False, "Unschedulable", sched.get("message", "pod cannot be scheduled"))
    else:
        p.ready(False, "PodPending", f"waiting for pod {st.pod_name!r} to be scheduled")
    st.phase = Phase.STARTING
    d.requeue(p.settings.resync_seconds)
    return True


def _pod_progress(p: _Pass) -> bool:
    """A bound pod: its workload completed, running and ready, or still starting."""
    st, d, now = p.st, p.d, p.now
    pod = p.observed.pod or {}
    pst = pod.get("status", {})
    node_name = pod.get("spec", {}).get("nodeName")
    if pst.get("phase") == "Succeeded":
        st.phase = Phase.STOPPED
        st.stop_time = now
        st.pod_name = st.pod_uid = None
        p.ready(False, "WorkloadCompleted", "the session workload exited successfully")
        d.events.append(Event("Normal", "WorkloadCompleted", "the session workload exited successfully"))
        return True

    pod_ready = (_pod_condition(pod, "Ready") or {}).get("status") == "True"
    if pst.get("phase") == "Running" and pod_ready:
        if st.phase != Phase.RUNNING:
            d.events.append(Event("Normal", "Running", f"session running on node {node_name!r}"))
        st.phase = Phase.RUNNING
        st.start_time = st.start_time or now
        st.last_active_time = last_active_time(p.session.model_copy(update={"status": st}), now)
        if p.observed.pod_node is not None and not _node_ready(p.observed.pod_node):
            p.ready(False, "NodeNotReady", f"node {node_name!r} is not ready; the pod may be evicted")
        else:
            p.ready(True, "Running", f"session running on node {node_name!r} ({st.node_ip or 'no IP yet'})")
        d.requeue(p.settings.resync_seconds)
        deadline = next_deadline(p.session, st, now)
        if deadline is not None:
            d.requeue(deadline)
        return True

    st.phase = Phase.STARTING
    waiting = next(
        (c.get("state", {}).get("waiting") for c in pst.get("containerStatuses") or [] if c.get("state", {}).get("waiting")),
        None,
    ) or {}
    reason = waiting.get("reason") or "ContainerStarting"
    p.ready(False, reason, waiting.get("message") or f"waiting for pod {st.pod_name!r} to become ready")
    d.requeue(FAST_REQUEUE if not waiting else p.settings.resync_seconds / 3)
    return True


def token_lifetime(session: GridSession, settings: Settings) -> datetime.timedelta:
    """How long a session's token is issued for: the configured lifetime, but no longer than the
    session may live (plus five minutes)."""
    seconds = settings.token_lifetime_seconds
    if session.spec.max_lifetime_seconds:
        seconds = min(seconds, session.spec.max_lifetime_seconds + 300)
    return datetime.timedelta(seconds=seconds)


def _renew_at(expires: datetime.datetime | None, lifetime: datetime.timedelta) -> datetime.datetime | None:
    """Renew a token once two thirds of the lifetime it was issued with have passed."""
    if expires is None:
        return None
    return expires - lifetime / 3


__all__ = ["READY", "SCHEDULED", "Decision", "Do", "Event", "Observed", "decide", "token_lifetime"]
