"""Bad GridSessions are refused by the CRD itself, with a readable message.

There is no API server here, so this applies the committed CRD the way one does: the OpenAPI
schema (types, required, enums, bounds, patterns) and then every x-kubernetes-validations CEL
rule, evaluated with cel-python (including transition rules against the old object).
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "gridsessions.gridop.io.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
CEL = celpy.Environment()


def cel_errors(schema: dict[str, Any], obj: Any, old: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules only apply on update
        activation = {"self": celpy.json_to_cel(obj)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = CEL.program(CEL.compile(rule["rule"])).evaluate(activation)
        if not result:
            errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                old_sub = old.get(key) if isinstance(old, dict) else None
                errors += cel_errors(sub, obj[key], old_sub, f"{path}.{key}")
    return errors


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The API server's verdict: [] to admit, else the messages it would return."""
    schema_errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in jsonschema.Draft4Validator(SCHEMA).iter_errors(obj)
    ]
    return schema_errors or cel_errors(SCHEMA, obj, old, "")


def session(**spec: Any) -> dict[str, Any]:
    base = {"user": "alice", "node": "w1", "config": {"airgen": {}, "grid": {}}}
    base.update(spec)
    return {"apiVersion": "gridop.io/v1alpha1", "kind": "GridSession", "metadata": {"name": "s1"},
            "spec": {k: v for k, v in base.items() if v is not None}}


def test_the_example_is_admitted() -> None:
    assert admit(yaml.safe_load((ROOT / "examples" / "gridsession.yaml").read_text())) == []
    assert admit(session()) == []


@pytest.mark.parametrize(
    "obj, message",
    [
        (session(user=None), "'user' is a required property"),
        (session(config={"airgen": {}}), "'grid' is a required property"),
        (session(config={"grid": {}}), "'airgen' is a required property"),
        (session(node=None), "exactly one of spec.node or spec.nodeSelector must be set"),
        (session(nodeSelector={"pool": "a"}), "exactly one of spec.node or spec.nodeSelector must be set"),
        (session(idleTimeoutSeconds=-5), "-5 is less than the minimum of 1"),
        (session(maxLifetimeSeconds=0), "0 is less than the minimum of 1"),
        (session(sharing="Sometimes"), "'Sometimes' is not one of ['Shared', 'Exclusive']"),
        (session(workload={"ports": [{"name": "http", "containerPort": 70000}]}), "70000 is greater than the maximum"),
        (session(workload={"ports": [{"name": "Not_OK", "containerPort": 80}]}), "does not match"),
    ],
)
def test_bad_sessions_are_refused_with_a_readable_message(obj: dict[str, Any], message: str) -> None:
    errors = admit(obj)
    assert any(message in e for e in errors), errors


def test_names_that_cannot_name_a_pod_and_service_are_refused() -> None:
    bad = session()
    bad["metadata"]["name"] = "Session_1"
    assert any("DNS-1035 label" in e for e in admit(bad))
    long = session()
    long["metadata"]["name"] = "s" * 57
    assert any("at most 56" in e for e in admit(long))


def test_user_is_immutable_but_other_fields_may_change() -> None:
    old = session()
    changed_user = copy.deepcopy(old)
    changed_user["spec"]["user"] = "mallory"
    assert any("spec.user is immutable" in e for e in admit(changed_user, old))
    longer = copy.deepcopy(old)
    longer["spec"]["idleTimeoutSeconds"] = 600
    assert admit(longer, old) == []
