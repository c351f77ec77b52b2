"""Session recording as asciicast v2: output and resizes only, never input.

File: `<dir>/<namespace>/<session>/<UTC time>-<user>-<connection>.cast`. First line the header
(`version`, `width`, `height`, `timestamp`, `title`, plus `user`, `session`, `namespace`,
`tenant`), then `[seconds, "o", text]` for output and `[seconds, "r", "COLSxROWS"]` for a resize.
The header waits for the first resize (or the first flush), so it carries the real size.

Writes happen in a worker thread, batched (at most every `flush_seconds` or `flush_bytes`), never
on the event loop. A write failure is reported through `failed` (the gateway decides whether the
connection survives it: `recordingRequired`).
"""

from __future__ import annotations

import asyncio
import codecs
import datetime
import json
import logging
import pathlib
import re
import time
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SIZE = (80, 24)


def recording_path(directory: pathlib.Path, namespace: str, session: str, user: str, connection: str,
                   now: datetime.datetime) -> pathlib.Path:
    safe_user = re.sub(r"[^A-Za-z0-9_.@-]", "_", user)[:64] or "unknown"
    return directory / namespace / session / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe_user}-{connection}.cast"


class Recording:
    def __init__(
        self,
        path: pathlib.Path,
        *,
        header: dict[str, Any],
        flush_seconds: float = 1.0,
        flush_bytes: int = 64 * 1024,
    ):
        self.path = path
        self._header = header
        self._started = time.monotonic()
        self._lines: list[str] = []
        self._pending = 0
        self._flush_seconds = flush_seconds
        self._flush_bytes = flush_bytes
        self._header_written = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._file: Any = None
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.failed: str | None = None

    @classmethod
    async def open(cls, path: pathlib.Path, header: dict[str, Any]) -> Recording:
        """Create the file (and its directories); OSError when it cannot be created."""
        recording = cls(path, header=header)

        def create() -> Any:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("x", encoding="utf-8")

        recording._file = await asyncio.to_thread(create)
        recording._flusher = asyncio.create_task(recording._flush_periodically())
        return recording

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._started, 6)

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._add(json.dumps([self._elapsed(), "o", text], ensure_ascii=False))

    def resize(self, cols: int, rows: int) -> None:
        if not self._header_written and not self._lines:
            self._header.update(width=cols, height=rows)  # the first size is the header's
            return
        self._add(json.dumps([self._elapsed(), "r", f"{cols}x{rows}"]))

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= self._flush_bytes:
            asyncio.get_running_loop().create_task(self.flush())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if self._file is None or self.failed:
                return
            lines, self._lines, self._pending = self._lines, [], 0
            if not self._header_written:
                lines.insert(0, json.dumps(self._header, ensure_ascii=False))
                self._header_written = True
            if not lines:
                return
            text = "\n".join(lines) + "\n"
            try:
                await asyncio.to_thread(self._write, text)
            except OSError as exc:
                self.failed = f"recording {self.path} failed: {exc}"
                log.error("%s", self.failed)

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)


def header(*, width: int, height: int, user: str, session: str, namespace: str, tenant: str | None,
           now: datetime.datetime) -> dict[str, Any]:
    return {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": int(now.timestamp()),
        "title": f"{namespace}/{session} ({user})",
        "user": user,
        "session": session,
        "namespace": namespace,
        "tenant": tenant,
    }
