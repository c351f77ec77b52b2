"""Per-object wake-up signals: an event on a child wakes its parent's reconcile loop early."""

from __future__ import annotations

import asyncio
import collections


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = collections.defaultdict(asyncio.Event)

    def wake(self, namespace: str | None, name: str | None) -> None:
        if namespace and name:
            self._events[(namespace, name)].set()

    async def wait(self, namespace: str, name: str, timeout: float) -> None:
        event = self._events[(namespace, name)]
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
        except TimeoutError:
            pass
        event.clear()

    def forget(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)
