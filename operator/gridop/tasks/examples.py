"""Handlers that ship in the gridop image, for trying TaskBatches without building one.

    handler: gridop.tasks.examples:square
"""

from __future__ import annotations

import time
from typing import Any


def square(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """{"x": 3} -> {"x": 3, "square": 9}"""
    x = event["x"]
    return {"x": x, "square": x * x}


def sleep(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """{"seconds": 0.5} sleeps that long (a stand-in for real work)."""
    time.sleep(float(event.get("seconds", 0.1)))
    return {"slept": event.get("seconds", 0.1), "task_id": context.task_id, "attempt": context.attempt}


def mock_compute_engine(event: dict[str, Any], context: Any) -> int:
    """HTC-Grid's mock workload: {"worker_arguments": ["1000", "1", "1"]} works 1000 ms and returns 1000
    (examples/htcgrid/mock_compute_engine.py is the same lambda as a file of its own)."""
    milliseconds = int(event["worker_arguments"][0])
    time.sleep(milliseconds / 1000)
    return milliseconds
