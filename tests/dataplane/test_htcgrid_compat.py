"""What a program written for HTC-Grid may call beyond send/get_results/cancel_sessions: the rest
of the connector, its module's names, an empty send, and the Lambda context's fields."""

from __future__ import annotations

import json

import pytest

from gridop.client import htcgrid
from gridop.client.htcgrid import AWSConnector

from .conftest import worker_process


def test_a_connector_used_before_init_says_so() -> None:
    connector = AWSConnector()
    with pytest.raises(RuntimeError, match=r"not configured: call init\(config\) first"):
        connector.get_results({"session_id": "s", "task_ids": ["s_0"]})
    with pytest.raises(RuntimeError, match="not configured"):
        connector.send([{"x": 1}])


def test_htc_grids_module_names_and_methods(redis_url: str) -> None:
    assert (htcgrid.TASK_TIMEOUT_SEC, htcgrid.RETRY_COUNT, htcgrid.URLOPEN_LAMBDA_INVOKE_TIMEOUT_SEC,
            htcgrid.TOKEK_REFRESH_INTERVAL_SEC) == (3600, 5, 120, 200)
    assert len(htcgrid.get_safe_session_id()) == 36
    worker = worker_process(redis_url, "--pool", "default", "--heartbeat", "0.3", "--lease", "2", "--timeout", "60",
                            handler="lambda_context")
    connector = AWSConnector()
    connector.init({"redis_url": redis_url, "dynamodb_results_pull_interval_sec": 0.1})
    try:
        connector.authenticate()
        connector.refresh()  # HTC-Grid's token refresh: nothing to refresh here
        empty = connector.send([])
        assert empty["task_ids"] == []
        assert connector.get_results(empty)["metadata"]["tasks_in_response"] == 0

        jobs = connector.generate_user_task_json([{"n": 1}, {"n": 2}])
        assert set(jobs) >= {"session_id", "scheduler_data", "stats", "tasks_list"}
        submitted = connector.submit(jobs)
        assert submitted["session_id"] == jobs["session_id"] and len(submitted["task_ids"]) == 2
        results = connector.get_results(submitted, timeout_sec=30)
        assert results["metadata"]["tasks_in_response"] == 2
        context = json.loads(results["finished_OUTPUT"][0])
        assert context["aws_request_id"] == f"{jobs['session_id']}_0"
        assert context["function_name"] == "tests.dataplane.handlers:lambda_context"
        assert context["memory_limit_in_mb"] > 0 and 0 < context["remaining"] <= 60_000
        assert context["function_version"] == "$LATEST" and context["log_stream_name"]
        polled = connector.invoke_get_results_lambda({"session_id": jobs["session_id"]})
        assert polled["finished"] == results["finished"]
        assert connector.cancel(jobs["session_id"])["total_cancelled_tasks"] == 0
    finally:
        connector.close()
        worker.terminate()
        worker.wait(30)


def test_without_a_timeout_the_remaining_time_is_lambdas_longest() -> None:
    from gridop.tasks.worker import Context

    assert Context("s", "s_0", 1, None, "w").get_remaining_time_in_millis() == 900_000

