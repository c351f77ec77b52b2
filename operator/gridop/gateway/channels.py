"""The Kubernetes streaming channel protocol (`v4.channel.k8s.io`, `v5.channel.k8s.io`).

Every websocket message to or from the API server's attach/exec endpoints is one binary frame
whose first byte is the channel: 0 stdin, 1 stdout, 2 stderr, 3 error/status (a metav1.Status
JSON), 4 resize (`{"Width": w, "Height": h}`). v5 adds channel 255, "close": `[255, c]` half-closes
channel `c` (stdin), which v4 cannot express.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)  # in order of preference

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE = 255


class ChannelError(ValueError):
    """A frame that does not follow the channel protocol."""


@dataclasses.dataclass(frozen=True)
class Frame:
    channel: int
    data: bytes


def encode(channel: int, data: bytes = b"") -> bytes:
    if not 0 <= channel <= 255:
        raise ChannelError(f"channel {channel} is out of range")
    return bytes((channel,)) + data


def decode(message: bytes) -> Frame:
    if not message:
        raise ChannelError("empty frame: a channel byte is required")
    return Frame(message[0], bytes(message[1:]))


def stdin(data: bytes) -> bytes:
    return encode(STDIN, data)


def resize(cols: int, rows: int) -> bytes:
    return encode(RESIZE, json.dumps({"Width": int(cols), "Height": int(rows)}).encode())


def close_stdin(protocol: str) -> bytes | None:
    """The frame that half-closes stdin, or None when the protocol (v4) cannot say it."""
    return encode(CLOSE, bytes((STDIN,))) if protocol == V5 else None


def parse_status(data: bytes) -> dict[str, Any]:
    """The metav1.Status on the error channel (a plain-text message from old servers becomes one)."""
    try:
        status = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {"status": "Failure", "message": data.decode(errors="replace")}
    return status if isinstance(status, dict) else {"status": "Failure", "message": str(status)}


def status_message(status: dict[str, Any]) -> str:
    """A one-line reason for a client: 'exit code 3', the API's message, or 'console ended'."""
    if status.get("status") == "Success":
        return "console ended"
    causes = (status.get("details") or {}).get("causes") or []
    code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), None)
    if code is not None:
        return f"console exited with code {code}"
    return str(status.get("message") or status.get("reason") or "console ended with an error")
