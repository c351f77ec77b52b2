"""Generate CustomResourceDefinitions from the pydantic models.

The models are the API; the CRD YAML is their projection into a structural OpenAPI v3 schema:
`$ref`s inlined, titles dropped, `anyOf [X, null]` folded into X (optional = not required),
`int | str` as int-or-string, free-form dicts as preserve-unknown-fields, plus the CEL rules and
printer columns only a CRD can carry.
"""

from __future__ import annotations

import copy
import pathlib
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel

from .v1alpha1 import common, gridsession, taskbatch, taskpool

KINDS: list[ModuleType] = [gridsession, taskbatch, taskpool]


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None, *, keep_defaults: bool = True) -> dict[str, Any]:
    """Turn one pydantic JSON schema node into a structural Kubernetes schema node."""
    defs = defs if defs is not None else schema.get("$defs", {})
    node = copy.deepcopy(schema)
    node.pop("$defs", None)

    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = {**copy.deepcopy(target), **node}
        return structural(merged, defs, keep_defaults=keep_defaults)

    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            pattern = next((o["pattern"] for o in options if o.get("type") == "string" and "pattern" in o), None)
            if pattern is not None:
                node["pattern"] = pattern  # checked on strings only: a quantity's "100m", never its 2
        elif len(options) == 1:
            inner = structural(options[0], defs, keep_defaults=keep_defaults)
            node = {**inner, **node}
        else:
            raise ValueError(f"cannot express anyOf {options!r} structurally")

    for key in ("title", "discriminator"):
        node.pop(key, None)
    if node.get("default", ...) is None or not keep_defaults:
        node.pop("default", None)

    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        node["type"] = "object"
        return node

    if "properties" in node:
        node["properties"] = {
            name: structural(sub, defs, keep_defaults=keep_defaults) for name, sub in node["properties"].items()
        }
        node["type"] = "object"
        node.pop("additionalProperties", None)  # extra=forbid: the API server prunes unknown fields
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs, keep_defaults=keep_defaults)
    if isinstance(node.get("items"), dict):
        node["items"] = structural(node["items"], defs, keep_defaults=keep_defaults)
    return node


def _object_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """`default: {}` on every field whose pydantic default is a whole sub-model (`default_factory`).

    pydantic leaves such defaults out of the JSON schema, so an object that omits the field would
    reach the API server's CEL rules without it, and a rule reading it (`self.workers.min`) fails
    with "no such key". With `default: {}` the API server fills the object in and then applies its
    fields' own defaults, as the operator's model does.
    """
    for name, field in model.model_fields.items():
        node = schema.get("properties", {}).get(field.alias or name)
        if node is None or field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            node.setdefault("default", {})
            _object_defaults(type(value), node)


def _add_rules(schema: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    if rules:
        schema.setdefault("x-kubernetes-validations", []).extend(rules)


def crd_for(kind: ModuleType) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind module (see `gridsession` for the fields it reads)."""
    spec_model = getattr(kind, f"{kind.KIND}Spec")
    status_model = getattr(kind, f"{kind.KIND}Status")

    spec_schema = structural(spec_model.model_json_schema(by_alias=True, mode="validation"))
    _object_defaults(spec_model, spec_schema)
    status_schema = structural(status_model.model_json_schema(by_alias=True, mode="serialization"), keep_defaults=False)
    status_schema.pop("required", None)  # the operator writes status piecemeal
    _add_rules(spec_schema, getattr(kind, "SPEC_RULES", []))
    for field, rules in getattr(kind, "FIELD_RULES", {}).items():
        _add_rules(spec_schema["properties"][field], rules)

    root: dict[str, Any] = {
        "type": "object",
        "description": (kind.__doc__ or "").strip().splitlines()[0],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    _add_rules(root, getattr(kind, "ROOT_RULES", []))

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.PLURAL}.{common.GROUP}",
            "labels": {"app.kubernetes.io/name": "gridop", "app.kubernetes.io/part-of": "gridop"},
        },
        "spec": {
            "group": common.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.KIND,
                "listKind": f"{kind.KIND}List",
                "plural": kind.PLURAL,
                "singular": kind.SINGULAR,
                "shortNames": list(kind.SHORT_NAMES),
                "categories": list(kind.CATEGORIES),
            },
            "versions": [
                {
                    "name": common.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `gridop crds` from operator/gridop/api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def generated_files() -> dict[str, str]:
    """File name -> YAML text, for every kind."""
    result = {}
    for kind in KINDS:
        crd = crd_for(kind)
        result[f"{crd['metadata']['name']}.yaml"] = render(crd)
    return result


def write(output: pathlib.Path) -> list[pathlib.Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = output / name
        path.write_text(text)
        written.append(path)
    return written
