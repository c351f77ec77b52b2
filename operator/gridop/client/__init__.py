"""The gridop SDK: GRID-compatible session management backed by GridSession objects."""

from .sessions import GridSessionManager
from .sharing import (
    SessionAlreadyExistsError,
    SessionBusyError,
    SessionInitializationBehavior,
    SessionNotFoundError,
    SessionSharingError,
    SessionStartError,
    SharedSession,
)

__all__ = [
    "GridSessionManager",
    "SessionAlreadyExistsError",
    "SessionBusyError",
    "SessionInitializationBehavior",
    "SessionNotFoundError",
    "SessionSharingError",
    "SessionStartError",
    "SharedSession",
]
