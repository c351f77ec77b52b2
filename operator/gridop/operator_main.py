"""`gridop operator`: build the shared clients once, serve health and metrics, run kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import kopf

from . import metrics
from .api import conversion
from .auth.keystore import KeyringSource
from .auth.tokens import SigningKeyError
from .batches.common import DataPlane
from .batches.taskbatch import TaskBatchReconciler
from .batches.taskpool import TaskPoolReconciler
from .handlers import Controllers, build_registry
from .kube import ClusterAccess, KubeClient, KubeError, NotFound, load_cluster_access, resources
from .kube.events import EventRecorder
from .kube.lease import LeaderElector
from .kube.migration import migrate_all
from .sessions.cache import SessionCache
from .sessions.controller import SessionController
from .sessions.reconciler import SessionReconciler
from .settings import Settings
from .tasks.connection import connect
from .webhook import ConversionWebhook, MountedCertificate, SelfManagedCertificate

log = logging.getLogger(__name__)
KINDS = [resources.GRIDSESSIONS, resources.TASKBATCHES, resources.TASKPOOLS]  # gridop's own kinds
KINDS_RECHECK_SECONDS = 10.0  # how often an operator that cannot read its kinds looks again


class LeadershipLost(RuntimeError):
    """Raised so the process exits non-zero and restarts as a standby."""


async def run_operator(
    settings: Settings,
    access: ClusterAccess | None = None,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    serve_metrics: bool = True,
    clock: Any = None,
) -> None:
    access = access or load_cluster_access()
    client = await KubeClient.connect(access, user_agent="gridop-operator")
    try:
        await _run(settings, client, stop_flag=stop_flag, ready_flag=ready_flag, serve_metrics=serve_metrics,
                   clock=clock)
    finally:
        await client.close()  # whatever ended the run, start-up included


async def served_kinds_problem(client: KubeClient, settings: Settings) -> str | None:
    """Why the operator cannot read its own kinds (a CRD not installed, RBAC that does not let it
    list them), in one line that says what to do; None when it can."""
    for res in KINDS:
        scopes: list[str | None] = [*settings.watch_namespaces] or [None]
        for namespace in scopes:
            try:
                await client.request("GET", res.path(namespace), params={"limit": "1"})
            except NotFound:
                return (f"the API server does not serve {res.plural}.{res.group}: install the CRDs "
                        "(kubectl apply --server-side -f crds/)")
            except KubeError as exc:
                where = f"in namespace {namespace}" if namespace else "cluster-wide"
                return f"cannot list {res.plural}.{res.group} {where} ({exc.status}): check the operator's RBAC"
    return None


async def _watch_served_kinds(client: KubeClient, settings: Settings, served: asyncio.Event) -> None:
    """Readiness needs the operator's kinds readable: check at start, and again until they are."""
    said: str | None = None
    while True:
        try:
            problem = await served_kinds_problem(client, settings)
        except (OSError, aiohttp.ClientError) as exc:
            problem = f"cannot reach the Kubernetes API ({exc})"
        if problem is None:
            served.set()
            return
        if problem != said:
            log.error("not ready: %s", problem)
            said = problem
        await asyncio.sleep(KINDS_RECHECK_SECONDS)


def _webhook(settings: Settings, client: KubeClient) -> ConversionWebhook:
    if settings.webhook_cert_dir:
        source: MountedCertificate | SelfManagedCertificate = MountedCertificate(settings.webhook_cert_dir)
    else:
        source = SelfManagedCertificate(
            client, settings.operator_namespace, settings.webhook_secret, settings.webhook_service,
            settings.webhook_cert_validity_seconds,
            [f"{r.plural}.{r.group}" for r in KINDS if r.kind in conversion.WEBHOOK_KINDS])  # the CRDs that call it
    return ConversionWebhook(source, "", settings.webhook_port, settings.webhook_check_seconds)


async def _run(
    settings: Settings,
    client: KubeClient,
    *,
    stop_flag: asyncio.Event | None,
    ready_flag: asyncio.Event | None,
    serve_metrics: bool,
    clock: Any,
) -> None:
    keys = KeyringSource(client, settings.operator_namespace, settings.signing_secret)
    try:
        keyring = await keys.get()
        log.info("signing keys ready (active key id %s)", keyring.active_kid)
    except SigningKeyError as exc:
        # Not fatal: sessions report it in their Ready condition until the Secret is fixed.
        log.error("signing keys unusable: %s", exc)
    kwargs = {"clock": clock} if clock is not None else {}
    recorder = EventRecorder(client)
    namespaces = settings.watch_namespaces or None
    cache = SessionCache(client, namespaces)
    sessions = SessionController(SessionReconciler(client, settings, keys, recorder, cache, **kwargs), cache)
    # A pass waits a few seconds for Redis, then reports the batch's data plane unavailable and
    # tries again on the next one: the operator never exits over an outage.
    redis = connect(settings.redis_url, outage_budget=5.0) if settings.redis_url else None
    data = DataPlane(client, settings, redis)
    batches = TaskBatchReconciler(client, settings, data, recorder, namespaces=namespaces, **kwargs)
    pools = TaskPoolReconciler(client, settings, data, namespaces=namespaces, **kwargs)
    ready = ready_flag or asyncio.Event()
    stop = stop_flag or asyncio.Event()
    elector = (LeaderElector(client, settings.operator_namespace, settings.lease_name, settings.pod_name)
               if settings.leader_election else None)
    lost = asyncio.Event()
    holding: asyncio.Task[None] | None = None  # the renewals of the Lease, while this replica leads

    async def release_leadership() -> None:
        # As soon as the controllers have stopped: renewals end, and a standby takes over at its
        # next look, while kopf still winds the process down.
        if holding is not None:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
        if elector is not None and not lost.is_set():
            await elector.release()

    controllers = Controllers([sessions, batches.controller(), pools.controller()], on_failure=stop.set,
                              after_stop=release_leadership)
    webhook = _webhook(settings, client) if settings.webhook else None
    if webhook is not None:
        await webhook.start()  # every replica, before the Lease: the API server may call any of them
    served = asyncio.Event()
    checking = asyncio.create_task(_watch_served_kinds(client, settings, served))
    migrating: asyncio.Task[None] | None = None
    runner = await metrics.serve_health(
        settings.metrics_port, lambda: ready.is_set() and served.is_set() and controllers.fresh,
    ) if serve_metrics else None
    try:
        if elector is not None:
            await elector.acquire()
            log.info("leading as %s", settings.pod_name)

            def on_lost() -> None:
                lost.set()
                stop.set()

            holding = asyncio.create_task(elector.hold(on_lost))
        if settings.migrate_storage:
            migrating = asyncio.create_task(migrate_all(client, KINDS, clusterwide=not settings.watch_namespaces))
        await kopf.operator(
            registry=build_registry(),
            memo=kopf.Memo(client=client, controllers=controllers),
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            standalone=True,  # no kopf peering: leadership is the Lease above
            stop_flag=stop,
            ready_flag=ready,
        )
    finally:
        await controllers.stop()  # if kopf's cleanup did not (a start-up that failed); releases the Lease
        if runner is not None:
            await runner.cleanup()
        if redis is not None:
            await redis.aclose()
        checking.cancel()
        if migrating is not None:
            migrating.cancel()
        if webhook is not None:
            await webhook.stop()
    if controllers.failure is not None:
        raise controllers.failure  # a controller's bug: the process exits non-zero and restarts
    if lost.is_set():
        raise LeadershipLost("another replica took over the leader lease")
