"""The sweeper: returns tasks of lost workers to the queue and releases retries when due.

It runs in the operator (one per TaskBatch) and in local mode. Each pass is one script per
batch; when Redis is slow or failing, the sweeper backs off so it never adds to the pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .store import TaskStore

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, store: TaskStore, session_id: str, *, interval: float = 1.0, max_interval: float = 30.0,
                 slow_seconds: float = 0.05, limit: int = 1000):
        self.store = store
        self.sid = session_id
        self.base_interval = interval
        self.interval = interval
        self.max_interval = max_interval
        self.slow_seconds = slow_seconds
        self.limit = limit
        self.totals = {"expired": 0, "retried": 0, "failed": 0, "requeued": 0}

    async def sweep_once(self) -> dict[str, int]:
        started = time.perf_counter()
        try:
            result = await self.store.sweep(self.sid, self.limit)
        except Exception as exc:
            self.interval = min(self.max_interval, self.interval * 2)
            log.warning("sweep of %s failed (%s); next in %.1fs", self.sid, exc, self.interval)
            return {}
        took = time.perf_counter() - started
        if took > self.slow_seconds:
            self.interval = min(self.max_interval, self.interval * 2)  # Redis is busy: sweep less
        else:
            self.interval = max(self.base_interval, self.interval / 2)
        for key, value in result.items():
            self.totals[key] += value
        if result.get("expired") == self.limit or result.get("requeued") == self.limit:
            self.interval = 0.0  # a backlog: go again at once
        return result

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
