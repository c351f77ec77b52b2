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


def render(*sets: str, include_crds: bool = False, release: str = "gridop") -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", "gridop-system"]
    if include_crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind
            and (component is None or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]


def test_lint_passes() -> None:
    result = helm("lint", str(CHART), "--strict", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_render_a_restricted_operator_with_crds_and_rbac() -> None:
    docs = render(include_crds=True)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted(
        ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding",
         "Secret", "Service", "ServiceAccount", "StatefulSet"]
    )
    crds = {c["metadata"]["name"]: c for c in by_kind(docs, "CustomResourceDefinition")}
    for path in (ROOT / "crds").glob("*.yaml"):
        committed = yaml.safe_load(path.read_text())
        rendered = crds[committed["metadata"]["name"]]
        # The chart's CRDs are crds/ plus `keep` (for release `gridop` the webhook is named alike).
        assert rendered["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert rendered == committed


    (deploy,) = by_kind(docs, "Deployment", "operator")
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
    assert env["GRIDOP_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["GRIDOP_LEADER_ELECTION"] == "true"
    assert env["GRIDOP_REDIS_URL"] == {"secretKeyRef": {"name": "gridop-redis", "key": "url"}}
    assert env["GRIDOP_REDIS_ACL"] == "true"
    assert not by_kind(docs, "ServiceMonitor")


def test_crds_are_templates_helm_upgrades_and_can_leave_to_the_user() -> None:
    """`helm upgrade` applies the CRDs (a chart's crds/ directory it never upgrades); the webhook
    they call is the release's; `crds.install=false` leaves them to `kubectl apply -f crds/`."""
    docs = render("crds.keep=false", "webhook.certManager.enabled=true", release="grid")
    crds = {c["metadata"]["name"]: c for c in by_kind(docs, "CustomResourceDefinition")}
    batch = crds["taskbatches.gridop.io"]
    assert batch["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "gridop-system/grid-gridop-webhook"}
    service = batch["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
    assert (service["namespace"], service["name"], service["path"]) == ("gridop-system", "grid-gridop-webhook", "/convert")
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "grid-gridop-webhook"]
    assert svc["spec"]["selector"]["gridop.io/conversion-webhook"] == "true"
    (deploy,) = by_kind(docs, "Deployment", "operator")
    assert deploy["spec"]["template"]["metadata"]["labels"]["gridop.io/conversion-webhook"] == "true"
    (cert,) = by_kind(docs, "Certificate")
    assert cert["spec"]["secretName"] == "grid-gridop-webhook-tls"
    assert "grid-gridop-webhook.gridop-system.svc" in cert["spec"]["dnsNames"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRIDOP_WEBHOOK_CERT_DIR"] == "/etc/gridop/webhook"
    assert not by_kind(render("crds.install=false"), "CustomResourceDefinition")


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


def test_the_data_plane_can_be_a_redis_cluster_deployed_or_external() -> None:
    docs = render("redis.cluster.enabled=true", "redis.cluster.shards=3", "redis.password=pw")
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes" and "--cluster-announce-hostname" in args
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # one stable name per shard
    (job,) = by_kind(docs, "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "redis-cli --cluster create $nodes --cluster-replicas 0" in script and "seq 0 2" in script
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"]["url"].startswith("redis+cluster://:pw@gridop-redis-0.gridop-redis.gridop-system.svc")
    external = render("redis.enabled=false", "redis.externalUrl=redis+cluster://node-1.cache:6379")
    assert by_kind(external, "Secret")[0]["stringData"] == {"url": "redis+cluster://node-1.cache:6379"}
    assert not by_kind(external, "Job") and not by_kind(external, "StatefulSet")


def test_worker_pod_monitor_is_optional() -> None:
    assert not by_kind(render(), "PodMonitor")
    (monitor,) = by_kind(render("metrics.workerPodMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "gridop-worker"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "interval": "15s"}]


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
    rules = set().union(*(_rules(r) for r in operator_roles + [r for r in by_kind(docs, "Role") if "gateway" not in r["metadata"]["name"]]))
    needed = {
        ("gridop.io", "gridsessions", "watch"), ("gridop.io", "gridsessions", "patch"),
        ("gridop.io", "gridsessions/status", "patch"), ("", "pods", "create"), ("", "pods", "delete"),
        ("", "pods", "watch"), ("", "services", "create"), ("", "configmaps", "patch"), ("", "secrets", "create"),
        # the session controller's caches
        ("", "pods", "list"), ("", "services", "list"), ("", "services", "watch"), ("", "configmaps", "list"),
        ("", "configmaps", "watch"), ("", "secrets", "list"), ("", "secrets", "watch"), ("", "nodes", "list"),
        ("", "nodes", "watch"), ("", "events", "create"),
        ("coordination.k8s.io", "leases", "patch"),
        ("gridop.io", "taskbatches", "watch"), ("gridop.io", "taskbatches/status", "patch"),
        ("batch", "jobs", "create"), ("batch", "jobs", "patch"),
        # the batch and pool controllers' caches, and a batch's finalizer
        ("batch", "jobs", "list"), ("batch", "jobs", "watch"), ("apps", "deployments", "list"),
        ("apps", "deployments", "watch"), ("apps", "deployments", "create"), ("apps", "deployments", "patch"),
        ("gridop.io", "taskbatches", "patch"), ("gridop.io", "taskpools", "watch"), ("gridop.io", "taskpools/status", "patch"),
    }
    assert needed <= rules, needed - rules
    assert not any("*" in part for rule in rules for part in rule)


def test_namespaced_mode_grants_roles_per_watched_namespace_only() -> None:
    docs = render("rbac.scope=namespaced", "operator.watchNamespaces={team-a,team-b}")
    roles = {r["metadata"]["namespace"] for r in by_kind(docs, "Role") if ("", "pods", "create") in _rules(r)}
    gateway_roles = {r["metadata"]["namespace"] for r in by_kind(docs, "Role", "gateway") if ("", "pods/attach", "create") in _rules(r)}
    assert gateway_roles == {"team-a", "team-b"}
    assert roles == {"team-a", "team-b"}
    cluster = next(r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-cluster"))
    assert ("", "pods", "create") not in _rules(cluster)
    env = {e["name"]: e.get("value") for e in by_kind(docs, "Deployment", "operator")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
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


def test_service_monitors_scrape_the_operator_and_the_gateway() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    docs = render("metrics.serviceMonitor.enabled=true")
    monitors = {sm["metadata"]["name"]: sm for sm in by_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"gridop", "gridop-gateway"}
    services = by_kind(docs, "Service")
    for sm in monitors.values():
        selector = sm["spec"]["selector"]["matchLabels"]
        (svc,) = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]["name"]
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"


def test_an_existing_secret_makes_every_render_the_same() -> None:
    """GitOps renders with `helm template` (no lookup): a generated password would change on every
    sync; with redis.existingSecret the chart renders no Secret and reads the one given."""
    assert helm("template", "gridop", str(CHART)).stdout != helm("template", "gridop", str(CHART)).stdout
    sets = ["--set", "redis.existingSecret=my-redis"]
    first, second = (helm("template", "gridop", str(CHART), *sets).stdout for _ in range(2))
    assert first == second
    docs = [d for d in yaml.safe_load_all(first) if d]
    assert not by_kind(docs, "Secret", "data-plane")
    (op,) = by_kind(docs, "Deployment", "operator")
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for c in op["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs == ["my-redis"]
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["metadata"]["name"] == "gridop-redis"
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"secretKeyRef": {"name": "my-redis", "key": "password"}} in [e.get("valueFrom") for e in env]


def test_disruption_budgets_cover_every_part() -> None:
    docs = render()
    pdbs = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in by_kind(docs, "PodDisruptionBudget")}
    assert set(pdbs) == {"operator", "gateway", "data-plane"}
    for component, pdb in pdbs.items():
        pods = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                        for k, v in pdb["spec"]["selector"]["matchLabels"].items())]
        assert len(pods) == 1, component
        assert pdb["spec"]["maxUnavailable"] == 1
    assert not by_kind(render("podDisruptionBudget.enabled=false"), "PodDisruptionBudget")


def test_the_notes_point_at_what_exists() -> None:
    notes = helm("install", "gridop", str(CHART), "--dry-run=client", "-n", "gridop-system").stdout
    notes = notes[notes.index("NOTES:"):]
    assert "http" not in notes.replace("httpd", "")
    for needed in ("kubectl label node", "port-forward svc/gridop-gateway", "GRIDOP_GATEWAY_URL", "gridctl"):
        assert needed in notes


def test_the_gateway_runs_restricted_with_least_privilege() -> None:
    docs = render()
    (deploy,) = by_kind(docs, "Deployment", "gateway")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["gateway"] and pod["serviceAccountName"] == "gridop-gateway"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (svc,) = list(by_kind(docs, "Service", "gateway"))
    assert svc["spec"]["ports"][0]["targetPort"] == "http"

    gateway_roles = by_kind(docs, "ClusterRole", "gateway") + by_kind(docs, "Role", "gateway")
    rules = set().union(*(_rules(r) for r in gateway_roles))
    assert {
        ("authentication.k8s.io", "tokenreviews", "create"), ("authorization.k8s.io", "subjectaccessreviews", "create"),
        ("", "pods/attach", "create"), ("", "pods/attach", "get"), ("", "pods/log", "get"),
        ("gridop.io", "gridsessions", "watch"), ("gridop.io", "gridsessions", "patch"), ("", "events", "create"),
        ("", "configmaps", "get"),
    } <= rules
    # exec only for a console that is a command; then no attach.
    assert not any(res == "pods/exec" for _, res, _ in rules)
    exec_rules = set().union(*(_rules(r) for r in by_kind(render("gateway.consoleCommand={sh,-l}"), "ClusterRole", "gateway")))
    assert ("", "pods/exec", "create") in exec_rules and not any(res == "pods/attach" for _, res, _ in exec_rules)
    # Never the signing keys, never pods themselves, nothing but the public-key ConfigMap in its namespace.
    assert not any(res in ("secrets", "pods") for _, res, _ in rules)
    (keys,) = [r for r in by_kind(docs, "Role", "gateway") if r["metadata"]["name"].endswith("-keys")]
    assert keys["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["gridop-signing-keys-public"], "verbs": ["get"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "delete"]},
    ]
    # Two replicas by default, sharing one writer per session, with a PodDisruptionBudget.
    (deploy,) = by_kind(docs, "Deployment", "gateway")
    assert deploy["spec"]["replicas"] == 2
    assert [p for p in by_kind(docs, "PodDisruptionBudget") if "gateway" in p["metadata"]["name"]]
    assert not any("*" in part for rule in rules for part in rule)


def test_the_operator_reports_the_gateway_url() -> None:
    def operator_env(*sets: str) -> dict[str, Any]:
        (deploy,) = by_kind(render(*sets), "Deployment", "operator")
        return {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert operator_env()["GRIDOP_GATEWAY_URL"] == "ws://gridop-gateway.gridop-system.svc:80"
    assert operator_env("gateway.url=wss://grid.example.com/console")["GRIDOP_GATEWAY_URL"] == "wss://grid.example.com/console"
    assert "GRIDOP_GATEWAY_URL" not in operator_env("gateway.enabled=false")
    assert not by_kind(render("gateway.enabled=false"), "Deployment", "gateway")


def test_gateway_recording_and_settings() -> None:
    docs = render("gateway.recording.enabled=true", "gateway.replicas=1", "gateway.allowedOrigins={https://console.example}",
                  "gateway.limits.maxConnectionsPerUser=8")
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (deploy,) = by_kind(docs, "Deployment", "gateway")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRIDOP_GATEWAY_RECORDING_DIR"] == "/var/lib/gridop/recordings"
    assert env["GRIDOP_GATEWAY_RECORDING_REQUIRED"] == "true"
    assert env["GRIDOP_GATEWAY_ALLOWED_ORIGINS"] == '["https://console.example"]'
    assert env["GRIDOP_GATEWAY_MAX_CONNECTIONS_PER_USER"] == "8"
    result = helm("template", "gridop", str(CHART), "--set", "gateway.recording.enabled=true",
                  "--set", "gateway.replicas=2", check=False)
    assert result.returncode != 0 and "needs gateway.recording.accessMode: ReadWriteMany" in result.stderr
    for bad, where in (("gateway.url=ftp://x", "/gateway/url"), ("gateway.allowedOrigins={evil}", "/gateway/allowedOrigins")):
        result = helm("template", "gridop", str(CHART), "--set", bad, check=False)
        assert result.returncode != 0 and where in result.stderr, (bad, result.stderr)


def test_users_get_console_rights_through_the_aggregated_roles() -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(render(), "ClusterRole")}
    assert ("gridop.io", "gridsessions/console", "get") in _rules(roles["gridop-view"])
    assert ("gridop.io", "gridsessions/console", "create") not in _rules(roles["gridop-view"])
    assert ("gridop.io", "gridsessions/console", "create") in _rules(roles["gridop-edit"])


def test_every_value_is_documented() -> None:
    """docs/operations.md's values table names every key of values.yaml (a prefix with `.*` covers its keys)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: Any, path: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, sub in node.items() for leaf in leaves(sub, f"{path}.{key}" if path else key)]
        return [path]

    page = (ROOT / "docs" / "operations.md").read_text()
    table = page[page.index("| key | default | meaning |"):page.index("`values.schema.json` rejects")]
    named = set()
    for row in table.splitlines()[2:]:
        if row.startswith("| `"):
            named.update(name.strip().strip("`") for name in row.split("|")[1].split(", "))
    missing = [leaf for leaf in leaves(values)
               if not any(leaf == n or (leaf.startswith(n.removesuffix("*")) and n.endswith(".*"))
                          or leaf.startswith(n + ".") for n in named)]
    assert missing == [], f"values docs/operations.md does not describe: {missing}"
