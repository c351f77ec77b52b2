"""GridSession at v1alpha1: the same shape as v1beta1 (see `gridop.api.v1beta1.gridsession`)."""

from ..v1beta1.gridsession import (
    CATEGORIES,
    FIELD_RULES,
    KIND,
    PLURAL,
    PRINTER_COLUMNS,
    ROOT_RULES,
    SHORT_NAMES,
    SINGULAR,
    SPEC_RULES,
    GridSessionSpec,
    GridSessionStatus,
)

__all__ = ["CATEGORIES", "FIELD_RULES", "KIND", "PLURAL", "PRINTER_COLUMNS", "ROOT_RULES", "SHORT_NAMES", "SINGULAR",
           "SPEC_RULES", "GridSessionSpec", "GridSessionStatus"]
