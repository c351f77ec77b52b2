"""Waiting for end states in tests: poll a check until it holds, failing with the last value seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until `check()` returns a truthy value (or an awaitable of one); return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        last = result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s; last result: {last!r}")
        await asyncio.sleep(interval)
