"""docs/tasks.md, run as written: its TaskBatch and TaskPool are what the CRDs admit, its SDK blocks
run against its own TaskPool (applied to the operator, its Deployment played by local workers), and
its PromQL names what a worker exports."""

from __future__ import annotations

import asyncio
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

import kmock
import pytest
import yaml

from gridop.kube import KubeClient, resources
from tests.unit.test_crd_validation import admit

from .conftest import applied
from .snippets import ROOT, block, blocks, run_python, user_env

PAGE = "docs/tasks.md"


def test_its_objects_are_admitted() -> None:
    objects = [yaml.safe_load(b.text) for b in blocks(PAGE) if b.lang == "yaml"]
    assert {o["kind"] for o in objects} == {"TaskBatch", "TaskPool"}
    for obj in objects:
        assert admit(obj) == [], obj["kind"]


async def test_the_sdk_blocks_on_the_pages_own_pool(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, workdir: pathlib.Path,
    worker_pods: dict,
) -> None:
    pool = next(yaml.safe_load(b.text) for b in blocks(PAGE) if b.lang == "yaml" and "kind: TaskPool" in b.text)
    env = user_env(GRIDOP_REDIS_URL=await applied(api, resources.TASKPOOLS, pool))
    first = block(PAGE, "import os")
    result = await asyncio.to_thread(run_python, first, workdir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    # The million-task block, after the first (it uses its `grid`), at 20,000 tasks: the same path,
    # a test's time.
    streamed = block(PAGE, "import collections")
    result = await asyncio.to_thread(run_python, streamed, workdir, env, prelude=first.text,
                                     replace={"1_000_000": "20_000", "# 1000000": "# 20000"}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_promql_names_what_workers_export(redis_url: str) -> None:
    queries = block(PAGE, "# p99 end-to-end latency").text
    names = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in re.findall(r"\bgridop_[a-z_]+", queries)}
    port = _free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--session", "metrics",
         "--handler", "gridop.tasks.examples:square", "--keep-running", "--metrics-port", str(port)],
        stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    exposed = resp.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the worker served no metrics")
                time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
    types = {re.sub(r"_total$", "", n) for n in re.findall(r"^# TYPE (gridop_[a-z_]+) ", exposed, re.M)}
    assert names <= types, f"the page queries metrics no worker exports: {sorted(names - types)}"
