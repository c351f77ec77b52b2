"""kopf's part in the operator: the process, its login, and the controllers' start and stop.

kopf runs the operator process (signals, the stop and ready flags), supplies and refreshes its
credentials (`on.login`), and starts and stops the three controllers (`on.startup`,
`on.cleanup`). The kinds themselves enter through the controllers' own watch caches rather than
kopf's resource handlers: each kind follows one design (`kube.controller`), reads nothing from the
API server per pass, and keeps watching a namespace while it is being deleted, so that finalizers
run (kopf stops watching a namespace as soon as it starts terminating). docs/development.md has
the decision and its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from ..kube.controller import Controller

log = logging.getLogger(__name__)


class Controllers:
    """The operator's controllers, run as one group: one that dies of a bug stops the operator
    (`on_failure`), and the pod restarts, rather than limping on without it."""

    def __init__(self, controllers: list[Controller], on_failure: Callable[[], None],
                 after_stop: Callable[[], Awaitable[None]] | None = None):
        self.all = controllers
        self._on_failure = on_failure
        self._after_stop = after_stop  # once every controller has stopped (the leader Lease goes then)
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None  # what stopped a controller, if anything did

    @property
    def fresh(self) -> bool:
        """Every cache synced, and none cut off from the API server for long."""
        return bool(self._tasks) and all(c.fresh for c in self.all)

    def start(self) -> None:
        for controller in self.all:
            task = asyncio.create_task(controller.run(), name=f"{controller.kind}-controller")
            task.add_done_callback(self._ended)
            self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failure = self.failure or task.exception()
            self._on_failure()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        after, self._after_stop = self._after_stop, None
        if after is not None:
            await after()


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own Events say what happened; kopf's only on trouble
        settings.scanning.disabled = True  # kopf watches no resources: the controllers do

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

    @kopf.on.startup(id="start-controllers", registry=registry)
    async def start_controllers(memo: kopf.Memo, **_: Any) -> None:
        memo.controllers.start()

    @kopf.on.cleanup(id="stop-controllers", registry=registry)
    async def stop_controllers(memo: kopf.Memo, **_: Any) -> None:
        await memo.controllers.stop()

    return registry
