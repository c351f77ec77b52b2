"""The operator's kopf registrations, built into a fresh registry (one per operator run).

TaskBatches and TaskPools: a per-object daemon runs a level-based loop that wakes on any change
to the object and otherwise on the deadline its rules ask for. GridSessions are not here: they are
reconciled by `sessions.controller` from watch caches (no per-event kopf machinery, no finalizer,
no bookkeeping annotations), which is what lets hundreds of sessions start in seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from ..api.v1alpha1 import GROUP, VERSION
from ..api.v1alpha1.common import FINALIZER
from ..sessions.controller import failed_pass
from .wakeups import Wakeups

log = logging.getLogger(__name__)

TB = dict(group=GROUP, version=VERSION, plural="taskbatches")
TP = dict(group=GROUP, version=VERSION, plural="taskpools")


async def reconcile_forever(
    kind: str, reconcile: Callable[[str, str], Awaitable[float]], wakeups: Wakeups,
    namespace: str, name: str, wake_key: str, stopped: kopf.DaemonStopped,
) -> None:
    """One object's level-based loop: reconcile, then sleep until woken or the pass's deadline;
    return when kopf says the object is gone (or the operator stops), after the pass in hand."""

    async def until_stopped() -> None:
        await stopped.wait()

    stopping = asyncio.ensure_future(until_stopped())
    failures = 0
    try:
        while not stopped.is_set():
            try:
                delay = await reconcile(namespace, name)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bad pass must not kill the loop; back off and retry
                failures += 1
                delay = failed_pass(kind, namespace, name, exc, failures)
            waking = asyncio.ensure_future(wakeups.wait(namespace, wake_key, delay))
            await asyncio.wait({waking, stopping}, return_when=asyncio.FIRST_COMPLETED)
            waking.cancel()
    finally:
        stopping.cancel()


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
        access = memo.client.access
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
            proxy_url=access.proxy_url,
        )

    # Daemons stop by their `stopped` flag (a pass in hand finishes); kopf cancels one only if it
    # has not stopped `cancellation_backoff` seconds later.
    @kopf.daemon(**TB, id="batch-loop", cancellation_backoff=10.0, cancellation_timeout=5.0, registry=registry)
    async def batch_loop(namespace: str, name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await reconcile_forever("TaskBatch", memo.batches.reconcile, memo.wakeups, namespace, name, f"tb/{name}",
                                stopped)

    @kopf.on.event(**TB, id="batch-changed", registry=registry)
    def batch_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.wakeups.wake(namespace, f"tb/{name}")

    @kopf.on.delete(**TB, id="batch-cleanup", retries=10, backoff=3.0, registry=registry)
    async def batch_deleted(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        await memo.batches.finalize(body)
        memo.wakeups.forget(namespace, f"tb/{name}")

    @kopf.daemon(**TP, id="pool-loop", cancellation_backoff=10.0, cancellation_timeout=5.0, registry=registry)
    async def pool_loop(namespace: str, name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        try:
            await reconcile_forever("TaskPool", memo.batches.reconcile_pool, memo.wakeups, namespace, name, f"tp/{name}",
                                    stopped)
        finally:
            memo.batches.forget_pool(namespace, name)
            memo.wakeups.forget(namespace, f"tp/{name}")

    @kopf.on.event(**TP, id="pool-changed", registry=registry)
    def pool_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.wakeups.wake(namespace, f"tp/{name}")

    return registry
