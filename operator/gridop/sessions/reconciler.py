"""The GridSession reconciler: observe the children, decide, act, report.

Level-based: every pass starts from what exists, so a missed event, an operator restart or a
half-finished previous pass is simply the next pass's starting point. What exists is read from
watch caches (`SessionCache`), never from the API server: a pass costs no API reads, and writes
only what must change. Each write's answer goes back into the cache, so the next pass never acts
twice on a view that predates its own write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .. import metrics
from ..api.v1beta1 import GridSession, GridSessionStatus, Phase, utcnow
from ..api.v1beta1.common import FINALIZER, set_condition, set_progress
from ..auth.keystore import KeyringSource
from ..auth.tokens import SigningKeyError, issue_session_token
from ..kube import AlreadyExists, Conflict, KubeClient, KubeError, NotFound, merge_patch, resources
from ..kube.controller import TerminatingNamespaces
from ..kube.events import EventRecorder
from ..kube.informer import Informer
from ..settings import Settings
from . import plan
from .cache import SessionCache
from .rules import Decision, Do, Observed, decide, token_lifetime

log = logging.getLogger(__name__)

# Sessions made by earlier gridop versions carry kopf's finalizer; children are now removed by
# the garbage collector (ownerReferences), so a deleted session only needs it taken off.
LEGACY_FINALIZER = FINALIZER
# A change of these conditions' status is written at once; finer progress waits for
# `status_min_interval_seconds`.
URGENT_CONDITIONS = ("Ready", "Stalled")

Key = tuple[str, str]


def _condition_status(conditions: list[Any], type_: str) -> str | None:
    return next((c.status for c in conditions if c.type == type_), None)


def _label_match(node: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _rv(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


CREATES = frozenset({Do.APPLY_CONFIG_MAP, Do.ISSUE_TOKEN, Do.APPLY_SERVICE, Do.CREATE_POD})


class SessionReconciler:
    def __init__(
        self,
        client: KubeClient,
        settings: Settings,
        keys: KeyringSource,
        recorder: EventRecorder,
        cache: SessionCache,
        *,
        clock: Any = utcnow,
    ):
        self.client = client
        self.settings = settings
        self.keys = keys
        self.recorder = recorder
        self.cache = cache
        self.clock = clock
        self._phases: dict[Key, str] = {}
        self._seen: dict[Key, dict[str, Any]] = {}  # what the last pass saw (and wrote), by version
        self._writes: dict[Key, dict[str, Any]] = {}  # versions the running pass wrote
        self._component = {cache.sessions: "session", cache.pods: "pod", cache.services: "service",
                           cache.config_maps: "config_map", cache.secrets: "secret"}
        self._written: dict[Key, float] = {}  # when the last status write happened (loop time)
        # Children the API server refused as invalid, by session: (generation, what and why).
        self._rejected: dict[Key, tuple[Any, str]] = {}
        self._terminating = TerminatingNamespaces()  # namespaces being deleted (creates there are refused)
        self.passes = 0
        self.skipped = 0

    async def _signing_key_error(self) -> str | None:
        try:
            await self.keys.get()
        except SigningKeyError as exc:
            return str(exc)
        return None

    def _cached(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The cached objects a pass reads, by component (one lookup each, from the raw body)."""
        stub = GridSession.model_construct(metadata=body["metadata"])  # enough for the children's names
        ns, spec, c = body["metadata"]["namespace"], body.get("spec") or {}, self.cache
        pod = c.pods.get(ns, plan.pod_name(stub))
        pod_node = (pod or {}).get("spec", {}).get("nodeName")
        return {
            "pod": pod,
            "service": c.services.get(ns, plan.service_name(stub)),
            "config_map": c.config_maps.get(ns, plan.config_map_name(stub)),
            "secret": c.secrets.get(ns, plan.token_secret_name(stub)),
            "pinned": c.nodes.get(None, spec["node"]) if spec.get("node") else None,
            "pod_node": c.nodes.get(None, pod_node) if pod_node else None,
        }

    def _fingerprint(self, body: Mapping[str, Any], cached: Mapping[str, Any], key_error: str | None) -> dict[str, Any]:
        """The versions of everything a pass reads: equal fingerprints make equal decisions."""
        selecting = bool((body.get("spec") or {}).get("nodeSelector"))
        return {
            "session": _rv(body),
            **{component: _rv(obj) for component, obj in cached.items()},
            "nodes": len(self.cache.nodes) if selecting else None,
            "key_error": key_error,
            "rejected": self._rejected.get((body["metadata"]["namespace"], body["metadata"]["name"])),
        }

    def observe(self, session: GridSession, cached: Mapping[str, Any], key_error: str | None) -> Observed:
        selector = session.spec.node_selector
        matching = 0
        if selector and cached["pod"] is None:
            matching = sum(1 for n in self.cache.nodes.items() if _label_match(n, selector))
        return Observed(
            pod=cached["pod"],
            service=cached["service"] if plan.service_ports(session) else None,
            config_map=cached["config_map"],
            token_expires=plan.token_expires(cached["secret"]),
            pod_node=cached["pod_node"],
            pinned_node=cached["pinned"],
            matching_nodes=matching,
            signing_key_error=key_error,
            rejected=self._rejection(session),
        )

    def _rejection(self, session: GridSession) -> str | None:
        meta = session.metadata
        generation, why = self._rejected.get((meta["namespace"], meta["name"]), (None, None))
        return why if generation == meta.get("generation") else None

    def _keep(self, session: GridSession, informer: Informer, answer: dict[str, Any] | None) -> None:
        """Fold the answer to our own write into the cache, and into what this pass has seen."""
        if answer is None:
            return
        informer.remember(answer)
        self._wrote(session, self._component[informer], _rv(answer))

    def _wrote(self, session: GridSession, component: str, version: str | None) -> None:
        meta = session.metadata
        self._writes.setdefault((meta["namespace"], meta["name"]), {})[component] = version

    async def reconcile(self, namespace: str, name: str, *, due: bool = True) -> float | None:
        """One pass from the caches; the seconds until the next pass is due, or None to keep the
        current deadline (nothing changed since the last pass, or the session is gone).

        `due` is False when an event (not a deadline) woke the pass: if no version the pass reads
        moved since the last pass, the decision would be the same, so the pass is skipped; this is
        also what keeps the echo of the operator's own writes from triggering passes.
        """
        key = (namespace, name)
        body = self.cache.sessions.get(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        if body["metadata"].get("deletionTimestamp"):
            await self._release_legacy_finalizer(body)
            return None
        key_error = await self._signing_key_error()
        cached = self._cached(body)
        seen = self._fingerprint(body, cached, key_error)
        if not due and self._seen.get(key) == seen:
            self.skipped += 1
            return None
        started = time.perf_counter()
        self.passes += 1
        self._writes[key] = {}
        try:
            try:
                session = GridSession.model_validate(body)
            except ValidationError as exc:
                await self._report_invalid(body, exc)
                self._seen[key] = seen
                return None
            observed = self.observe(session, cached, key_error)
            decision = decide(session, observed, now=self.clock(), settings=self.settings)
            await self.act(session, decision, observed)
            if observed.rejected is None and self._rejection(session) is not None:
                # A child was refused as invalid just now: report that, rather than what was tried.
                observed = self.observe(session, cached, key_error)
                decision = decide(session, observed, now=self.clock(), settings=self.settings)
            delay = decision.requeue_after if decision.requeue_after is not None else self.settings.resync_seconds
            wait = await self.report(session, body, decision)
            if wait is not None:
                delay = min(delay, wait)
            # What this pass saw, with the answers to its own writes folded in: anything else that
            # moved meanwhile differs from this, so the event that brought it still gets its pass.
            self._seen[key] = {**seen, **self._writes[key]}
        finally:
            self._writes.pop(key, None)
        metrics.RECONCILE_SECONDS.labels("GridSession").observe(time.perf_counter() - started)
        return delay

    async def _report_invalid(self, body: Mapping[str, Any], exc: ValidationError) -> None:
        """A stored object this operator's model refuses (admitted by an older or laxer schema):
        say so on the object, once, and wait for a spec that can be acted on."""
        meta = body["metadata"]
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = f"{where}: {first['msg']} (got {first.get('input')!r}); fix the spec"
        now, generation = self.clock(), meta.get("generation")
        try:
            status = GridSessionStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = GridSessionStatus()
        conditions = set_condition(status.conditions, type="Ready", status=False, reason="InvalidSpec",
                                   message=message, now=now, generation=generation)
        conditions = set_progress(conditions, reconciling=None, stalled=("InvalidSpec", message), now=now,
                                  generation=generation)
        patch = merge_patch(body.get("status") or {}, status.model_copy(
            update={"conditions": conditions, "observed_generation": generation}).to_kube())
        if not patch:
            return
        log.warning("session %s/%s: %s", meta["namespace"], meta["name"], message)
        with contextlib.suppress(Conflict, NotFound):
            await self.client.patch(resources.GRIDSESSIONS, meta["name"], {"status": patch}, meta["namespace"],
                                    subresource="status")

    async def _release_legacy_finalizer(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if LEGACY_FINALIZER not in finalizers:
            return
        keep = [f for f in finalizers if f != LEGACY_FINALIZER]
        with contextlib.suppress(Conflict, NotFound):  # changed or gone meanwhile: the next event brings the new version
            await self.client.patch(resources.GRIDSESSIONS, meta["name"],
                                    {"metadata": {"finalizers": keep or None, "resourceVersion": meta["resourceVersion"]}},
                                    meta["namespace"])

    async def act(self, session: GridSession, decision: Decision, observed: Observed) -> None:
        """Carry out the actions; the children of a new session are created concurrently."""
        steps = [self._guarded(session, decision, observed, a) for a in decision.actions if a != Do.DELETE_SESSION]
        if steps:
            await asyncio.gather(*steps)
        if Do.DELETE_SESSION in decision.actions:
            await self.client.delete(resources.GRIDSESSIONS, session.metadata["name"], session.metadata["namespace"])

    async def _guarded(self, session: GridSession, decision: Decision, observed: Observed, action: Do) -> None:
        """One action, with the API server's refusals that are answers, not failures: an invalid
        child (400/422) is the spec's fault and is reported on the session; a namespace being deleted
        (403 "being terminated") takes nothing new, so the operator stops creating, quietly."""
        meta = session.metadata
        try:
            await self._step(session, decision, observed, action)
        except KubeError as exc:
            if exc.being_terminated:
                self._terminating.mark(meta["namespace"], "session children")
                return
            if exc.status in (400, 422) and action in CREATES:
                what = f"{action.value.removeprefix('Create').removeprefix('Apply').lower()}"
                self._rejected[(meta["namespace"], meta["name"])] = (
                    meta.get("generation"), f"the session's {what}: {exc.api_message or exc}")
                log.warning("session %s/%s: the API server refused its %s: %s", meta["namespace"], meta["name"],
                            what, exc.api_message or exc)
                return
            raise

    async def _step(self, session: GridSession, decision: Decision, observed: Observed, action: Do) -> None:
        ns = session.metadata["namespace"]
        name = session.metadata["name"]
        c = self.cache
        log.debug("session %s/%s: %s", ns, name, action.value)
        if action == Do.APPLY_CONFIG_MAP:
            await self._apply(session, c.config_maps, plan.config_map(session), observed.config_map is not None)
        elif action == Do.ISSUE_TOKEN:
            keyring = await self.keys.get()
            now = self.clock()
            lifetime = token_lifetime(session, self.settings)
            token = issue_session_token(
                keyring,
                issuer=self.settings.token_issuer,
                audience=self.settings.token_audience,
                user=session.spec.user,
                session=name,
                tenant=session.spec.tenant,
                lifetime=lifetime,
                now=now,
                namespace=ns,
            )
            exists = c.secrets.get(ns, plan.token_secret_name(session)) is not None
            await self._apply(session, c.secrets, plan.token_secret(session, token, now + lifetime), exists)
        elif action == Do.APPLY_SERVICE:
            svc = plan.service(session)
            assert svc is not None
            await self._apply(session, c.services, svc, observed.service is not None,
                              patch={"metadata": {"labels": svc["metadata"]["labels"]}, "spec": {"ports": svc["spec"]["ports"]}})
        elif action == Do.CREATE_POD:
            await self._create(session, c.pods, plan.pod(session, self.settings))
        elif action in (Do.DELETE_POD, Do.FORCE_DELETE_POD):
            grace = 0 if action == Do.FORCE_DELETE_POD else None
            answer = await self.client.delete_object(resources.PODS, plan.pod_name(session), ns,
                                                     grace_period_seconds=grace)
            if answer and (answer.get("metadata") or {}).get("deletionTimestamp"):
                self._keep(session, c.pods, answer)  # terminating: the next pass waits for it to go
            else:
                c.pods.remember_deleted(ns, plan.pod_name(session))  # gone: the next pass may replace it
                self._wrote(session, "pod", None)
        elif action == Do.PRUNE_ATTACHMENTS:
            annotations = dict.fromkeys(decision.expired_attachments)
            self._keep(session, c.sessions, await self.client.patch(
                resources.GRIDSESSIONS, name, {"metadata": {"annotations": annotations}}, ns))

    async def _create(self, session: GridSession, informer: Informer, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        res = informer.resource
        try:
            self._keep(session, informer, await self.client.create(res, body, meta["namespace"]))
        except AlreadyExists:
            # The cache has not seen it (another writer, or a lagging watch): read it once, so
            # the next pass decides on it instead of creating again.
            found = await self.client.get(res, meta["name"], meta["namespace"])
            if found is not None:
                informer.remember(found)  # not our write: the pass's view stays what it saw

    async def _apply(
        self, session: GridSession, informer: Informer, body: dict[str, Any], exists: bool, *,
        patch: dict[str, Any] | None = None,
    ) -> None:
        meta = body["metadata"]
        update = patch if patch is not None else {
            "metadata": {"labels": meta.get("labels"), "annotations": meta.get("annotations")},
            **{k: v for k, v in body.items() if k != "metadata"},
        }
        if not exists:
            try:
                self._keep(session, informer, await self.client.create(informer.resource, body, meta["namespace"]))
                return
            except AlreadyExists:
                pass
        self._keep(session, informer, await self.client.patch(informer.resource, meta["name"], update, meta["namespace"]))

    async def report(self, session: GridSession, body: Mapping[str, Any], decision: Decision) -> float | None:
        """Write the status if it changed; returns when to come back for a deferred write.

        A change of phase or of any condition's status is written at once; finer progress within
        a phase (a reason, a node name) at most every `status_min_interval_seconds`, so a session start costs
        two status writes, not one per pod event.
        """
        ns, name = session.metadata["namespace"], session.metadata["name"]
        key = (ns, name)
        old, new = session.status, decision.status
        patch = merge_patch(body.get("status") or {}, new.to_kube())
        deferred: float | None = None
        if patch and Do.DELETE_SESSION not in decision.actions:
            urgent = old.phase != new.phase or bool(decision.events) or any(
                _condition_status(old.conditions, t) != _condition_status(new.conditions, t) for t in URGENT_CONDITIONS)
            now = asyncio.get_running_loop().time()
            since = now - self._written.get(key, float("-inf"))
            if urgent or since >= self.settings.status_min_interval_seconds:
                log.debug("session %s/%s: status %s", ns, name, patch)
                self._keep(session, self.cache.sessions, await self.client.patch(
                    resources.GRIDSESSIONS, name, {"status": patch}, ns, subresource="status"))
                self._written[key] = now
            else:
                deferred = self.settings.status_min_interval_seconds - since
        if old.phase != new.phase:
            log.info("session %s/%s: %s -> %s", ns, name, Phase(old.phase).value, Phase(new.phase).value)
            if new.phase == Phase.RUNNING and old.start_time is None:
                created = session.metadata.get("creationTimestamp")
                if created:
                    started = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
                    metrics.SESSION_START_SECONDS.observe(max(0.0, (self.clock() - started).total_seconds()))
        for event in decision.events:
            if event.type == "Warning" and event.reason in ("PodLost", "PodEvicted", "NodeLost", "WorkloadFailed"):
                metrics.POD_RECOVERIES.labels(event.reason).inc()
        if decision.events:
            await asyncio.gather(*(self.recorder.record(body, e.type, e.reason, e.message) for e in decision.events))
        if self._phases.get(key) != str(new.phase):
            self._phases[key] = str(new.phase)
            self._publish_phases()
        return deferred

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._seen.pop(key, None)
        self._written.pop(key, None)
        self._rejected.pop(key, None)
        if self._phases.pop(key, None) is not None:
            self._publish_phases()

    def _publish_phases(self) -> None:
        counts: dict[str, int] = {}
        for p in self._phases.values():
            counts[p] = counts.get(p, 0) + 1
        for phase in Phase:
            metrics.SESSIONS.labels(phase.value).set(counts.get(phase.value, 0))
