"""The gridop SDK: GRID-compatible session management backed by GridSession objects."""

from .sessions import GridSessionManager

__all__ = ["GridSessionManager"]
