"""Reading a console request: path, query and headers into a `ConsoleRequest`, or a 400 reason.

Pure functions over plain mappings, so every malformed input is pinned by a unit test.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from ..api import console as wire

# A session name is a DNS-1035 label (it names a Pod and a Service); a namespace a DNS-1123 label.
SESSION_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Node names are DNS-1123 subdomains (the seed addresses consoles by node).
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class BadRequest(ValueError):
    """The request is malformed; the message names the header, parameter or path part."""


@dataclasses.dataclass(frozen=True)
class ConsoleRequest:
    endpoint: str  # "interact" | "tail"
    namespace: str | None  # None: the single-segment seed form, resolved in the default namespace
    target: str  # session name (or, in the single-segment form, a session or node name)
    mode: str = wire.MODE_INTERACTIVE
    lines: int = wire.DEFAULT_TAIL_LINES
    follow: bool = False
    tenant: str | None = None


def parse_bool(header: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in wire.TRUE_VALUES:
        return True
    if lowered in wire.FALSE_VALUES:
        return False
    accepted = ", ".join(sorted(wire.TRUE_VALUES | (wire.FALSE_VALUES - {""})))
    raise BadRequest(f"header {header}: {value!r} is not a boolean (accepted: {accepted})")


def parse_lines(value: str) -> int:
    text = value.strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise BadRequest(f"header {wire.LINES_HEADER}: {value!r} is not a non-negative integer")
    lines = int(text)
    if lines > wire.MAX_TAIL_LINES:
        raise BadRequest(f"header {wire.LINES_HEADER}: {lines} is more than the maximum of {wire.MAX_TAIL_LINES}")
    return lines


def parse_path(namespace: str | None, target: str) -> tuple[str | None, str]:
    if namespace is not None and not NAMESPACE_NAME.match(namespace):
        raise BadRequest(f"namespace {namespace!r} in the path is not a valid namespace name")
    if namespace is not None:
        if not SESSION_NAME.match(target):
            raise BadRequest(f"session {target!r} in the path is not a valid session name (a DNS label)")
    elif not (SESSION_NAME.match(target) or NODE_NAME.match(target)):
        raise BadRequest(f"{target!r} in the path is neither a session name nor a node name")
    return namespace, target


def parse_request(
    endpoint: str,
    namespace: str | None,
    target: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
) -> ConsoleRequest:
    """The request's meaning, or BadRequest naming the part at fault."""
    if endpoint not in ("interact", "tail"):
        raise BadRequest(f"unknown endpoint {endpoint!r}")
    namespace, target = parse_path(namespace, target)
    allowed = {"mode"} if endpoint == "interact" else {"lines", "follow"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)} for /{endpoint} (accepted: {', '.join(sorted(allowed))})")
    mode = wire.MODE_INTERACTIVE
    if endpoint == "interact" and "mode" in query:
        mode = query["mode"]
        if mode not in wire.MODES:
            raise BadRequest(f"query mode={mode!r} is not one of {', '.join(wire.MODES)}")
    lines, follow = wire.DEFAULT_TAIL_LINES, False
    if endpoint == "tail":
        # Headers as in the seed; query parameters for browsers, which cannot set headers.
        raw_lines = headers.get(wire.LINES_HEADER, query.get("lines"))
        if raw_lines is not None:
            lines = parse_lines(raw_lines)
        raw_follow = headers.get(wire.FOLLOW_HEADER, query.get("follow"))
        if raw_follow is not None:
            follow = parse_bool(wire.FOLLOW_HEADER, raw_follow)
    tenant = headers.get(wire.TENANT_HEADER)
    if tenant is not None:
        tenant = tenant.strip()
        if len(tenant) > 63 or not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", tenant or "x"):
            raise BadRequest(f"header {wire.TENANT_HEADER}: {tenant!r} is not a valid tenant name")
        tenant = tenant or None  # the seed: an empty tenant means "no tenant"
    return ConsoleRequest(endpoint, namespace, target, mode=mode, lines=lines, follow=follow, tenant=tenant)


def bearer_token(headers: Mapping[str, str], offered_protocols: list[str]) -> str | None:
    """The bearer token from `Authorization: Bearer`, or from an offered subprotocol (browsers)."""
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    for protocol in offered_protocols:
        offered = wire.token_from_protocol(protocol)
        if offered:
            return offered
    return None


def offered_protocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]
