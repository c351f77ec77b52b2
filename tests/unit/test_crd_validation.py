"""Bad objects are refused by the CRDs themselves, with a readable message; minimal ones are admitted.

There is no API server here, so this applies the committed CRDs the way one does: structural
defaulting first (the schema's `default`s, recursively, into a copy of the object), then the
OpenAPI schema (types, required, enums, bounds, patterns), then every x-kubernetes-validations CEL
rule, evaluated with cel-python (including transition rules against the old object). A rule that
cannot be evaluated (it reads a field the object does not have) is a rejection, as it is on a
real API server ("no such key").
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
SCHEMAS = {
    kind: yaml.safe_load((ROOT / "crds" / f"{plural}.gridop.io.yaml").read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for kind, plural in (("GridSession", "gridsessions"), ("TaskBatch", "taskbatches"), ("TaskPool", "taskpools"))
}
SCHEMA = SCHEMAS["GridSession"]
CEL = celpy.Environment()


def defaulted(schema: dict[str, Any], obj: Any) -> Any:
    """The API server's structural defaulting: a missing property with a `default` gets it, and
    defaulting then continues inside it (so `default: {}` fills in the sub-fields' defaults)."""
    if isinstance(obj, dict):
        obj = dict(obj)
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = defaulted(sub, obj[key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        obj = [defaulted(schema["items"], item) for item in obj]
    return obj


def cel_errors(schema: dict[str, Any], obj: Any, old: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules only apply on update
        activation = {"self": celpy.json_to_cel(obj)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = CEL.program(CEL.compile(rule["rule"])).evaluate(activation)
        except celpy.CELEvalError as exc:
            result = exc
        if isinstance(result, celpy.CELEvalError):
            errors.append(f"{path}{rule.get('fieldPath', '')}: rule {rule['rule']!r} cannot be evaluated: {result}")
        elif not result:
            errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                old_sub = old.get(key) if isinstance(old, dict) else None
                errors += cel_errors(sub, obj[key], old_sub, f"{path}.{key}")
    return errors


def list_map_errors(schema: dict[str, Any], obj: Any, path: str) -> list[str]:
    """A list of type `map` holds each key once: the API server refuses a duplicate."""
    errors = []
    if isinstance(obj, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema["x-kubernetes-list-map-keys"]
        seen = set()
        for i, item in enumerate(obj):
            key = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
            if key in seen:
                errors.append(f"{path}[{i}]: Duplicate value: {dict(zip(keys, key, strict=False))}")
            seen.add(key)
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                errors += list_map_errors(sub, obj[key], f"{path}.{key}")
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            errors += list_map_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The API server's verdict: [] to admit, else the messages it would return."""
    schema = SCHEMAS[obj["kind"]]
    obj = defaulted(schema, obj)
    old = defaulted(schema, old) if old is not None else None
    schema_errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in jsonschema.Draft4Validator(schema).iter_errors(obj)
    ]
    return schema_errors or list_map_errors(schema, obj, "") or cel_errors(schema, obj, old, "")


def session(**spec: Any) -> dict[str, Any]:
    base = {"user": "alice", "node": "w1", "config": {"airgen": {}, "grid": {}}}
    base.update(spec)
    return {"apiVersion": "gridop.io/v1beta1", "kind": "GridSession", "metadata": {"name": "s1"},
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
        (session(workload={"resources": {"requests": {"cpu": "lots"}}}), "'lots' does not match"),
        (session(workload={"ports": [{"name": "a", "containerPort": 80}, {"name": "a", "containerPort": 81}]}),
         ".spec.workload.ports[1]: Duplicate value: {'name': 'a'}"),
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


def batch(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gridop.io/v1beta1", "kind": "TaskBatch", "metadata": {"name": "b1"},
            "spec": {"handler": "tasks:run", **spec}}


def test_a_taskbatch_with_only_its_handler_is_admitted() -> None:
    """The one required field is enough: every rule reads fields the schema defaults."""
    assert admit(batch()) == []
    assert admit(batch(), batch()) == []  # an update of a minimal object, transition rules included
    assert admit(yaml.safe_load((ROOT / "examples" / "taskbatch.yaml").read_text())) == []


@pytest.mark.parametrize(
    "obj, message",
    [
        (batch(workers={"min": 5, "max": 2}), "spec.workers.min must not exceed spec.workers.max"),
        (batch(workers={"min": 5}), "spec.workers.min must not exceed spec.workers.max"),  # max defaults to 4
        (batch(leaseSeconds=5), "spec.leaseSeconds must exceed spec.heartbeatSeconds"),  # heartbeat defaults to 5
        (batch(handler="no-colon"), "does not match"),
    ],
)
def test_bad_taskbatches_are_refused(obj: dict[str, Any], message: str) -> None:
    errors = admit(obj)
    assert any(message in e for e in errors), errors


def test_taskbatch_transition_rules() -> None:
    cancelled = batch(cancel=True)
    assert any("cannot be undone" in e for e in admit(batch(cancel=False), cancelled))
    assert any("spec.handler is immutable" in e for e in admit(batch(handler="other:run"), batch()))


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_rule_is_evaluable_on_a_minimal_object(kind: str) -> None:
    """Rules may only read fields that are required or defaulted: check each rule's subject paths
    against a minimal object after defaulting (the bug class a real API server reports as
    'no such key')."""
    minimal = {"GridSession": session(), "TaskBatch": batch(), "TaskPool": taskpool()}[kind]
    obj = defaulted(SCHEMAS[kind], minimal)
    assert cel_errors(SCHEMAS[kind], obj, None, "") == []
    assert obj["spec"] != minimal["spec"] or kind == "GridSession"  # the task kinds gain their defaults


def taskpool(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": "default"},
            "spec": {"handler": "tasks:run", **spec}}


def test_a_taskpool_with_only_its_handler_is_admitted_and_bad_ones_are_refused() -> None:
    assert admit(taskpool()) == [] and admit(taskpool(), taskpool()) == []
    assert admit(yaml.safe_load((ROOT / "examples" / "htcgrid" / "taskpool.yaml").read_text())) == []
    assert defaulted(SCHEMAS["TaskPool"], taskpool())["spec"]["workers"]["min"] == 1
    assert any("spec.workers.min must not exceed spec.workers.max" in e
               for e in admit(taskpool(workers={"min": 5})))  # max defaults to 4
    assert any("metadata.name must be a DNS-1123 label" in e
               for e in admit({**taskpool(), "metadata": {"name": "Not_A_Label"}}))
