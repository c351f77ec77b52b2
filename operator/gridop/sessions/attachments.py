"""Attachments: clients holding a session open, as leases that expire.

A client records its attachment as the annotation `attach.gridop.io/<client>` whose value is
JSON `{"mode": ..., "expires": <RFC 3339>}` and renews it while it works. A client that dies
simply stops renewing; the lease lapses and no longer keeps the session alive or busy.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import Any

from ..api.v1beta1.gridsession import Attachment

PREFIX = "attach.gridop.io/"
CLIENT_PATTERN = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def annotation_key(client: str) -> str:
    if not CLIENT_PATTERN.match(client):
        raise ValueError(
            f"client_id {client!r} must be 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
        )
    return PREFIX + client


def lease_value(mode: str, expires: datetime.datetime) -> str:
    return json.dumps({"mode": mode, "expires": expires.astimezone(datetime.UTC).isoformat()})


def parse(annotations: Mapping[str, str] | None) -> list[Attachment]:
    """Every attachment recorded on the object (expired or not); malformed entries are skipped."""
    result = []
    for key, value in (annotations or {}).items():
        if not key.startswith(PREFIX):
            continue
        try:
            data: dict[str, Any] = json.loads(value)
            expires = datetime.datetime.fromisoformat(str(data["expires"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            continue
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=datetime.UTC)
        result.append(Attachment(client=key[len(PREFIX):], mode=str(data.get("mode", "interactive")), expires=expires))
    return sorted(result, key=lambda a: a.client)


def live(attachments: list[Attachment], now: datetime.datetime) -> list[Attachment]:
    return [a for a in attachments if a.expires > now]


def expired_keys(annotations: Mapping[str, str] | None, now: datetime.datetime) -> list[str]:
    return [PREFIX + a.client for a in parse(annotations) if a.expires <= now]
