"""A TaskBatch on a real cluster: the example batch runs, its Job scales with the queue, its
status follows the data plane, and deleting it removes its data-plane keys.

The data plane is the suite's redis-server on the test machine (tests/conftest.py), handed to
the operator this suite runs (GRIDOP_REDIS_URL). Pods cannot reach it (and under fake kubelets
they run nothing), so `gridop worker` processes started here run the tasks, as the Job's pods
would; what the cluster is asked is what the operator does with the API server: the CRD admits
the example as written, the namespace's data-plane Secret, the Job and its parallelism, the
status subresource, the finalizer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from gridop.client.tasks import AsyncGridConnector
from gridop.kube import KubeClient, resources

from .conftest import ROOT, eventually

EXAMPLE = yaml.safe_load((ROOT / "examples" / "taskbatch.yaml").read_text())
NAME = EXAMPLE["metadata"]["name"]
TASKS = [json.loads(line) for line in (ROOT / "examples" / "tasks.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
def operator_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The operator's data plane: the suite's redis-server on this machine (asked for only once
    the test is known to run, so a machine without one skips rather than fails)."""
    if os.environ.get("GRIDOP_E2E_EXTERNAL_OPERATOR"):
        pytest.skip("e2e: the TaskBatch test hands its own Redis to the operator it runs; unset GRIDOP_E2E_EXTERNAL_OPERATOR")
    if shutil.which("redis-server") is None:
        pytest.skip("e2e: the TaskBatch test needs redis-server on this machine (apt-get install redis-server)")
    return {"GRIDOP_REDIS_URL": request.getfixturevalue("redis_url"), "GRIDOP_BATCH_STATUS_INTERVAL_SECONDS": "0.5"}


async def status(kube: KubeClient, namespace: str) -> dict[str, Any]:
    tb = await kube.get(resources.TASKBATCHES, NAME, namespace)
    return (tb or {}).get("status") or {}


async def test_example_batch_runs_scales_and_cleans_up(
    kube: KubeClient, operator: None, namespace: str, operator_env: dict[str, str]
) -> None:
    redis_url = operator_env["GRIDOP_REDIS_URL"]
    await kube.create(resources.TASKBATCHES, EXAMPLE, namespace)
    try:
        await _run_the_batch(kube, namespace, redis_url)
    finally:
        # The operator's finalizer must run while the operator does: a TaskBatch left behind would
        # hold its namespace in Terminating.
        await kube.delete(resources.TASKBATCHES, NAME, namespace)

        async def gone() -> bool:
            return await kube.get(resources.TASKBATCHES, NAME, namespace) is None

        await eventually(gone, timeout=120, what="TaskBatch deleted (finalizer ran)")
    prefix = f"gridop:{namespace}:{{{NAME}}}:"
    plane = aioredis.Redis.from_url(redis_url)
    try:
        assert await plane.keys(prefix + "*") == [], "the batch's data-plane keys outlive it"
    finally:
        await plane.aclose()

    async def job_gone() -> bool:
        return await kube.get(resources.JOBS, f"{NAME}-workers", namespace) is None

    await eventually(job_gone, timeout=120, what="worker Job deleted with its TaskBatch")


async def _run_the_batch(kube: KubeClient, namespace: str, redis_url: str) -> None:
    async def pending() -> dict[str, Any] | None:
        st = await status(kube, namespace)
        return st if st.get("phase") == "Pending" else None

    st = await eventually(pending, timeout=60, what="TaskBatch Pending, waiting for tasks")
    assert st["workers"] == 0

    async with AsyncGridConnector({"redis_url": redis_url, "namespace": namespace}) as client:
        sub = await client.send(TASKS, session_id=NAME)

        # 1,000 queued tasks at tasksPerWorker 500: a Job of 2 workers, owned by the batch, its
        # data-plane URL from the namespace's Secret (a Redis user limited to this namespace).
        wanted = min(EXAMPLE["spec"]["workers"]["max"], -(-len(TASKS) // EXAMPLE["spec"]["workers"]["tasksPerWorker"]))

        async def job() -> dict[str, Any] | None:
            found = await kube.get(resources.JOBS, f"{NAME}-workers", namespace)
            return found if found and found["spec"].get("parallelism") == wanted else None

        found = await eventually(job, timeout=60, what=f"worker Job with parallelism {wanted}")
        assert found["metadata"]["ownerReferences"][0]["kind"] == "TaskBatch"
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in found["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GRIDOP_SESSION_ID"] == NAME and env["GRIDOP_HANDLER"] == EXAMPLE["spec"]["handler"]
        assert env["GRIDOP_REDIS_URL"] == {"secretKeyRef": {"name": "gridop-data-plane", "key": "url"}}
        secret = await kube.get(resources.SECRETS, "gridop-data-plane", namespace)
        scoped = aioredis.Redis.from_url(base64.b64decode(secret["data"]["url"]).decode())
        try:
            assert await scoped.hget(f"gridop:{namespace}:{{{NAME}}}:meta", "total") == str(len(TASKS)).encode()
        finally:
            await scoped.aclose()

        async def running() -> dict[str, Any] | None:
            st = await status(kube, namespace)
            return st if st.get("phase") == "Running" and st["counts"]["pending"] == len(TASKS) else None

        await eventually(running, timeout=60, what="TaskBatch Running with every task pending")

        # The Job's pods, played by processes on this machine.
        workers = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--session", NAME,
            "--key-prefix", f"gridop:{namespace}", "--handler", EXAMPLE["spec"]["handler"], "--log-level", "WARNING",
            stdin=asyncio.subprocess.DEVNULL) for _ in range(wanted)]
        try:
            results = await client.get_results(sub, timeout_sec=120)
        finally:
            for w in workers:
                try:
                    await asyncio.wait_for(w.wait(), 30)  # they leave once the batch is done
                except TimeoutError:
                    w.kill()
                    await w.wait()
        assert len(results["finished"]) == len(TASKS), results["metadata"]
        assert [json.loads(out) for out in results["finished_OUTPUT"]] == [{**t, "square": t["x"] ** 2} for t in TASKS]
        assert [w.returncode for w in workers] == [0] * wanted

    async def succeeded() -> dict[str, Any] | None:
        st = await status(kube, namespace)
        return st if st.get("phase") == "Succeeded" else None

    st = await eventually(succeeded, timeout=60, what="TaskBatch Succeeded")
    assert st["counts"] == {"pending": 0, "processing": 0, "retrying": 0, "finished": len(TASKS), "failed": 0,
                            "cancelled": 0, "total": len(TASKS)}
    assert st["startTime"] and st["completionTime"] and st["workers"] == 0
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert (conditions["Ready"], conditions["Complete"]) == ("True", "True")

    async def job_idle() -> bool:
        found = await kube.get(resources.JOBS, f"{NAME}-workers", namespace)
        return found is not None and found["spec"].get("parallelism") == 0

    await eventually(job_idle, timeout=60, what="worker Job scaled to 0")
