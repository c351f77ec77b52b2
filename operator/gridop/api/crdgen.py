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

from . import conversion, v1alpha1, v1beta1
from .v1beta1 import common

#: Each kind at each served version, oldest first; the last is the storage version.
KINDS: list[list[tuple[str, ModuleType]]] = [
    [("v1alpha1", v1alpha1.gridsession), ("v1beta1", v1beta1.gridsession)],
    [("v1alpha1", v1alpha1.taskbatch), ("v1beta1", v1beta1.taskbatch)],
    [("v1alpha1", v1alpha1.taskpool), ("v1beta1", v1beta1.taskpool)],
]
DEPRECATED = {"v1alpha1": v1alpha1.DEPRECATION_WARNING}
#: Where the API server reaches the conversion webhook when the CRDs are applied from `crds/`
#: (the chart's release `gridop` in `gridop-system`; the chart renders its own names).
WEBHOOK_SERVICE = {"namespace": "gridop-system", "name": "gridop-webhook", "path": "/convert", "port": 443}


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


def version_schema(kind: ModuleType, description: str) -> dict[str, Any]:
    """The openAPIV3Schema of one kind at one version (see `gridsession` for the fields it reads)."""
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
        "description": description,
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
    return root


def crd_for(versions: list[tuple[str, ModuleType]]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, every version served, the last one stored."""
    kind = versions[-1][1]
    served = []
    for name, module in versions:
        entry: dict[str, Any] = {"name": name, "served": True, "storage": module is kind}
        if name in DEPRECATED:
            entry |= {"deprecated": True, "deprecationWarning": DEPRECATED[name]}
        entry |= {
            "subresources": {"status": {}},
            "additionalPrinterColumns": list(module.PRINTER_COLUMNS),
            "schema": {"openAPIV3Schema": version_schema(module, (kind.__doc__ or "").strip().splitlines()[0])},
        }
        served.append(entry)
    if kind.KIND in conversion.WEBHOOK_KINDS:
        strategy: dict[str, Any] = {"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"service": dict(WEBHOOK_SERVICE)},
        }}
    else:
        strategy = {"strategy": "None"}  # one shape in every version: the API server only renames apiVersion

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
            "conversion": strategy,
            "versions": served,
        },
    }


HEADER = "# Generated by `gridop crds` from operator/gridop/api; do not edit by hand.\n"
_NAMESPACE, _SERVICE = "__RELEASE_NAMESPACE__", "__WEBHOOK_SERVICE__"


class _Dumper(yaml.SafeDumper):
    """Writes a value the versions share in full each time, never as a YAML anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(crd: dict[str, Any]) -> str:
    return yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=120)


def render(crd: dict[str, Any]) -> str:
    return HEADER + _dump(crd)


def render_chart(crd: dict[str, Any]) -> str:
    """The CRD as a chart template: the webhook Service named after the release, the CRDs kept on
    uninstall (`crds.keep`), the CA injected by cert-manager when the chart uses it, and nothing at
    all with `crds.install=false` (for those who apply `crds/` themselves)."""
    crd = copy.deepcopy(crd)
    service = (crd["spec"]["conversion"].get("webhook") or {}).get("clientConfig", {}).get("service")
    if service is not None:
        service |= {"namespace": _NAMESPACE, "name": _SERVICE}
    text = _dump(crd)
    text = text.replace(_NAMESPACE, "{{ .Release.Namespace }}").replace(
        _SERVICE, '{{ include "gridop.fullname" . }}-webhook')
    annotations = ("metadata:\n"
                   "  annotations:\n"
                   '    {{- if .Values.crds.keep }}\n'
                   "    helm.sh/resource-policy: keep\n"
                   "    {{- end }}\n")
    if service is not None:
        annotations += ('    {{- if .Values.webhook.certManager.enabled }}\n'
                        '    cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "gridop.fullname" . }}-webhook\n'
                        "    {{- end }}\n")
    text = text.replace("metadata:\n", annotations, 1)
    return HEADER + "{{- if .Values.crds.install }}\n" + text + "{{- end }}\n"


def generated_files(*, chart: bool = False) -> dict[str, str]:
    """File name -> YAML text, for every kind (as chart templates with `chart`)."""
    result = {}
    for kind in KINDS:
        crd = crd_for(kind)
        result[f"{crd['metadata']['name']}.yaml"] = (render_chart if chart else render)(crd)
    return result


def write(output: pathlib.Path, *, chart: bool = False) -> list[pathlib.Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files(chart=chart).items():
        path = output / name
        path.write_text(text)
        written.append(path)
    return written
