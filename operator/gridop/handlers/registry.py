"""The operator's kopf registrations, built into a fresh registry (one per operator run).

Each handler is a line or two into the session service; the reconcile loop is a per-session
daemon that wakes on any change to the session, its pod, or its node, and otherwise on the
deadline the phase rules ask for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kopf
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from ..api.v1alpha1 import GROUP, VERSION
from ..kube import KubeError
from ..sessions.plan import SESSION_LABEL
from ..sessions.reconciler import SessionReconciler
from .wakeups import Wakeups

log = logging.getLogger(__name__)

GS = dict(group=GROUP, version=VERSION, plural="gridsessions")
TB = dict(group=GROUP, version=VERSION, plural="taskbatches")
TP = dict(group=GROUP, version=VERSION, plural="taskpools")
FINALIZER = "gridop.io/finalizer"
MAX_BACKOFF = 60.0


async def reconcile_forever(
    kind: str, reconcile: Callable[[str, str], Awaitable[float]], wakeups: Wakeups,
    namespace: str, name: str, wake_key: str,
) -> None:
    """One object's level-based loop: reconcile, then sleep until woken or the pass's deadline."""
    failures = 0
    while True:
        try:
            delay = await reconcile(namespace, name)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad pass must not kill the loop; back off and retry
            failures += 1
            delay = min(MAX_BACKOFF, 2.0**failures)
            metrics.RECONCILE_ERRORS.labels(kind, type(exc).__name__).inc()
            if _transient(exc):  # an outage, not a bug: one line, no traceback
                log.warning("%s %s/%s: reconcile failed (%s: %s); retry in %.0fs", kind, namespace, name,
                            type(exc).__name__, exc, delay)
            else:
                log.exception("%s %s/%s: reconcile failed (retry in %.0fs)", kind, namespace, name, delay)
        await wakeups.wait(namespace, wake_key, delay)


def _transient(exc: Exception) -> bool:
    """Failures that an outage of Redis or the API server explains."""
    if isinstance(exc, KubeError):
        return exc.status >= 500 or exc.status in (409, 429)
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | aiohttp.ClientError | OSError)


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="gridop.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="gridop.io", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING  # our own Events say what happened; kopf's only on trouble
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.login(id="login", registry=registry)
    async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        access = memo.reconciler.client.access
        token = await access.bearer_token()
        return kopf.ConnectionInfo(
            server=access.server,
            ca_data=access.ca_data,
            insecure=access.insecure,
            scheme="Bearer" if token else None,
            token=token,
            certificate_data=access.client_cert_data,
            private_key_data=access.client_key_data,
            default_namespace=access.namespace,
            expiration=access.token_expires,
        )

    @kopf.index(**GS, id="sessions_by_node", registry=registry)
    def sessions_by_node(namespace: str, name: str, status: kopf.Status, **_: Any) -> dict[str, tuple[str, str]] | None:
        node = status.get("nodeName")
        return {node: (namespace, name)} if node else None

    @kopf.daemon(**GS, id="session-loop", cancellation_timeout=5.0, registry=registry)
    async def session_loop(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        reconciler: SessionReconciler = memo.reconciler
        await reconcile_forever("GridSession", reconciler.reconcile, memo.wakeups, namespace, name, name)

    @kopf.on.event(**GS, id="session-changed", registry=registry)
    def session_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.wakeups.wake(namespace, name)

    @kopf.on.event("v1", "pods", labels={SESSION_LABEL: kopf.PRESENT}, id="pod-changed", registry=registry)
    def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
        memo.wakeups.wake(namespace, labels.get(SESSION_LABEL))

    @kopf.on.event("v1", "nodes", id="node-changed", registry=registry)
    def node_changed(name: str, memo: kopf.Memo, sessions_by_node: kopf.Index, **_: Any) -> None:
        for namespace, session in sessions_by_node.get(name, []):
            memo.wakeups.wake(namespace, session)

    @kopf.on.delete(**GS, id="cleanup", retries=10, backoff=3.0, registry=registry)
    async def session_deleted(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.finalize(body)
        memo.wakeups.forget(namespace, name)

    @kopf.daemon(**TB, id="batch-loop", cancellation_timeout=5.0, registry=registry)
    async def batch_loop(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        await reconcile_forever("TaskBatch", memo.batches.reconcile, memo.wakeups, namespace, name, f"tb/{name}")

    @kopf.on.event(**TB, id="batch-changed", registry=registry)
    def batch_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.wakeups.wake(namespace, f"tb/{name}")

    @kopf.on.delete(**TB, id="batch-cleanup", retries=10, backoff=3.0, registry=registry)
    async def batch_deleted(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        await memo.batches.finalize(body)
        memo.wakeups.forget(namespace, f"tb/{name}")

    @kopf.daemon(**TP, id="pool-loop", cancellation_timeout=5.0, registry=registry)
    async def pool_loop(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        try:
            await reconcile_forever("TaskPool", memo.batches.reconcile_pool, memo.wakeups, namespace, name, f"tp/{name}")
        finally:
            memo.batches.forget_pool(namespace, name)
            memo.wakeups.forget(namespace, f"tp/{name}")

    @kopf.on.event(**TP, id="pool-changed", registry=registry)
    def pool_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.wakeups.wake(namespace, f"tp/{name}")

    return registry
