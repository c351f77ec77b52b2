"""The committed CRD YAML is exactly what `gridop crds` generates from the models."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import yaml

from gridop.api import crdgen

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models(tmp_path: pathlib.Path) -> None:
    """`make crds` writes both: the plain CRDs in crds/ and the chart's templated ones."""
    for directory, chart in ((ROOT / "crds", []), (ROOT / "charts" / "gridop" / "templates" / "crds", ["--chart"])):
        out = tmp_path / directory.name
        subprocess.run([sys.executable, "-m", "gridop", "crds", *chart, "--output", str(out)], check=True, capture_output=True)
        generated = {p.name: p.read_text() for p in out.glob("*.yaml")}
        assert len(generated) == 3, "gridop crds wrote nothing"
        committed = {p.name: p.read_text() for p in directory.glob("*.yaml")}
        assert committed == generated, f"{directory} drifted from the models: run `make crds` and commit"


def test_every_kind_serves_v1alpha1_deprecated_and_stores_v1beta1() -> None:
    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        assert list(versions) == ["v1alpha1", "v1beta1"], path.name
        assert versions["v1beta1"]["storage"] and not versions["v1alpha1"]["storage"]
        assert versions["v1alpha1"]["deprecated"] and "use gridop.io/v1beta1" in versions["v1alpha1"]["deprecationWarning"]
        assert all(v["served"] for v in versions.values())
        # Only a kind whose shape changed needs the webhook; the others convert by renaming apiVersion.
        strategy = crd["spec"]["conversion"]["strategy"]
        assert strategy == ("Webhook" if crd["spec"]["names"]["kind"] == "TaskBatch" else "None"), path.name
        if strategy == "None":
            assert versions["v1alpha1"]["schema"] == versions["v1beta1"]["schema"], path.name


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_schema_is_structural() -> None:
    crd = crdgen.crd_for(crdgen.KINDS[0])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if isinstance(node, dict) and not path.endswith(".properties"):
            assert "$ref" not in node, path
            assert "title" not in node, path
            assert "anyOf" not in node or all("type" not in o for o in node["anyOf"]), path
            if "properties" in node:
                assert node.get("type") == "object", path
    assert "null" not in json.dumps(schema)


def test_gridsession_crd_shape() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "gridsessions.gridop.io.yaml").read_text())
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["gs"] and names["categories"] == ["grid"]
    version = crd["spec"]["versions"][-1]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:5] == ["Phase", "User", "Node", "Node-IP", "Last-Active"]
    assert columns["Message"]["priority"] == 1 and "Ready" in columns["Message"]["jsonPath"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) == {"user", "config"}
    assert spec["properties"]["config"]["required"] == ["airgen", "grid"]
    assert spec["properties"]["idleTimeoutSeconds"]["minimum"] == 1
    assert any("nodeSelector" in r["rule"] for r in spec["x-kubernetes-validations"])
