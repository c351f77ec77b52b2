"""Idle and lifetime policy: when a session counts as active, and when it must stop."""

from __future__ import annotations

import datetime

from ..api.v1beta1 import GridSession, GridSessionStatus
from .plan import LAST_ACTIVE_ANNOTATION


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def live_attachments(status: GridSessionStatus, now: datetime.datetime) -> int:
    return sum(1 for a in status.attached_clients if a.expires > now)


def last_active_time(session: GridSession, now: datetime.datetime) -> datetime.datetime | None:
    """The latest sign of use: a client's touch (annotation), a live attachment, or the start."""
    status = session.status
    touched = parse_time((session.metadata.get("annotations") or {}).get(LAST_ACTIVE_ANNOTATION))
    if touched is not None and touched > now:
        touched = now  # a client with a fast clock cannot keep a session alive forever
    candidates = [t for t in (touched, status.last_active_time, status.start_time) if t is not None]
    if live_attachments(status, now):
        candidates.append(now)
    return max(candidates) if candidates else None


def stop_reason(session: GridSession, status: GridSessionStatus, now: datetime.datetime) -> tuple[str, str] | None:
    """(reason, message) when the session must stop now, else None."""
    spec = session.spec
    lifetime = datetime.timedelta(seconds=spec.max_lifetime_seconds or 0)
    if spec.max_lifetime_seconds and status.start_time and now - status.start_time >= lifetime:
        return "MaxLifetimeExceeded", f"session reached maxLifetimeSeconds={spec.max_lifetime_seconds}"
    if spec.idle_timeout_seconds and status.start_time:
        last = status.last_active_time or status.start_time
        if now - last >= datetime.timedelta(seconds=spec.idle_timeout_seconds):
            return "IdleTimeout", (
                f"no activity since {last.isoformat()} (idleTimeoutSeconds={spec.idle_timeout_seconds})"
            )
    return None


def next_deadline(session: GridSession, status: GridSessionStatus, now: datetime.datetime) -> float | None:
    """Seconds until the idle or lifetime deadline, whichever comes first."""
    spec = session.spec
    deadlines = []
    if spec.max_lifetime_seconds and status.start_time:
        deadlines.append(status.start_time + datetime.timedelta(seconds=spec.max_lifetime_seconds))
    if spec.idle_timeout_seconds and status.start_time:
        last = status.last_active_time or status.start_time
        deadlines.append(last + datetime.timedelta(seconds=spec.idle_timeout_seconds))
    if not deadlines:
        return None
    return max(0.0, (min(deadlines) - now).total_seconds()) + 0.05
