"""HTC-Grid's client programs (examples/htcgrid, in HTC-Grid's own shape; only the import differs)
against a TaskPool: the real operator on the emulator scales the pool's Deployment, real worker
processes play its pods, a real Redis is the data plane."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import kmock
import pytest

from gridop.client.htcgrid import AWSConnector
from gridop.kube import KubeClient, resources
from gridop.settings import Settings

from .conftest import NAMESPACE, eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
HANDLER = "examples.htcgrid.mock_compute_engine:lambda_handler"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(operator_namespace="gridop-system", resync_seconds=5.0, log_format="text", redis_url=redis_url,
                    batch_status_interval_seconds=0.2)


@pytest.fixture
def agent_config(redis_url: str, tmp_path: pathlib.Path) -> pathlib.Path:
    """What HTC-Grid's deployment writes for its clients, pointed at this Redis: a bare host and a
    port key, and every setting that only means something on AWS."""
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    path = tmp_path / "Agent_config.tfvars.json"
    path.write_text(json.dumps({
        "region": "eu-west-1", "sqs_queue": "htc_task_queue", "sqs_dlq": "htc_task_queue_dlq", "redis_url": host,
        "redis_port": port, "redis_with_ssl": "false", "cluster_name": "htc", "ddb_status_table": "tasks",
        "empty_task_queue_backoff_timeout_sec": 0.5, "work_proc_status_pull_interval_sec": 0.5,
        "task_ttl_expiration_offset_sec": 30, "task_ttl_refresh_interval_sec": 5.0,
        "dynamodb_results_pull_interval_sec": 0.2, "agent_sqs_visibility_timeout_sec": 3600,
        "task_input_passed_via_external_storage": 1, "lambda_name_ttl_checker": "ttl_checker",
        "lambda_name_submit_tasks": "submit_task", "lambda_name_get_results": "get_results",
        "lambda_name_cancel_tasks": "cancel_tasks", "s3_bucket": "htc-data", "grid_storage_service": "REDIS",
        "htc_path_logs": "logs/", "error_log_group": "grid_errors", "error_logging_stream": "errors",
        "metrics_are_enabled": "0", "metrics_grafana_private_ip": "influxdb.influxdb",
        "public_api_gateway_url": "https://example.invalid", "private_api_gateway_url": "https://example.invalid",
        "api_gateway_key": "mock", "user_pool_id": "mock", "cognito_userpool_client_id": "mock",
        "enable_xray": "0",
    }))
    return path


def client_env(agent_config: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AGENT_CONFIG_FILE": str(agent_config), "GRIDOP_NAMESPACE": NAMESPACE,
            "USERNAME": "alice", "PASSWORD": "not-used"}


def run_client(script: str, agent_config: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"examples/htcgrid/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**client_env(agent_config), **env})


def pool_workers(redis_url: str, count: int) -> list[subprocess.Popen[bytes]]:
    """The pool Deployment's pods, as the operator configures them (pool, key prefix, handler)."""
    return [subprocess.Popen(
        [sys.executable, "-m", "gridop", "worker", "--redis-url", redis_url, "--pool", "default",
         "--key-prefix", f"gridop:{NAMESPACE}", "--handler", HANDLER, "--heartbeat", "0.5", "--lease", "3",
         "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
    ) for _ in range(count)]


async def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        assert await asyncio.to_thread(w.wait, 30) == 0


async def deployment_with_replicas(api: KubeClient, replicas: int) -> dict[str, Any] | None:
    dep = await api.get(resources.DEPLOYMENTS, "default-pool", NAMESPACE)
    return dep if dep and dep["spec"]["replicas"] == replicas else None


async def pool_status(api: KubeClient, **expected: Any) -> dict[str, Any] | None:
    st = ((await api.get(resources.TASKPOOLS, "default", NAMESPACE)) or {}).get("status") or {}
    return st if all(st.get(k) == v for k, v in expected.items()) else None


async def test_htc_grid_clients_run_unchanged_on_a_task_pool(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, redis_url: str, agent_config: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = {"apiVersion": "gridop.io/v1beta1", "kind": "TaskPool", "metadata": {"name": "default"},
            "spec": {"handler": HANDLER, "workers": {"max": 3, "tasksPerWorker": 10}}}
    await api.create(resources.TASKPOOLS, pool, NAMESPACE)

    # One worker kept (min 1 by default), owned by the pool, credentials from the namespace's Secret.
    dep = await eventually(lambda: deployment_with_replicas(api, 1))
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "TaskPool"
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env["GRIDOP_POOL"] == "default" and env["GRIDOP_HANDLER"] == HANDLER
    assert env["GRIDOP_KEY_PREFIX"] == f"gridop:{NAMESPACE}" and pod["restartPolicy"] == "Always"
    assert env["GRIDOP_REDIS_URL"] == {"secretKeyRef": {"name": "gridop-data-plane", "key": "url"}}
    await eventually(lambda: pool_status(api, workers=1, readyWorkers=0))
    await api.patch(resources.DEPLOYMENTS, "default-pool", {"status": {"readyReplicas": 1}}, NAMESPACE,
                    subresource="status")

    # A plain send() with HTC-Grid's configuration, no YAML for the session: the pool scales with it.
    monkeypatch.setenv("GRIDOP_NAMESPACE", NAMESPACE)  # what a client pod's own namespace gives it
    connector = AWSConnector()
    await asyncio.to_thread(connector.init, json.loads(agent_config.read_text()), username="alice", password="x")
    await asyncio.to_thread(connector.authenticate)
    sub = await asyncio.to_thread(connector.send, [{"worker_arguments": ["5", "1", "1"]} for _ in range(50)])
    await eventually(lambda: deployment_with_replicas(api, 3))  # 50 queued at 10 per worker, max 3
    st = await eventually(lambda: pool_status(api, sessions=1))
    assert st["counts"]["pending"] == 50 and st["conditions"][0]["reason"] == "Serving"

    workers = pool_workers(redis_url, 2)
    try:
        results = await asyncio.to_thread(connector.get_results, sub)  # HTC-Grid's default: wait for all
        assert results["finished_OUTPUT"] == ["5"] * 50 and results["metadata"]["tasks_in_response"] == 50
        await eventually(lambda: deployment_with_replicas(api, 1), timeout=20)  # back to min
        await eventually(lambda: pool_status(api, sessions=0), timeout=20)

        simple = await asyncio.to_thread(run_client, "simple_client.py", agent_config)
        assert simple.returncode == 0, simple.stderr[-2000:]
        assert "'finished_OUTPUT': ['100', '200']" in simple.stderr and "Traceback" not in simple.stderr
        assert "gridop has no use for these HTC-Grid settings, ignored: " in simple.stderr  # INFO is visible

        batch = await asyncio.to_thread(run_client, "client.py", agent_config, "--njobs", "2", "--job_size", "20",
                                        "--nthreads", "2")
        assert batch.returncode == 0, batch.stdout[-2000:] + batch.stderr[-2000:]
        assert batch.stdout.count(": x20 verified") == 4 and "all results verified" in batch.stderr

        cancel = await asyncio.to_thread(run_client, "cancel_tasks.py", agent_config, CANCEL_AFTER_SEC="2.5")
        assert cancel.returncode == 0, cancel.stderr[-2000:]
        submission, counts, final = (eval(cancel.stdout.splitlines()[0]), *map(json.loads, cancel.stdout.splitlines()[1:3]))
        sid = submission["session_id"]
        assert set(counts[sid]) == {"cancelled_pending", "cancelled_processing", "total_cancelled_tasks"}
        assert counts[sid]["total_cancelled_tasks"] >= 5 and len(final["finished"]) >= 2
        assert len(final["finished"]) + len(final["cancelled"]) == 10
        assert set(final["cancelled_OUTPUT"]) == {"read_from_dataplane"}
    finally:
        await stop(workers)
        await asyncio.to_thread(connector.close)
