"""The one wiring point: `gridop operator | gateway | worker | crds`."""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys


def _operator(args: argparse.Namespace) -> int:
    import aiohttp

    from .kube import KubeError
    from .kube.access import AccessError, load_cluster_access
    from .logs import setup_logging
    from .operator_main import LeadershipLost, run_operator
    from .settings import Settings

    settings = Settings()
    if args.namespace:
        settings.watch_namespaces = list(args.namespace)
    setup_logging(settings.log_format, settings.log_level)
    try:
        access = load_cluster_access()
    except AccessError as exc:
        print(f"gridop operator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_operator(settings, access))
    except LeadershipLost as exc:
        print(f"gridop operator: {exc}; exiting to restart as a standby", file=sys.stderr)
        return 1
    except KubeError as exc:
        print(f"gridop operator: the Kubernetes API refused start-up: {exc.api_message or exc} "
              f"(does namespace {settings.namespace!r} exist, and may the operator use it?)", file=sys.stderr)
        return 1
    except (OSError, aiohttp.ClientError) as exc:
        print(f"gridop operator: cannot reach the Kubernetes API at {access.server}: {exc}", file=sys.stderr)
        return 1
    return 0


def _masked(url: str) -> str:
    """A data-plane URL fit for a message: the password replaced by ***."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _check_worker_options(args: argparse.Namespace) -> str | None:
    """Why the worker cannot start (one line naming the culprit), or None; checked before any process starts."""
    import redis

    from .tasks.connection import node_url
    from .tasks.worker import load_handler

    if args.batch_size < 1:
        return f"--batch-size must be at least 1, got {args.batch_size}"
    if not 0 <= args.metrics_port <= 65535 - max(0, args.processes - 1):
        return f"--metrics-port must be a port number (0: metrics not served), got {args.metrics_port}"
    if args.claim_seconds < 0:
        return f"--claim-seconds must be 0 (fixed claims of --batch-size) or more, got {args.claim_seconds:g}"
    if args.lease <= args.heartbeat:
        return f"--lease ({args.lease:g}s) must be longer than --heartbeat ({args.heartbeat:g}s), or leases lapse between heartbeats"
    try:
        load_handler(args.handler)
    except ValueError as exc:
        return str(exc)
    try:
        client = redis.Redis.from_url(node_url(args.redis_url), socket_connect_timeout=5, socket_timeout=5)
    except ValueError as exc:
        return (f"--redis-url {_masked(args.redis_url)!r} is not a Redis URL ({exc}); use redis://[:password@]host:port/db "
                "(redis+cluster://host:port for a Redis Cluster)")
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"cannot reach the data plane at {_masked(args.redis_url)} ({exc}); check --redis-url and that Redis runs"
    finally:
        client.close()
    return None


def _gateway(args: argparse.Namespace) -> int:
    import signal

    from pydantic import ValidationError

    from .gateway.app import run_gateway
    from .kube.access import AccessError, load_cluster_access
    from .logs import setup_logging
    from .settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"gridop gateway: GRIDOP_{str(first['loc'][0]).upper()}: {first['msg']}", file=sys.stderr)
        return 2
    if args.namespace:
        settings.watch_namespaces = list(args.namespace)
    if args.port:
        settings.gateway_port = args.port
    setup_logging(settings.log_format, settings.log_level)
    try:
        access = load_cluster_access()
    except AccessError as exc:
        print(f"gridop gateway: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_gateway(settings, access, stop_flag=stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"gridop gateway: cannot listen on port {settings.gateway_port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _worker(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .tasks.runtime import WorkerOptions, run_processes

    setup_logging(args.log_format, args.log_level)
    missing = [flag for flag, value in (("--redis-url", args.redis_url), ("--session or --pool", args.session or args.pool),
                                        ("--handler", args.handler)) if not value]
    if missing:
        print(f"gridop worker: missing {', '.join(missing)} (or their GRIDOP_* environment variables)", file=sys.stderr)
        return 2
    if args.session and args.pool:
        print("gridop worker: give --session (one batch) or --pool (every session sent to the pool), not both",
              file=sys.stderr)
        return 2
    problem = _check_worker_options(args)
    if problem is not None:
        print(f"gridop worker: {problem}", file=sys.stderr)
        return 2
    options = WorkerOptions(
        redis_url=args.redis_url, session_id=args.session or "", pool=args.pool,
        retention_seconds=args.retention, handler=args.handler, batch_size=args.batch_size,
        heartbeat_seconds=args.heartbeat, lease_seconds=args.lease, task_timeout=args.timeout,
        retry_on_error=not args.fail_on_error, exit_when_done=not args.keep_running, key_prefix=args.key_prefix,
        claim_seconds=args.claim_seconds, metrics_port=args.metrics_port,
    )
    return run_processes(options, args.processes)


def _crds(args: argparse.Namespace) -> int:
    from .api import crdgen

    for path in crdgen.write(pathlib.Path(args.output)):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridop", description="gridop: a Kubernetes operator that turns a cluster into a grid.")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    op.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable); default: all")
    op.set_defaults(func=_operator)

    gw = sub.add_parser("gateway", help="run the console gateway (websocket interact/tail)")
    gw.add_argument("-n", "--namespace", action="append", help="serve only this namespace (repeatable); default: all")
    gw.add_argument("--port", type=int, help="listen port (default: GRIDOP_GATEWAY_PORT or 8000)")
    gw.set_defaults(func=_gateway)

    env = os.environ.get
    wk = sub.add_parser("worker", help="run task workers for one TaskBatch (session)")
    wk.add_argument("--redis-url", default=env("GRIDOP_REDIS_URL"), help="data plane URL [GRIDOP_REDIS_URL]")
    wk.add_argument("--session", default=env("GRIDOP_SESSION_ID"), help="the batch (session id) [GRIDOP_SESSION_ID]")
    wk.add_argument("--pool", default=env("GRIDOP_POOL"),
                    help="serve every session sent to this pool (a TaskPool) instead of one batch [GRIDOP_POOL]")
    wk.add_argument("--retention", type=int, default=int(env("GRIDOP_RESULT_RETENTION_SECONDS", "86400")),
                    help="with --pool: seconds a finished session's results are kept (default: 86400)")
    wk.add_argument("--handler", default=env("GRIDOP_HANDLER"), help="module:function [GRIDOP_HANDLER]")
    wk.add_argument("--batch-size", type=int, default=int(env("GRIDOP_BATCH_SIZE", "1024")),
                    help="most tasks claimed at once [GRIDOP_BATCH_SIZE] (default: 1024)")
    wk.add_argument("--claim-seconds", type=float, default=float(env("GRIDOP_CLAIM_SECONDS", "0.1")),
                    help="claim about this much work at a time, by the measured time per task; 0: always "
                         "--batch-size [GRIDOP_CLAIM_SECONDS] (default: 0.1)")
    wk.add_argument("--heartbeat", type=float, default=float(env("GRIDOP_HEARTBEAT_SECONDS", "5")))
    wk.add_argument("--lease", type=float, default=float(env("GRIDOP_LEASE_SECONDS", "30")))
    wk.add_argument("--timeout", type=float, default=float(env("GRIDOP_TASK_TIMEOUT_SECONDS", "0")) or None,
                    help="per-task timeout in seconds (default: none)")
    wk.add_argument("--fail-on-error", action="store_true", default=env("GRIDOP_RETRY_ON_ERROR") == "false",
                    help="fail tasks whose handler raises instead of retrying them")
    wk.add_argument("--key-prefix", default=env("GRIDOP_KEY_PREFIX", "gridop:default"),
                    help="data-plane key prefix [GRIDOP_KEY_PREFIX]; the operator uses gridop:<namespace>")
    wk.add_argument("--keep-running", action="store_true", help="keep waiting for work when the batch is done")
    wk.add_argument("--processes", type=int, default=int(env("GRIDOP_PROCESSES", "1")))
    wk.add_argument("--metrics-port", type=int, default=int(env("GRIDOP_METRICS_PORT", "0")),
                    help="serve Prometheus task metrics (per-stage latency histograms) on this port; process k of "
                         "--processes uses port+k [GRIDOP_METRICS_PORT] (default: 0, not served)")
    wk.add_argument("--log-format", default=env("GRIDOP_LOG_FORMAT", "json"), choices=["json", "text"])
    wk.add_argument("--log-level", default=env("GRIDOP_LOG_LEVEL", "INFO"))
    wk.set_defaults(func=_worker)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--output", "-o", default="crds", help="directory to write into (default: crds)")
    crds.set_defaults(func=_crds)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
