"""The GridSession reconciler: observe the children, decide, act, report.

Level-based: every pass starts from what exists, so a missed event, an operator restart or a
half-finished previous pass is simply the next pass's starting point.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from .. import metrics
from ..api.v1alpha1 import GridSession, Phase, utcnow
from ..auth.keystore import KeyringSource
from ..auth.tokens import SigningKeyError, issue_session_token, token_expiry
from ..kube import AlreadyExists, KubeClient, merge_patch, resources
from ..kube.events import EventRecorder
from ..settings import Settings
from . import plan
from .rules import Decision, Do, Observed, decide, token_lifetime

log = logging.getLogger(__name__)


def _label_match(node: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class SessionReconciler:
    def __init__(
        self,
        client: KubeClient,
        settings: Settings,
        keys: KeyringSource,
        recorder: EventRecorder,
        *,
        clock: Any = utcnow,
    ):
        self.client = client
        self.settings = settings
        self.keys = keys
        self.recorder = recorder
        self.clock = clock
        self._phases: dict[tuple[str, str], str] = {}

    async def observe(self, session: GridSession) -> Observed:
        ns = session.metadata["namespace"]
        spec = session.spec

        async def token_expires() -> datetime.datetime | None:
            secret = await self.client.get(resources.SECRETS, plan.token_secret_name(session), ns)
            raw = ((secret or {}).get("data") or {}).get(plan.TOKEN_KEY)
            return token_expiry(base64.b64decode(raw).decode()) if raw else None

        async def matching_nodes() -> int:
            if not spec.node_selector:
                return 0
            selector = ",".join(f"{k}={v}" for k, v in spec.node_selector.items())
            nodes = await self.client.list(resources.NODES, label_selector=selector)
            return sum(1 for n in nodes if _label_match(n, spec.node_selector))

        async def signing_key_error() -> str | None:
            try:
                await self.keys.get()
            except SigningKeyError as exc:
                return str(exc)
            return None

        async def none() -> None:
            return None

        pod, svc, cm, expires, pinned, matching, key_error = await asyncio.gather(
            self.client.get(resources.PODS, plan.pod_name(session), ns),
            self.client.get(resources.SERVICES, plan.service_name(session), ns) if plan.service(session) else none(),
            self.client.get(resources.CONFIGMAPS, plan.config_map_name(session), ns),
            token_expires(),
            self.client.get(resources.NODES, spec.node) if spec.node else none(),
            matching_nodes(),
            signing_key_error(),
        )
        pod_node_name = (pod or {}).get("spec", {}).get("nodeName")
        if pod_node_name and pinned is not None and pod_node_name == spec.node:
            pod_node = pinned
        elif pod_node_name:
            pod_node = await self.client.get(resources.NODES, pod_node_name)
        else:
            pod_node = None
        return Observed(
            pod=pod,
            service=svc,
            config_map=cm,
            token_expires=expires,
            pod_node=pod_node,
            pinned_node=pinned,
            matching_nodes=matching,
            signing_key_error=key_error,
        )

    async def reconcile(self, namespace: str, name: str) -> float:
        """One pass; returns the seconds until the next pass is due.

        The pass reads the session fresh rather than trusting a cached body: its own status
        write from the previous pass may not have come back through the watch yet.
        """
        started = time.perf_counter()
        body = await self.client.get(resources.GRIDSESSIONS, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return self.settings.resync_seconds
        session = GridSession.model_validate(body)
        observed = await self.observe(session)
        decision = decide(session, observed, now=self.clock(), settings=self.settings)
        await self.act(session, decision)
        await self.report(session, body, decision)
        metrics.RECONCILE_SECONDS.labels("GridSession").observe(time.perf_counter() - started)
        return decision.requeue_after if decision.requeue_after is not None else self.settings.resync_seconds

    async def act(self, session: GridSession, decision: Decision) -> None:
        ns = session.metadata["namespace"]
        name = session.metadata["name"]
        for action in decision.actions:
            log.debug("session %s/%s: %s", ns, name, action.value)
            if action == Do.APPLY_CONFIG_MAP:
                await self._apply(resources.CONFIGMAPS, plan.config_map(session), ns)
            elif action == Do.ISSUE_TOKEN:
                keyring = await self.keys.get()
                token = issue_session_token(
                    keyring,
                    issuer=self.settings.token_issuer,
                    audience=self.settings.token_audience,
                    user=session.spec.user,
                    session=name,
                    tenant=session.spec.tenant,
                    lifetime=token_lifetime(session, self.settings),
                    now=self.clock(),
                    namespace=ns,
                )
                await self._apply(resources.SECRETS, plan.token_secret(session, token), ns)
            elif action == Do.APPLY_SERVICE:
                svc = plan.service(session)
                assert svc is not None
                await self._apply(resources.SERVICES, svc, ns, patch={"spec": {"ports": svc["spec"]["ports"]}})
            elif action == Do.CREATE_POD:
                try:
                    await self.client.create(resources.PODS, plan.pod(session, self.settings), ns)
                except AlreadyExists:
                    pass  # the next pass adopts or waits for it
            elif action in (Do.DELETE_POD, Do.FORCE_DELETE_POD):
                grace = 0 if action == Do.FORCE_DELETE_POD else None
                await self.client.delete(resources.PODS, plan.pod_name(session), ns, grace_period_seconds=grace)
            elif action == Do.PRUNE_ATTACHMENTS:
                annotations = {key: None for key in decision.expired_attachments}
                await self.client.patch(resources.GRIDSESSIONS, name, {"metadata": {"annotations": annotations}}, ns)
            elif action == Do.DELETE_SESSION:
                await self.client.delete(resources.GRIDSESSIONS, name, ns)

    async def _apply(
        self, res: resources.Resource, body: dict[str, Any], ns: str, *, patch: dict[str, Any] | None = None
    ) -> None:
        try:
            await self.client.create(res, body, ns)
        except AlreadyExists:
            update = patch if patch is not None else {k: v for k, v in body.items() if k != "metadata"}
            await self.client.patch(res, body["metadata"]["name"], update, ns)

    async def report(self, session: GridSession, body: Mapping[str, Any], decision: Decision) -> None:
        ns, name = session.metadata["namespace"], session.metadata["name"]
        old, new = session.status, decision.status
        patch = merge_patch(body.get("status") or {}, new.to_kube())
        if patch and Do.DELETE_SESSION not in decision.actions:
            await self.client.patch(resources.GRIDSESSIONS, name, {"status": patch}, ns, subresource="status")
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
            await self.recorder.record(body, event.type, event.reason, event.message)
        self._phases[(ns, name)] = str(new.phase)
        self._publish_phases()

    def forget(self, namespace: str, name: str) -> None:
        self._phases.pop((namespace, name), None)
        self._publish_phases()

    def _publish_phases(self) -> None:
        for phase in Phase:
            metrics.SESSIONS.labels(phase.value).set(sum(1 for p in self._phases.values() if p == phase.value))

    async def finalize(self, body: Mapping[str, Any]) -> None:
        """Delete everything the session created. Absent children are fine: deletion never waits on them."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        stub = GridSession.model_construct(metadata=dict(meta))

        async def delete_owned(res: resources.Resource, child: str) -> None:
            obj = await self.client.get(res, child, ns)
            if obj is not None and plan.is_owned_by(obj, stub):  # never someone else's object of that name
                await self.client.delete(res, child, ns)

        await asyncio.gather(
            delete_owned(resources.PODS, plan.pod_name(stub)),
            delete_owned(resources.SERVICES, plan.service_name(stub)),
            delete_owned(resources.CONFIGMAPS, plan.config_map_name(stub)),
            delete_owned(resources.SECRETS, plan.token_secret_name(stub)),
        )
        self.forget(ns, name)
        log.info("session %s/%s: children deleted", ns, name)
