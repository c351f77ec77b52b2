"""The example programs under examples/, run as their docstrings say: `python examples/X.py`."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys

import kmock

from gridop.kube import KubeClient, resources

from .conftest import applied, load_yaml
from .snippets import ROOT, user_env


def _run(script: str, cwd: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"examples/{script}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


async def test_start_session(
    emulator: kmock.KubernetesEmulator, operator, kind_nodes: None, kubeconfig: pathlib.Path, workdir: pathlib.Path,
) -> None:
    result = await asyncio.to_thread(_run, "start_session.py", workdir, user_env(KUBECONFIG=str(kubeconfig)))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "started: True" and "'session_id': 'session-001'" in lines[1] and lines[2] == "stopped: True"


async def test_send_tasks_to_the_example_batch(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, workdir: pathlib.Path,
    worker_pods: dict,
) -> None:
    (batch,) = load_yaml(ROOT / "examples" / "taskbatch.yaml")
    env = user_env(GRIDOP_REDIS_URL=await applied(api, resources.TASKBATCHES, batch))
    result = await asyncio.to_thread(_run, "send_tasks.py", workdir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'tasks_in_response': 100" in result.stdout and '{"x":2,"square":4}' in result.stdout
