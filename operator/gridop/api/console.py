"""The console gateway's wire protocol: paths, headers, subprotocols, control messages, close codes.

Shared by the gateway (`gridop.gateway`) and its clients (`gridop.client.console`), which
otherwise never import each other.

Two framings are spoken on `/interact`:

* **seed** (no subprotocol, as the Cray console client connects): every client frame, text or
  binary, is keystrokes for the console; console output comes back as text frames.
* **`v1.console.gridop.io`**: binary frames carry raw bytes both ways (keystrokes in, output out);
  text frames carry JSON control messages: `{"type": "resize", "cols": 120, "rows": 40}` from the
  client, `{"type": "notice", "message": "..."}` from the gateway.

`/tail` sends the console log as text frames, one or more lines each, in either framing.
"""

from __future__ import annotations

import base64
import binascii

SUBPROTOCOL = "v1.console.gridop.io"
# Browsers cannot set headers on websockets; like the Kubernetes API, the gateway accepts the
# bearer token as an offered subprotocol (never echoed back, never logged).
BEARER_PROTOCOL_PREFIX = "base64url.bearer.authorization.k8s.io."

TENANT_HEADER = "Cray-Tenant-Name"
LINES_HEADER = "Cray-Console-Lines"
FOLLOW_HEADER = "Cray-Console-Follow"

DEFAULT_TAIL_LINES = 100
MAX_TAIL_LINES = 100_000
TRUE_VALUES = frozenset({"true", "1", "yes", "on", "y", "t"})
FALSE_VALUES = frozenset({"false", "0", "no", "off", "n", "f", ""})

MODE_INTERACTIVE = "interactive"
MODE_MONITOR = "monitor"
MODES = (MODE_INTERACTIVE, MODE_MONITOR)

# Close codes (RFC 6455 section 7.4). 1000: the console ended; 1001: the gateway is going away;
# 1008: a policy closed the stream (token expired, session stopped, idle, too slow); 1011: the
# upstream failed.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_UPSTREAM_ERROR = 1011


def bearer_protocol(token: str) -> str:
    """The subprotocol that carries `token` (for clients that cannot set an Authorization header)."""
    return BEARER_PROTOCOL_PREFIX + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def token_from_protocol(protocol: str) -> str | None:
    """The bearer token inside an offered subprotocol, or None when it is not one (or not decodable)."""
    if not protocol.startswith(BEARER_PROTOCOL_PREFIX):
        return None
    encoded = protocol[len(BEARER_PROTOCOL_PREFIX):]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
