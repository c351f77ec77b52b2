"""A work queue of object keys, as controller-runtime's: bursts coalesce, no key runs twice at once.

- A key waits in the queue at most once: ten events before a worker gets to it make one pass.
- A key being worked on is never handed to a second worker; an event meanwhile marks it dirty
  and it is queued again once the pass ends (so that event is never lost).
- `requeue_after(key, seconds)` sets the key's one timer (the pass's own next deadline); a timer
  that fires marks the pass as due, which the controller uses to tell deadlines from echoes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._ready: collections.deque[K] = collections.deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._due: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._pass_on()

    def requeue_after(self, key: K, seconds: float) -> None:
        """The key's next deadline (replacing any earlier timer: each pass states its own)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(max(0.0, seconds), self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self._due.add(key)
        self.add(key)

    async def get(self) -> tuple[K, bool]:
        """The next key and whether a deadline (not an event) is why it runs."""
        while not self._ready:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled() and self._ready:
                    self._pass_on()  # we were woken for a key we will not take
                raise
        key = self._ready.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        due = key in self._due
        self._due.discard(key)
        return key, due

    def _pass_on(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def forget(self, key: K) -> None:
        """Drop the key's timer and pending state (its object is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._due.discard(key)
        self._dirty.discard(key)
