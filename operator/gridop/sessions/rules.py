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

from ..api.v1alpha1 import GridSession, GridSessionStatus, Phase, find_condition, set_condition, set_progress
from ..api.v1alpha1.gridsession import ConsoleURLs, PodLossPolicy
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


def _decide(
    session: GridSession, observed: Observed, *, now: datetime.datetime, settings: Settings
) -> Decision:
    prev = session.status
    gen = session.metadata.get("generation")
    d = Decision(status=prev.model_copy(deep=True))
    st = d.status
    st.observed_generation = gen
    name = session.metadata["name"]
    if settings.gateway_url:
        base = settings.gateway_url.rstrip("/")
        ns = session.metadata.get("namespace", "default")
        st.console = ConsoleURLs(interact=f"{base}/interact/{ns}/{name}", tail=f"{base}/tail/{ns}/{name}")

    # Terminal phases: keep the pod gone, then honour the TTL.
    if Phase(st.phase).is_terminal:
        st.attached_clients = []
        if observed.pod is not None and not observed.pod["metadata"].get("deletionTimestamp"):
            d.actions.append(Do.DELETE_POD)
        if session.spec.ttl_seconds_after_stopped is not None and st.stop_time is not None:
            expires = st.stop_time + datetime.timedelta(seconds=session.spec.ttl_seconds_after_stopped)
            if now >= expires:
                d.actions.append(Do.DELETE_SESSION)
            else:
                d.requeue((expires - now).total_seconds())
        return d

    if st.phase == Phase.STOPPING:
        if observed.pod is not None:
            if not observed.pod["metadata"].get("deletionTimestamp"):
                d.actions.append(Do.DELETE_POD)
            d.requeue(FAST_REQUEUE)
            return d
        st.phase = Phase.STOPPED
        st.stop_time = now
        st.pod_name = st.pod_uid = None
        ready = find_condition(st.conditions, READY)
        reason = ready.reason if ready else "Stopped"
        message = ready.message if ready else "session stopped"
        _ready(d, False, reason, message, now, gen)
        d.events.append(Event("Normal", "Stopped", f"session stopped ({reason})"))
        if session.spec.ttl_seconds_after_stopped is not None:
            d.requeue(float(session.spec.ttl_seconds_after_stopped))
        return d

    # Attachments (leases): report the live ones, prune the lapsed ones, wake when the next lapses.
    recorded = attachments.parse(session.metadata.get("annotations"))
    st.attached_clients = attachments.live(recorded, now)
    d.expired_attachments = [attachments.PREFIX + a.client for a in recorded if a.expires <= now]
    if d.expired_attachments:
        d.actions.append(Do.PRUNE_ATTACHMENTS)
    if st.attached_clients:
        d.requeue(max(0.0, (min(a.expires for a in st.attached_clients) - now).total_seconds()) + 0.05)

    # Activity and deadlines, for a session that has started.
    st.last_active_time = last_active_time(session.model_copy(update={"status": st}), now)
    if st.phase in ACTIVE_PHASES:
        why = stop_reason(session, st, now)
        if why is None and session.spec.close_when_unused and prev.attached_clients and not st.attached_clients:
            why = "Unused", "the last attached client detached or lapsed (closeWhenUnused)"
        if why is not None:
            reason, message = why
            st.phase = Phase.STOPPING
            _ready(d, False, reason, message, now, gen)
            d.events.append(Event("Normal", reason, message))
            if observed.pod is not None:
                d.actions.append(Do.DELETE_POD)
            d.requeue(FAST_REQUEUE)
            return d

    # Things only the operator can check: placement and the signing key.
    if session.spec.node and observed.pinned_node is None:
        st.phase = Phase.PENDING if observed.pod is None else st.phase
        msg = f"node {session.spec.node!r} does not exist; fix spec.node or add the node"
        _scheduled(d, False, "NodeNotFound", msg, now, gen)
        _ready(d, False, "NodeNotFound", msg, now, gen)
        d.requeue(PLACEMENT_RETRY)
        if observed.pod is None:
            return d
    if session.spec.node_selector and observed.matching_nodes == 0 and observed.pod is None:
        st.phase = Phase.PENDING
        sel = ",".join(f"{k}={v}" for k, v in sorted(session.spec.node_selector.items()))
        msg = f"no node matches spec.nodeSelector {sel}"
        _scheduled(d, False, "NoMatchingNode", msg, now, gen)
        _ready(d, False, "NoMatchingNode", msg, now, gen)
        d.requeue(PLACEMENT_RETRY)
        return d
    if observed.signing_key_error is not None:
        msg = f"cannot sign the session token: {observed.signing_key_error}"
        _ready(d, False, "SigningKeyUnavailable", msg, now, gen)
        st.phase = Phase.PENDING if observed.pod is None else st.phase
        d.requeue(PLACEMENT_RETRY)
        if observed.pod is None:
            return d

    if observed.rejected is not None:
        # Creating it again would be refused again: wait for a new spec.
        msg = f"the API server refused {observed.rejected}; fix the session's spec"
        st.phase = Phase.PENDING if observed.pod is None else st.phase
        _ready(d, False, "SpecRejected", msg, now, gen)
        d.events.append(Event("Warning", "SpecRejected", msg))
        return d

    # Children that must exist before the pod can start.
    if not plan.config_map_current(session, observed.config_map):
        d.actions.append(Do.APPLY_CONFIG_MAP)
    st.config_map_name = plan.config_map_name(session)
    if observed.signing_key_error is None:
        renew_at = _renew_at(observed.token_expires, token_lifetime(session, settings))
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

    pod = observed.pod
    if pod is None:
        if st.pod_name is not None and st.phase in ACTIVE_PHASES:
            _lose_pod(d, session, "PodLost", f"pod {st.pod_name!r} was deleted", now, gen)
            if st.phase == Phase.FAILED:
                return d
        d.actions.append(Do.CREATE_POD)
        if st.phase == Phase.PENDING or st.phase not in ACTIVE_PHASES:
            st.phase = Phase.STARTING
            _ready(d, False, "PodCreating", f"creating pod {plan.pod_name(session)!r}", now, gen)
        d.requeue(FAST_REQUEUE)
        return d

    meta = pod.get("metadata", {})
    if not plan.is_owned_by(pod, session):
        msg = f"a pod named {meta.get('name')!r} exists and is not owned by this session; delete or rename it"
        _ready(d, False, "NameConflict", msg, now, gen)
        d.requeue(PLACEMENT_RETRY)
        return d
    if meta.get("deletionTimestamp"):
        d.requeue(FAST_REQUEUE)  # wait for the old pod to go before making a new one
        return d

    st.pod_name = meta.get("name")
    st.pod_uid = meta.get("uid")
    loss = _pod_loss(session, observed)
    if loss is not None:
        reason, message = loss
        d.actions.append(Do.FORCE_DELETE_POD if reason == "NodeLost" else Do.DELETE_POD)
        _lose_pod(d, session, reason, message, now, gen)
        return d

    desired_hash = plan.template_hash(plan.pod_spec(session, settings))
    if meta.get("annotations", {}).get(plan.TEMPLATE_HASH) != desired_hash:
        d.actions.append(Do.DELETE_POD)
        st.phase = Phase.STARTING
        _ready(d, False, "SpecChanged", "the workload changed; replacing the pod", now, gen)
        d.events.append(Event("Normal", "SpecChanged", "the workload changed; replacing the pod"))
        d.requeue(FAST_REQUEUE)
        return d

    pst = pod.get("status", {})
    node_name = pod.get("spec", {}).get("nodeName")
    if node_name:
        st.node_name = node_name
        st.node_ip = pst.get("hostIP") or st.node_ip
        _scheduled(d, True, "Scheduled", f"pod {st.pod_name!r} is on node {node_name!r}", now, gen)
    else:
        sched = _pod_condition(pod, "PodScheduled")
        if sched is not None and sched.get("status") == "False":
            _scheduled(d, False, sched.get("reason") or "Unschedulable", sched.get("message", ""), now, gen)
            _ready(d, False, "Unschedulable", sched.get("message", "pod cannot be scheduled"), now, gen)
        else:
            _ready(d, False, "PodPending", f"waiting for pod {st.pod_name!r} to be scheduled", now, gen)
        st.phase = Phase.STARTING
        d.requeue(settings.resync_seconds)
        return d

    if pst.get("phase") == "Succeeded":
        st.phase = Phase.STOPPED
        st.stop_time = now
        st.pod_name = st.pod_uid = None
        _ready(d, False, "WorkloadCompleted", "the session workload exited successfully", now, gen)
        d.events.append(Event("Normal", "WorkloadCompleted", "the session workload exited successfully"))
        return d

    pod_ready = (_pod_condition(pod, "Ready") or {}).get("status") == "True"
    if pst.get("phase") == "Running" and pod_ready:
        if st.phase != Phase.RUNNING:
            d.events.append(Event("Normal", "Running", f"session running on node {node_name!r}"))
        st.phase = Phase.RUNNING
        st.start_time = st.start_time or now
        st.last_active_time = last_active_time(session.model_copy(update={"status": st}), now)
        if observed.pod_node is not None and not _node_ready(observed.pod_node):
            _ready(d, False, "NodeNotReady", f"node {node_name!r} is not ready; the pod may be evicted", now, gen)
        else:
            _ready(d, True, "Running", f"session running on node {node_name!r} ({st.node_ip or 'no IP yet'})", now, gen)
        d.requeue(settings.resync_seconds)
        deadline = next_deadline(session, st, now)
        if deadline is not None:
            d.requeue(deadline)
        return d

    st.phase = Phase.STARTING
    waiting = next(
        (c.get("state", {}).get("waiting") for c in pst.get("containerStatuses") or [] if c.get("state", {}).get("waiting")),
        None,
    ) or {}
    reason = waiting.get("reason") or "ContainerStarting"
    _ready(d, False, reason, waiting.get("message") or f"waiting for pod {st.pod_name!r} to become ready", now, gen)
    d.requeue(FAST_REQUEUE if not waiting else settings.resync_seconds / 3)
    return d


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
