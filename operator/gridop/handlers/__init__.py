"""Thin kopf registrations: parse the body, call a service, write status. Nothing else."""

from .registry import build_registry

__all__ = ["build_registry"]
