"""TaskPool at v1alpha1: the same shape as v1beta1 (see `gridop.api.v1beta1.taskpool`)."""

from ..v1beta1.taskpool import (
    CATEGORIES,
    KIND,
    PLURAL,
    PRINTER_COLUMNS,
    ROOT_RULES,
    SHORT_NAMES,
    SINGULAR,
    SPEC_RULES,
    TaskPoolSpec,
    TaskPoolStatus,
)

__all__ = ["CATEGORIES", "KIND", "PLURAL", "PRINTER_COLUMNS", "ROOT_RULES", "SHORT_NAMES", "SINGULAR", "SPEC_RULES",
           "TaskPoolSpec", "TaskPoolStatus"]
