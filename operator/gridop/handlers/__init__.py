"""kopf's registrations: the process, its login, and the controllers' start and stop."""

from .registry import Controllers, build_registry

__all__ = ["Controllers", "build_registry"]
