"""Conversion between gridop.io/v1alpha1 and v1beta1 loses nothing, for any object the API server
would accept: property tests over objects generated from the committed CRDs' own schemas."""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridop.api import conversion, v1alpha1, v1beta1
from gridop.webhook import review_response

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRDS = {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: yaml.safe_load(p.read_text())
        for p in (ROOT / "crds").glob("*.yaml")}
MODELS = {("TaskBatch", "v1alpha1"): v1alpha1.taskbatch.TaskBatchSpec, ("TaskBatch", "v1beta1"): v1beta1.taskbatch.TaskBatchSpec,
          ("GridSession", "v1alpha1"): v1alpha1.gridsession.GridSessionSpec,
          ("GridSession", "v1beta1"): v1beta1.gridsession.GridSessionSpec,
          ("TaskPool", "v1alpha1"): v1alpha1.taskpool.TaskPoolSpec, ("TaskPool", "v1beta1"): v1beta1.taskpool.TaskPoolSpec}
PROPERTIES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def schema(kind: str, version: str) -> dict[str, Any]:
    (entry,) = [v for v in CRDS[kind]["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


def _timestamps() -> st.SearchStrategy[str]:
    return st.datetimes(min_value=datetime.datetime(2020, 1, 1), max_value=datetime.datetime(2040, 1, 1)).map(
        lambda t: t.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"))


def values(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any value a structural schema node admits (CEL rules aside: conversion never reads them)."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(st.text("abcxyz", min_size=1, max_size=4),
                               st.integers(-5, 5) | st.text(max_size=4) | st.booleans(), max_size=3)
    if node.get("x-kubernetes-int-or-string"):
        strings = st.from_regex(node["pattern"], fullmatch=True) if "pattern" in node else st.text(max_size=6)
        return st.integers(0, 10**6) | strings.filter(lambda s: len(s) < 20)
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props is not None:
            required = set(node.get("required", []))
            return st.fixed_dictionaries({k: values(v) for k, v in props.items() if k in required},
                                         optional={k: values(v) for k, v in props.items() if k not in required})
        extra = node.get("additionalProperties")
        inner = values(extra) if isinstance(extra, dict) else st.text(max_size=4)
        return st.dictionaries(st.from_regex(r"[a-z][a-z0-9.]{0,8}", fullmatch=True), inner,
                               min_size=node.get("minProperties", 0), max_size=3)
    if kind == "array":
        items = values(node["items"])
        keys = node.get("x-kubernetes-list-map-keys")
        unique = (lambda item: tuple(item.get(k) for k in keys)) if keys else None
        return st.lists(items, max_size=min(node.get("maxItems", 3), 3), unique_by=unique)
    if kind == "string":
        if node.get("format") == "date-time":
            return _timestamps()
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True).filter(
                lambda s: node.get("minLength", 0) <= len(s) <= node.get("maxLength", 60))
        return st.text(min_size=node.get("minLength", 0), max_size=min(node.get("maxLength", 12), 12))
    if kind == "integer":
        return st.integers(node.get("minimum", -(10**6)), node.get("maximum", 10**9))
    if kind == "number":
        low, high = node.get("minimum", 0.0), node.get("maximum", 1e6)
        # Values on a millisecond grid, and values off it (0.0005 s has no millisecond form).
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(int(low), 1000).map(float) | \
            st.integers(0, 10**6).map(lambda ms: ms / 1000).filter(lambda x: low <= x <= high)
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"no strategy for {node!r}")


def objects(kind: str, version: str) -> st.SearchStrategy[dict[str, Any]]:
    root = schema(kind, version)["properties"]
    meta = st.fixed_dictionaries({"name": st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True), "namespace": st.just("grid"),
                                  "resourceVersion": st.integers(1, 10**6).map(str)},
                                 optional={"labels": st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]),
                                                                     min_size=1),
                                           "annotations": st.dictionaries(st.sampled_from(["note", "owner"]), st.text(max_size=5),
                                                                          min_size=1)})
    return st.fixed_dictionaries({"apiVersion": st.just(f"gridop.io/{version}"), "kind": st.just(kind), "metadata": meta,
                                  "spec": values(root["spec"])}, optional={"status": values(root["status"])}).filter(admitted)


