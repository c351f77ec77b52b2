"""Payloads as HTC-Grid stores them: JSON, base64-encoded in the data plane."""

from __future__ import annotations

import binascii
import json
from typing import Any

# Built once: json.dumps() with options builds an encoder per call, and json.loads() on bytes
# sniffs their encoding first -- a good part of the codec's time on a single task's round trip.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder()


class PayloadError(ValueError):
    """A task input or output cannot be encoded (not JSON-serialisable, too large, not an object)."""


def encode(value: Any, *, what: str = "payload") -> bytes:
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from exc
    return binascii.b2a_base64(text.encode(), newline=False)


def decode(raw: bytes | str) -> Any:
    """The value of a payload (ValueError if it is not base64 of UTF-8 JSON)."""
    return _DECODER.decode(decode_text(raw))


def decode_text(raw: bytes | str) -> str:
    """The JSON text of a payload (what HTC-Grid's get_results hands back as *_OUTPUT)."""
    return binascii.a2b_base64(raw).decode()
