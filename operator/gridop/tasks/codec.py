"""Payloads as HTC-Grid stores them: JSON, base64-encoded in the data plane."""

from __future__ import annotations

import base64
import json
from typing import Any


class PayloadError(ValueError):
    """A task input or output cannot be encoded (not JSON-serialisable, too large, not an object)."""


def encode(value: Any, *, what: str = "payload") -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from exc
    return base64.b64encode(text.encode())


def decode(raw: bytes | str) -> Any:
    return json.loads(base64.b64decode(raw))


def decode_text(raw: bytes | str) -> str:
    """The JSON text of a payload (what HTC-Grid's get_results hands back as *_OUTPUT)."""
    return base64.b64decode(raw).decode()
