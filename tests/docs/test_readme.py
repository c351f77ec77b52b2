"""README.md, as a new user follows it: each code block runs, and says what it says it does."""

from __future__ import annotations

import asyncio
import json
import pathlib

import kmock

from gridop.kube import KubeClient, resources
from tests.unit.test_crd_validation import admit

from .conftest import Pods, applied, load_yaml
from .snippets import ROOT, block, run_python, run_shell, user_env

README = "README.md"


def test_the_session_yaml_is_what_the_example_file_holds_and_is_admitted() -> None:
    shown = block(README, "apiVersion: gridop.io/v1beta1")
    (example,) = load_yaml(ROOT / "examples" / "gridsession.yaml")
    import yaml

    assert yaml.safe_load(shown.text) == example, "the README's session differs from examples/gridsession.yaml"
    assert admit(example) == []


async def test_from_python_sessions(
    emulator: kmock.KubernetesEmulator, operator, kind_nodes: None, kubeconfig: pathlib.Path, workdir: pathlib.Path,
) -> None:
    """The GRID session API block, pasted into `python -m asyncio` with KUBECONFIG set, against the
    operator: each call returns what its comment says."""
    b = block(README, "from gridop.client import GridSessionManager")
    result = await asyncio.to_thread(run_python, b, workdir, user_env(KUBECONFIG=str(kubeconfig)))
    assert result.returncode == 0, result.stderr[-3000:]


async def test_tasks_the_htc_grid_way(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, workdir: pathlib.Path,
    worker_pods: Pods,
) -> None:
    """`kubectl apply -f examples/htcgrid/taskpool.yaml`, then the Python block with GRIDOP_REDIS_URL
    from the namespace's Secret (what the shell block before it exports): every task finishes, run
    by the pool's Deployment, scaled by the operator."""
    (pool,) = load_yaml(ROOT / "examples" / "htcgrid" / "taskpool.yaml")
    url = await applied(api, resources.TASKPOOLS, pool)
    result = await asyncio.to_thread(run_python, block(README, "import os"), workdir, user_env(GRIDOP_REDIS_URL=url))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # (The pool scales back to its minimum once the queue is empty: what counts is that it grew.)
    assert worker_pods.peak["deployments/default/default-pool"] > 1, "the pool did not scale with its queue"


def test_a_handler_without_a_cluster(redis_url: str, workdir: pathlib.Path) -> None:
    b = block(README, "gridctl tasks --redis-url redis://127.0.0.1:6379/0 run --local")
    address = redis_url.split("//")[1].split("/")[0]
    result = run_shell(b, workdir, user_env(), replace={"127.0.0.1:6379": address})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1000 and {r["state"] for r in rows} == {"finished"}
    assert rows[3]["output"] == {"x": 3, "square": 9}