def admitted(obj: dict[str, Any]) -> bool:
    """The CEL rule the generator does not read: a backoffMultiplier of at least 1."""
    factor = (obj["spec"].get("retry") or {}).get("backoffMultiplier", 1)
    return float(factor) >= 1


def valid(obj: dict[str, Any], kind: str, version: str) -> None:
    jsonschema.validate(obj, schema(kind, version))


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_v1alpha1_to_v1beta1_and_back_is_exact(kind: str) -> None:
    @PROPERTIES
    @given(objects(kind, "v1alpha1"))
    def round_trip(alpha: dict[str, Any]) -> None:
        beta = conversion.convert(alpha, "v1beta1")
        valid(beta, kind, "v1beta1")
        assert conversion.convert(beta, "v1alpha1") == alpha
        # and on: converting again and again changes nothing more
        assert conversion.convert(conversion.convert(beta, "v1alpha1"), "v1beta1") == beta

    round_trip()


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_v1beta1_to_v1alpha1_and_back_is_exact(kind: str) -> None:
    @PROPERTIES
    @given(objects(kind, "v1beta1"))
    def round_trip(beta: dict[str, Any]) -> None:
        alpha = conversion.convert(beta, "v1alpha1")
        valid(alpha, kind, "v1alpha1")
        assert conversion.convert(alpha, "v1beta1") == beta

    round_trip()


def test_what_a_v1alpha1_taskbatch_means_v1beta1_means_too() -> None:
    """The operator reads v1beta1: a v1alpha1 spec reaches it with the same policy."""
    alpha = {"handler": "m:f", "retry": {"maxRetries": 2, "backoffSeconds": 0.25, "backoffMultiplier": 1.5,
                                         "backoffMaxSeconds": 30, "onError": "Fail"}}
    obj = {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": "b"}, "spec": alpha}
    beta = conversion.convert(obj, "v1beta1")
    assert beta["spec"] == {"handler": "m:f", "onError": "Fail", "retry": {
        "maxRetries": 2, "backoffMilliseconds": 250, "backoffMultiplier": "1.5", "backoffMaxMilliseconds": 30000}}
    assert "annotations" not in beta["metadata"]  # exact: nothing to keep aside
    spec = v1beta1.taskbatch.TaskBatchSpec.model_validate(beta["spec"])
    assert (spec.on_error, spec.retry.backoff_milliseconds, v1beta1.taskbatch.decimal_value(spec.retry.backoff_multiplier)) == \
        ("Fail", 250, 1.5)


def test_a_value_one_version_cannot_hold_is_kept_aside_until_the_spec_changes() -> None:
    obj = {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": "b"},
           "spec": {"handler": "m:f", "retry": {"backoffSeconds": 0.0004}}}
    beta = conversion.convert(obj, "v1beta1")
    assert beta["spec"]["retry"]["backoffMilliseconds"] == 0
    assert json.loads(beta["metadata"]["annotations"]["gridop.io/v1alpha1-spec"]) == obj["spec"]
    assert conversion.convert(beta, "v1alpha1") == obj
    # Once the spec is changed at v1beta1, the kept v1alpha1 spec no longer describes it: dropped.
    beta["spec"]["retry"]["backoffMilliseconds"] = 5
    again = conversion.convert(beta, "v1alpha1")
    assert again["spec"]["retry"]["backoffSeconds"] == 0.005 and "annotations" not in again["metadata"]


def test_the_webhook_answers_a_conversion_review_and_refuses_what_it_cannot_convert() -> None:
    obj = {"apiVersion": "gridop.io/v1alpha1", "kind": "TaskBatch", "metadata": {"name": "b"},
           "spec": {"handler": "m:f", "retry": {"onError": "Fail"}}}
    answer = review_response({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                              "request": {"uid": "u1", "desiredAPIVersion": "gridop.io/v1beta1", "objects": [obj, obj]}})
    response = answer["response"]
    assert response["uid"] == "u1" and response["result"] == {"status": "Success"}
    assert [o["spec"]["onError"] for o in response["convertedObjects"]] == ["Fail", "Fail"]
    refused = review_response({"kind": "ConversionReview",
                               "request": {"uid": "u2", "desiredAPIVersion": "gridop.io/v2", "objects": [obj]}})["response"]
    assert refused["uid"] == "u2" and refused["result"]["status"] == "Failure" and "v2" in refused["result"]["message"]
