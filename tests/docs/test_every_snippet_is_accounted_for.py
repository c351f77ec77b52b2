"""Every code block of README.md and docs/*.md, and every file under examples/, is run by a test, or
is named here with the reason it cannot run on a machine without a cluster and where it is run
instead. A new block or file that is not accounted for fails this test: documented paths are tested
paths."""

from __future__ import annotations

import pathlib
import subprocess

import yaml

from tests.unit.test_crd_validation import admit

from .snippets import PAGES, ROOT, block, blocks

RUN = "run"
CLUSTER = "cluster"
SHOWN = "shown"

#: (page, the block's first line) -> (how, where or why)
BLOCKS: dict[tuple[str, str], tuple[str, str]] = {
    ("README.md", "make up"): (CLUSTER, "needs docker and kind; its prerequisite check runs in "
                               "test_make_up_names_what_it_needs, the chart it installs in tests/chart"),
    ("README.md", 'export PATH="$PWD/.venv/bin:$PATH"                                   # gridctl'): (
        CLUSTER, "needs a cluster with pods that run: tests/e2e/test_readme_e2e.py runs it verbatim on the cluster "
        "`make up` makes; gridctl console with a kind kubeconfig runs in tests/integration/test_console_gateway.py"),
    ("README.md", "make test"): (RUN, ".ci/run is this command"),
    ("README.md", "apiVersion: gridop.io/v1beta1"): (RUN, "test_readme.py::test_the_session_yaml_is_what_the_example_file_holds_and_is_admitted"),
    ("README.md", "from gridop.client import GridSessionManager"): (RUN, "test_readme.py::test_from_python_sessions"),
    ("README.md", "kubectl -n gridop-system port-forward svc/gridop-redis 6379 &"): (
        CLUSTER, "port-forwards to a cluster; test_readme.py::test_tasks_the_htc_grid_way sets GRIDOP_REDIS_URL from "
        "the same Secret"),
    ("README.md", "import os"): (RUN, "test_readme.py::test_tasks_the_htc_grid_way"),
    ("README.md", "gridctl tasks --redis-url redis://127.0.0.1:6379/0 run --local examples/tasks.jsonl --handler gridop.tasks.examples:square"): (
        RUN, "test_readme.py::test_a_handler_without_a_cluster"),
    ("README.md", "operator/gridop/      the package (operator/ is the source root, never a package itself)"): (
        RUN, "test_the_layout_names_folders_that_exist"),
    ("docs/cli.md", "gridctl session start sim-1 --node gridop-worker --config examples/session_config.json --wait"): (
        RUN, "test_cli_page.py::test_session_commands"),
    ("docs/cli.md", "NAME    PHASE     USER   NODE          NODE-IP      LAST-ACTIVE   AGE   REASON"): (
        RUN, "test_cli_page.py::test_session_commands (the header is what `session list` prints)"),
    ("docs/cli.md", "export GRIDOP_REDIS_URL=redis://127.0.0.1:6379/0                  # or --redis-url on `tasks`"): (
        RUN, "test_cli_page.py::test_task_commands"),
    ("docs/cli.md", "━━━━━━━━━━━━━━━━━━━━━━━━  3000/3000 100% 4,721 tasks/s 0:00:01 ETA 0:00:00"): (
        SHOWN, "a terminal's live progress bar; the bar is drawn in tests/dataplane/test_gridctl_tasks.py"),
    ("docs/cli.md", "gridctl console tail NAME [-n LINES] [-f]            # the console log (default 100 lines); -f follows"): (
        SHOWN, "a synopsis (NAME, FILE are placeholders); each command runs in tests/integration/test_console_gateway.py"),
    ("docs/cli.md", "$ gridctl session get sim-1 -o xml"): (RUN, "test_cli_page.py::test_session_commands, output compared"),
    ("docs/console.md", "- apiGroups: [gridop.io]"): (RUN, "test_the_console_rbac_rule_is_what_the_chart_grants"),
    ("docs/console.md", "gridctl console tail drone-sim -n 100 -f          # the last 100 lines, then follow"): (
        CLUSTER, "needs a running session's console; tests/e2e/test_console_e2e.py runs tail and interact"),
    ("docs/console.md", "from gridop.client import ConsoleClient, ConsoleError"): (
        CLUSTER, "needs a gateway at the page's address and a token; ConsoleClient's tail, open, resize, send and "
        "interact run in tests/integration/test_console_gateway.py against a real gateway process"),
    ("docs/console.md", "const ws = new WebSocket(`wss://grid.example.com/console/interact/team-a/drone-sim`,"): (
        SHOWN, "browser JavaScript; the subprotocol token it sends is tested in "
        "test_console_gateway.py::test_browser_token_in_subprotocol_and_origin_check"),
    ("docs/upgrade.md", 'for crd in gridsessions taskbatches taskpools; do'): (
        CLUSTER, "adopts CRDs an earlier chart left outside its release; what Helm checks (these labels and "
        "annotations) is Helm's, and the chart's CRD templates are rendered in tests/chart/test_chart.py"),
    ("docs/upgrade.md", "# Argo CD Application (excerpt)"): (RUN, "test_upgrade_page.py: its path resolves to the injected CA"),
    ("docs/upgrade.md", "# Flux HelmRelease (excerpt)"): (RUN, "test_upgrade_page.py: its path resolves to the injected CA"),
    ("docs/upgrade.md", "kubectl get crd gridsessions.gridop.io taskbatches.gridop.io taskpools.gridop.io \\"): (
        RUN, "test_upgrade_page.py, through the real kubectl"),
    ("docs/upgrade.md", "for kind in gridsessions taskbatches taskpools; do"): (
        RUN, "test_upgrade_page.py, through the real kubectl against objects stored at v1alpha1"),
    ("docs/development.md", "make test        # venv + lint (ruff, mypy, import contracts) + all tiers that need no cluster"): (
        RUN, "make test is .ci/run; make crds's drift check is tests/unit/test_crds.py; make e2e is tests/e2e"),
    ("docs/development.md", "API server ──list+watch──▶ Informer (the kind)            ──┐"): (SHOWN, "a picture"),
    ("docs/gitops.md", "$ kubectl wait gridsession/sim-1 --for=condition=Ready --timeout=2m"): (
        CLUSTER, "kubectl against a cluster; the conditions it waits on are tested in tests/unit/test_gitops_status.py"),
    ("docs/gitops.md", "apiVersion: v1"): (RUN, "test_the_argocd_config_carries_the_tested_health_checks"),
    ("docs/htc-grid.md", "-from api.connector import AWSConnector"): (
        RUN, "HTC-Grid's clients with this one change run in tests/integration/test_htcgrid_clients.py"),
    ("docs/htc-grid.md", "# kubectl apply -n team-a -f taskpool.yaml"): (RUN, "test_every_yaml_object_is_admitted"),
    ("docs/operations.md", ".venv/bin/python -m bench.session_start --kind sessions --count 200 1000"): (
        RUN, "test_operations_page.py::test_the_benchmark_commands_run (a few objects, one round)"),
    ("docs/operations.md", "helm upgrade --install gridop charts/gridop -n gridop-system --create-namespace"): (
        CLUSTER, "installs into a cluster; the chart with its defaults renders and lints in tests/chart"),
    ("docs/operations.md", "kubectl label node worker-1 gridop.io/resource-node=true"): (
        CLUSTER, "labels a cluster's node; the label and toleration the sessions use are tested in tests/unit/test_plan.py"),
    ("docs/operations.md", "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt > new.pem"): (
        CLUSTER, "patches a cluster's Secret; key rotation itself is tested in tests/unit/test_tokens.py"),
    ("docs/operations.md", "kubectl port-forward -n gridop-system svc/gridop-redis 6379 &"): (
        CLUSTER, "port-forwards to a cluster; the docs tier reads the same Secret's URL"),
    ("docs/operations.md", "docker build -t registry.example.com/gridop:0.1.0 ."): (
        CLUSTER, "needs a Docker engine and a registry; the Dockerfile is what `make up` builds"),
    ("docs/architecture.md", "kubectl / GitOps / gridctl session / GridSessionManager"): (SHOWN, "a picture"),
    ("docs/sdk.md", "from gridop.client import GridSessionManager"): (RUN, "test_sdk_page.py"),
    ("docs/sdk.md", "{"): (RUN, "test_sdk_page.py: the file its other blocks read"),
    ("docs/sdk.md", "from gridop.client import SyncGridSessionManager, SessionInitializationBehavior as B"): (
        RUN, "test_sdk_page.py"),
    ("docs/sdk.md", "from gridop.client import GridSessionManager, SessionInitializationBehavior as B, SessionAlreadyExistsError"): (
        RUN, "test_sdk_page.py"),
    ("docs/tasks.md", "apiVersion: gridop.io/v1beta1"): (RUN, "test_tasks_page.py::test_its_objects_are_admitted"),
    ("docs/tasks.md", "pending ──claim──▶ processing ──ok──▶ finished"): (
        SHOWN, "a diagram; the transitions are tested in tests/dataplane/test_store.py"),
    ("docs/tasks.md", "import os"): (RUN, "test_tasks_page.py::test_the_sdk_blocks_on_the_pages_own_pool"),
    ("docs/tasks.md", "import collections"): (RUN, "test_tasks_page.py::test_the_sdk_blocks_on_the_pages_own_pool"),
    ("docs/tasks.md", "# p99 end-to-end latency per batch over 5 minutes"): (
        RUN, "test_tasks_page.py::test_the_promql_names_what_workers_export"),
}

#: examples/ file -> the test that runs it
EXAMPLES: dict[str, str] = {
    "examples/__init__.py": "a package marker (examples.htcgrid is importable as a handler module)",
    "examples/gridsession.yaml": "test_readme.py (admitted, shown in the README); tests/e2e/test_session_e2e.py applies it",
    "examples/resource_config.json": "test_readme.py::test_from_python_sessions, test_examples.py::test_start_session",
    "examples/session_config.json": "test_readme.py::test_from_python_sessions, test_cli_page.py",
    "examples/start_session.py": "test_examples.py::test_start_session",
    "examples/send_tasks.py": "test_examples.py::test_send_tasks_to_the_example_batch",
    "examples/taskbatch.yaml": "test_cli_page.py::test_task_commands, test_examples.py; tests/e2e/test_taskbatch_e2e.py",
    "examples/tasks.jsonl": "test_readme.py::test_a_handler_without_a_cluster, test_cli_page.py",
    "examples/htcgrid/__init__.py": "a package marker",
    "examples/htcgrid/client.py": "tests/integration/test_htcgrid_clients.py",
    "examples/htcgrid/simple_client.py": "tests/integration/test_htcgrid_clients.py",
    "examples/htcgrid/cancel_tasks.py": "tests/integration/test_htcgrid_clients.py",
    "examples/htcgrid/mock_compute_engine.py": "tests/integration/test_htcgrid_clients.py (the pool's handler)",
    "examples/htcgrid/taskpool.yaml": "test_readme.py::test_tasks_the_htc_grid_way",
}


def test_every_block_is_accounted_for() -> None:
    found = {(b.page, b.first) for page in PAGES for b in blocks(page)}
    unaccounted = sorted(found - BLOCKS.keys())
    assert not unaccounted, ("blocks no test runs; run them in tests/docs, or say here why they cannot run and "
                             f"where they are run instead: {unaccounted}")
    stale = sorted(BLOCKS.keys() - found)
    assert not stale, f"the registry names blocks the pages no longer have: {stale}"
    for key, (how, why) in BLOCKS.items():
        assert how in (RUN, CLUSTER, SHOWN) and why, key


def test_every_example_is_accounted_for() -> None:
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    assert files == EXAMPLES.keys()


def test_the_layout_names_folders_that_exist() -> None:
    layout = block("README.md", "operator/gridop/      the package").text
    for line in layout.splitlines():
        head = line.split("  ")[0] if not line.startswith("crds/") else line
        for name in head.split():
            if name.endswith("/") and "{" not in name:
                base = "operator/gridop/" if line.startswith("  ") else ""
                assert (ROOT / base / name).is_dir(), f"the README's layout names {base}{name}, which does not exist"
    tiers = layout[layout.index("tests/{") + len("tests/{"):layout.index("}/")].split(",")
    assert sorted(tiers) == sorted(p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__")


def test_every_yaml_object_is_admitted() -> None:
    for page in PAGES:
        for b in blocks(page):
            if b.lang != "yaml":
                continue
            for obj in yaml.safe_load_all(b.text):
                if isinstance(obj, dict) and obj.get("apiVersion", "").startswith("gridop.io/"):
                    assert admit(obj) == [], b.where


def test_the_console_rbac_rule_is_what_the_chart_grants() -> None:
    from tests.k8s_tools import tool

    helm = tool("helm")
    assert helm is not None
    rendered = subprocess.run([str(helm), "template", "gridop", str(ROOT / "charts" / "gridop")], capture_output=True,
                              text=True, check=True).stdout
    (rule,) = yaml.safe_load(block("docs/console.md", "- apiGroups: [gridop.io]").text)
    rule = {k: v for k, v in rule.items() if k != "resourceNames"}
    granted = [r for doc in yaml.safe_load_all(rendered) if doc and doc.get("kind") == "ClusterRole"
               for r in doc.get("rules") or []]
    assert any(set(rule["resources"]) <= set(r.get("resources", [])) and set(rule["verbs"]) <= set(r.get("verbs", []))
               for r in granted), "no ClusterRole of the chart grants the rule docs/console.md shows"


def test_the_argocd_config_carries_the_tested_health_checks() -> None:
    config = yaml.safe_load(block("docs/gitops.md", "apiVersion: v1").text)
    for key, lua in config["data"].items():
        kind = key.rsplit("_", 1)[1].lower()
        assert lua.strip() == (ROOT / "docs" / "argocd" / f"{kind}.lua").read_text().strip(), key


def test_make_up_names_what_it_needs(tmp_path: pathlib.Path) -> None:
    """On a machine without kind, docker, helm or kubectl, `make up` says which, one line each, and stops."""
    empty = tmp_path / "bin"
    empty.mkdir()
    make = subprocess.run(["bash", "-c", "command -v make"], capture_output=True, text=True).stdout.strip()
    result = subprocess.run([make, "-s", "up-prereqs"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": f"{empty}:/nonexistent"})
    assert result.returncode != 0
    assert result.stdout.splitlines() == [f"make up needs {tool} on PATH: install it (kind, docker, helm 3+ and kubectl)"
                                          for tool in ("kind", "docker", "helm", "kubectl")]
