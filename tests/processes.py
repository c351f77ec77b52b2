"""Processes a test starts (operators, workers of one release or another) and what their tasks leave."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to start processes into; whatever still runs at the end is killed (and reaped)."""
    running: list[subprocess.Popen[bytes]] = []
    try:
        yield running
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def ledger(path: pathlib.Path) -> list[int]:
    """The task numbers `tests.dataplane.handlers:ledger` wrote, one per run of a task."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []
