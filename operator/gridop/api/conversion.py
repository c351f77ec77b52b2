"""Converting gridop objects between API versions, with no loss either way.

v1beta1 is the hub and the storage version. GridSession and TaskPool have one shape in both
versions (their CRDs convert with `strategy: None`); TaskBatch's spec differs and its CRD calls the
operator's conversion webhook (`gridop.conversion`), which calls `convert` here.

No loss: a value one version cannot hold exactly (a v1alpha1 backoff of 0.0005 s is not a whole
number of milliseconds; a v1beta1 multiplier written "1.50" reads back as 1.5) would change on a
round trip. So when converting changes what converting back would give, the source's spec is kept
in an annotation (`gridop.io/<version>-spec`, as Cluster API does) and restored on the way back as
long as it still converts to the object's spec (that is, nobody has changed the spec since).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

GROUP = "gridop.io"
VERSIONS = ("v1alpha1", "v1beta1")
#: The kinds whose shape differs between versions: only they need a conversion webhook.
WEBHOOK_KINDS = frozenset({"TaskBatch"})

Spec = dict[str, Any]


class ConversionError(ValueError):
    """An object this module cannot convert (an unknown version or kind)."""


def stash_key(version: str) -> str:
    """The annotation that keeps a spec as written at `version`, on an object of the other version."""
    return f"{GROUP}/{version}-spec"


def _seconds_to_ms(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return round(value * 1000)
    return value


def _ms_to_seconds(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value / 1000
        return int(seconds) if seconds.is_integer() else seconds
    return value


def _factor_to_decimal(value: Any) -> Any:
    """2.0 -> 2, 1.5 -> "1.5" (repr is the shortest string that reads back as the same float)."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value) if value.is_integer() else repr(value)
    return value


def _decimal_to_factor(value: Any) -> Any:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    return value


_MOVED = (("backoffSeconds", "backoffMilliseconds", _seconds_to_ms),
          ("backoffMaxSeconds", "backoffMaxMilliseconds", _seconds_to_ms),
          ("backoffMultiplier", "backoffMultiplier", _factor_to_decimal))


def taskbatch_spec_up(spec: Spec) -> Spec:
    """v1alpha1 -> v1beta1: `retry.onError` up to `onError`; delays to integer milliseconds."""
    out = copy.deepcopy(spec)
    retry = out.get("retry")
    if isinstance(retry, dict):
        if "onError" in retry:
            out["onError"] = retry.pop("onError")
        for old, new, change in _MOVED:
            if old in retry:
                retry[new] = change(retry.pop(old))
    return out


def taskbatch_spec_down(spec: Spec) -> Spec:
    """v1beta1 -> v1alpha1."""
    out = copy.deepcopy(spec)
    retry = out.get("retry")
    if "onError" in out:
        retry = out["retry"] = retry if isinstance(retry, dict) else {}
        retry["onError"] = out.pop("onError")
    if isinstance(retry, dict):
        backwards = {"backoffMultiplier": _decimal_to_factor}
        for old, new, _ in _MOVED:
            if new in retry:
                retry[old] = backwards.get(new, _ms_to_seconds)(retry.pop(new))
    return out


_SPEC: dict[tuple[str, str, str], Callable[[Spec], Spec]] = {
    ("TaskBatch", "v1alpha1", "v1beta1"): taskbatch_spec_up,
    ("TaskBatch", "v1beta1", "v1alpha1"): taskbatch_spec_down,
}


def _spec_function(kind: str, source: str, target: str) -> Callable[[Spec], Spec]:
    return _SPEC.get((kind, source, target), copy.deepcopy)


def convert(obj: dict[str, Any], target_version: str) -> dict[str, Any]:
    """The object at `target_version` (`gridop.io/<version>`), metadata and status kept."""
    api_version = str(obj.get("apiVersion", ""))
    group, _, source = api_version.partition("/")
    if group != GROUP or source not in VERSIONS:
        raise ConversionError(f"cannot convert apiVersion {api_version!r}: gridop serves {', '.join(VERSIONS)}")
    if target_version not in VERSIONS:
        raise ConversionError(f"cannot convert to {target_version!r}: gridop serves {', '.join(VERSIONS)}")
    out = copy.deepcopy(obj)
    out["apiVersion"] = f"{GROUP}/{target_version}"
    if source == target_version or "spec" not in obj:
        return out
    kind = str(obj.get("kind", ""))
    forward, backward = _spec_function(kind, source, target_version), _spec_function(kind, target_version, source)
    spec = obj["spec"]
    before = (obj.get("metadata") or {}).get("annotations")
    annotations = dict(before or {})
    kept = annotations.pop(stash_key(target_version), None)
    converted = forward(spec)
    if kept is not None:  # this object was converted from `target_version` once: restore it unless changed since
        try:
            original = json.loads(kept)
        except ValueError:
            original = None
        if isinstance(original, dict) and backward(original) == spec:
            converted = original
    if backward(converted) != spec:
        annotations[stash_key(source)] = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    out["spec"] = converted
    if annotations != dict(before or {}):  # else leave them exactly as they were (absent, empty or not)
        metadata = out.setdefault("metadata", {})
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
    return out
