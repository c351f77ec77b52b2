"""gridop.io/v1beta1: the version gridop stores and commits to."""

from . import gridsession, taskbatch, taskpool
from .common import API_VERSION, GROUP, VERSION, Condition, ConditionStatus, KubeModel, find_condition, set_condition, set_progress, utcnow
from .gridsession import GridSession, GridSessionSpec, GridSessionStatus, Phase

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "GridSession",
    "GridSessionSpec",
    "GridSessionStatus",
    "KubeModel",
    "Phase",
    "find_condition",
    "gridsession",
    "set_condition",
    "set_progress",
    "taskbatch",
    "taskpool",
    "utcnow",
]
