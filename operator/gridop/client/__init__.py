"""The gridop SDK: GRID-compatible session management backed by GridSession objects, and session consoles."""

from .console import ConsoleClient, ConsoleError, ConsoleStream
from .sessions import GridSessionManager, SyncGridSessionManager, SyncSharedSession
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
    "ConsoleClient",
    "ConsoleError",
    "ConsoleStream",
    "GridSessionManager",
    "SessionAlreadyExistsError",
    "SessionBusyError",
    "SessionInitializationBehavior",
    "SessionNotFoundError",
    "SessionSharingError",
    "SessionStartError",
    "SharedSession",
    "SyncGridSessionManager",
    "SyncSharedSession",
]
