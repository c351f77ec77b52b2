"""gridop.io/v1alpha1: served, deprecated, converted to and from v1beta1 (see `gridop.api.conversion`).

One model set per version: where a kind's shape did not change, this version names the v1beta1
models; where it did (TaskBatch's retry settings), the models below are the v1alpha1 shape as it
was released, so its schema and its objects stay exactly what they were.
"""

from . import gridsession, taskbatch, taskpool

GROUP = "gridop.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEPRECATION_WARNING = ("gridop.io/v1alpha1 is deprecated and will be removed in a future release; "
                       "use gridop.io/v1beta1 (see docs/upgrade.md)")

__all__ = ["API_VERSION", "DEPRECATION_WARNING", "GROUP", "VERSION", "gridsession", "taskbatch", "taskpool"]
