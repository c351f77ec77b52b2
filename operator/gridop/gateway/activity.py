"""What the gateway writes to the API server about consoles, kept off the connections' path.

A session's last-active annotation is refreshed at most once per `gateway_activity_interval_seconds`
per session, and console Events go out through a bounded queue and a few posters: a burst of
connections must not become a burst of API writes. Beyond the queue Events are shed (the JSON
audit line of each connection stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ..kube import KubeClient, KubeError, resources
from ..kube.events import EventRecorder
from ..sessions.plan import LAST_ACTIVE_ANNOTATION
from ..settings import Settings

log = logging.getLogger(__name__)


class Activity:
    def __init__(self, client: KubeClient, settings: Settings, clock: Callable[[], datetime.datetime]):
        self.client = client
        self.settings = settings
        self.clock = clock
        self.recorder = EventRecorder(client, component="gridop-gateway")
        self._touched: dict[tuple[str, str], float] = {}
        self._events: asyncio.Queue[tuple[dict[str, Any], str, str, str]] = asyncio.Queue(maxsize=1000)
        self._posters: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._shed = 0

    def start(self) -> None:
        self._posters = [asyncio.create_task(self._post_events()) for _ in range(4)]

    async def stop(self) -> None:
        """Post the Events already queued (up to 5 s), then stop; writes in flight get 5 s too."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._events.join(), 5)
        for task in self._posters:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)

    def touch(self, namespace: str, name: str) -> None:
        """Refresh the session's last-active annotation, at most once per interval per session."""
        now = time.monotonic()
        key = (namespace, name)
        if now - self._touched.get(key, float("-inf")) < self.settings.gateway_activity_interval_seconds:
            return
        self._touched[key] = now
        stamp = self.clock().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"metadata": {"annotations": {LAST_ACTIVE_ANNOTATION: stamp}}}

        async def write() -> None:
            try:
                await self.client.patch(resources.GRIDSESSIONS, name, patch, namespace)
            except (TimeoutError, KubeError, aiohttp.ClientError, OSError) as exc:
                self._touched.pop(key, None)  # try again on the next keystroke
                log.warning("could not record activity on session %s/%s: %s", namespace, name, exc)

        self.spawn(write())

    def event(self, session: dict[str, Any], type_: str, reason: str, message: str) -> None:
        body = {"apiVersion": session.get("apiVersion"), "kind": session.get("kind"), "metadata": session.get("metadata", {})}
        try:
            self._events.put_nowait((body, type_, reason, message))
        except asyncio.QueueFull:
            self._shed += 1
            if self._shed in (1, 10, 100) or self._shed % 1000 == 0:
                log.warning("the API is slow to take Events: %d console Events shed (the audit log lines are kept)", self._shed)

    async def _post_events(self) -> None:
        while True:
            body, type_, reason, message = await self._events.get()
            try:
                await self.recorder.record(body, type_, reason, message)
            finally:
                self._events.task_done()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background; `stop()` gives it 5 s to finish."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
