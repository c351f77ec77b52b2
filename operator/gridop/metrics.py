"""Prometheus metrics of every gridop process (one registry, served on /metrics)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

SESSIONS = Gauge("gridop_sessions", "GridSessions by phase", ["phase"])
SESSION_START_SECONDS = Histogram(
    "gridop_session_start_seconds",
    "Time from GridSession creation to its first Running phase",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
KUBE_REQUESTS = Counter("gridop_kube_requests_total", "Requests to the Kubernetes API, by verb and resource",
                        ["verb", "resource"])
RECONCILE_SECONDS = Histogram("gridop_reconcile_seconds", "Duration of one reconcile pass", ["kind"])
RECONCILE_ERRORS = Counter("gridop_reconcile_errors_total", "Reconcile passes that raised", ["kind", "error"])
POD_RECOVERIES = Counter("gridop_session_pod_recoveries_total", "Session pods recreated after a loss", ["reason"])
TASKS = Gauge("gridop_tasks", "Tasks of a TaskBatch by state", ["namespace", "batch", "state"])
QUEUE_DEPTH = Gauge("gridop_task_queue_depth", "Tasks waiting for a worker (pending + retrying)", ["namespace", "batch"])
BATCH_WORKERS = Gauge("gridop_taskbatch_workers", "Worker parallelism the operator asked for", ["namespace", "batch"])
SWEEP_SECONDS = Histogram("gridop_sweep_seconds", "Duration of one data-plane sweep of a batch")

# The console gateway.
CONSOLE_CONNECTIONS = Gauge("gridop_console_open_connections", "Open console connections", ["endpoint", "mode"])
CONSOLE_CONNECTIONS_TOTAL = Counter("gridop_console_connections_total", "Console connections accepted", ["endpoint", "mode"])
CONSOLE_BYTES = Counter("gridop_console_bytes_total", "Console bytes relayed", ["endpoint", "direction"])
CONSOLE_DENIALS = Counter("gridop_console_denials_total", "Console requests refused, by HTTP status", ["endpoint", "status"])
CONSOLE_UPSTREAM_ERRORS = Counter("gridop_console_upstream_errors_total", "Kubernetes API stream failures", ["endpoint", "reason"])
CONSOLE_CLOSES = Counter("gridop_console_closes_total", "Console connections closed, by why", ["endpoint", "reason"])
CONSOLE_UPSTREAMS = Gauge("gridop_console_upstreams", "Open upstream attach/exec streams (one per session, shared)")


async def serve_health(port: int, ready: Callable[[], bool]) -> web.AppRunner:
    """/metrics, /healthz and /readyz (503 until `ready()`) on `port`: every gridop process's probes."""

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"ready": ready()}, status=200 if ready() else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
