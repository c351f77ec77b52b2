"""Workers serve per-stage latency histograms (real worker process, real Prometheus exposition)."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from bench.localredis import free_port
from gridop.client.tasks import AsyncGridConnector

from .conftest import worker_process


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_worker_serves_queue_wait_run_time_end_to_end_and_failures_per_batch(redis_url: str) -> None:
    port = free_port()
    worker = worker_process(redis_url, "--session", "m", "--keep-running", "--metrics-port", str(port),
                            "--heartbeat", "0.2", "--lease", "1", handler="flaky")
    try:
        async with AsyncGridConnector({"redis_url": redis_url, "retry_backoff_sec": 0.05}) as c:
            sub = await c.send([{"n": i} for i in range(21)], session_id="m")  # each fails once, then succeeds
            results = await c.get_results(sub, timeout_sec=30)
        assert len(results["finished"]) == 21
        samples: dict = {}
        for _ in range(50):
            try:
                samples = await asyncio.to_thread(_scrape, port)
            except OSError:
                samples = {}
            if samples.get(("gridop_tasks_finished_total", (("batch", "m"),))) == 21:
                break
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    batch = (("batch", "m"),)
    assert samples[("gridop_tasks_finished_total", batch)] == 21
    for stage in ("queue_wait", "run", "end_to_end"):
        # run time and queue wait per attempt (two each), end to end per finished task
        count = samples[(f"gridop_task_{stage}_seconds_count", batch)]
        assert count == (21 if stage == "end_to_end" else 42), (stage, count)
        assert samples[(f"gridop_task_{stage}_seconds_bucket", (*batch, ("le", "+Inf")))] == count
    assert samples[("gridop_task_attempts_failed_total", (("batch", "m"), ("kind", "application")))] == 21
    assert samples[("gridop_task_retries_total", batch)] == 21
