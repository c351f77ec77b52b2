"""The one wiring point: `gridop operator | gateway | worker | crds`.

Every mistake a user can make starting a process (a flag, a GRIDOP_* setting, a kubeconfig, a Redis
URL, a handler) ends in one line that names it, and exit code 2; exit 1 means the process started
and could not go on (the API server or Redis refused); 0 a clean stop.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .settings import WorkerSettings

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True,
                                    "max_content_width": 100}
USAGE, UNFINISHED = 2, 1


class StartError(Exception):
    """The process cannot start; the message names the culprit (exit 2)."""


def _settings() -> Any:
    """The one settings object, from GRIDOP_* variables; a bad value is one line naming the variable."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from .settings import Settings, describe_error

    try:
        return Settings()
    except ValidationError as exc:
        raise StartError(describe_error(exc)) from None
    except SettingsError as exc:  # a value the settings source could not even parse
        import re

        field = re.search(r'field "(\w+)"', str(exc))
        name = f"GRIDOP_{field.group(1).upper()}" if field else "a GRIDOP_* variable"
        raise StartError(f"{name} cannot be read ({exc}); lists are JSON, e.g. [\"sh\", \"-l\"]") from None


def _masked(url: str) -> str:
    """A data-plane URL fit for a message: the password replaced by ***."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _check_worker_options(ws: WorkerSettings) -> str | None:
    """Why the worker cannot start (one line naming the culprit), or None; checked before any process starts."""
    import redis

    from .tasks.connection import is_cluster_url, node_url
    from .tasks.worker import load_handler

    if ws.lease_seconds <= ws.heartbeat_seconds:
        return (f"--lease ({ws.lease_seconds:g}s) must be longer than --heartbeat ({ws.heartbeat_seconds:g}s), "
                "or leases lapse between heartbeats")
    if ws.metrics_port and ws.metrics_port + ws.processes - 1 > 65535:
        return f"--metrics-port {ws.metrics_port} leaves no port for each of the {ws.processes} processes"
    for k in range(ws.processes if ws.metrics_port else 0):
        if not _port_free(ws.metrics_port + k):
            return (f"--metrics-port: port {ws.metrics_port + k} is already in use (another worker on this "
                    "machine?); give each worker its own --metrics-port, or 0 to serve no metrics")
    try:
        load_handler(ws.handler or "")
    except ValueError as exc:
        return str(exc)
    url = ws.redis_url or ""
    try:
        client = redis.Redis.from_url(node_url(url), socket_connect_timeout=5, socket_timeout=5)
    except ValueError as exc:
        return (f"--redis-url {_masked(url)!r} is not a Redis URL ({exc}); use redis://[:password@]host:port/db "
                "(redis+cluster://host:port for a Redis Cluster)")
    try:
        client.ping()
        if is_cluster_url(url) and client.info("cluster").get("cluster_enabled") != 1:
            return (f"--redis-url {_masked(url)!r} names a Redis Cluster, but that server is a plain Redis; "
                    "use redis:// for it")
        client.exists(f"{ws.key_prefix}:{{probe}}:meta")
    except redis.exceptions.NoPermissionError:
        return (f"the Redis user of --redis-url {_masked(url)} may not use keys under {ws.key_prefix!r}; use the "
                "URL of the namespace's data-plane Secret with --key-prefix gridop:<that namespace>")
    except redis.RedisError as exc:
        return f"cannot reach the data plane at {_masked(url)} ({exc}); check --redis-url and that Redis runs"
    finally:
        client.close()
    return None


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="gridop", prog_name="gridop")
def cli() -> None:
    """gridop: a Kubernetes operator that turns a cluster into a grid.

    Settings come from GRIDOP_* environment variables (see docs/operations.md); lists
    (GRIDOP_WATCH_NAMESPACES=team-a,team-b) are comma-separated or JSON.
    """


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("-n", "--namespace", "namespaces", multiple=True, metavar="NS",
              help="watch only this namespace (repeatable)  [default: GRIDOP_WATCH_NAMESPACES, else all]")
def operator(namespaces: tuple[str, ...]) -> int:
    """Run the operator (kopf) against the current cluster."""
    import aiohttp

    from .kube import KubeError
    from .kube.access import AccessError, load_cluster_access
    from .logs import setup_logging
    from .operator_main import LeadershipLost, run_operator
    from .webhook import WebhookError

    settings = _settings()
    if namespaces:
        settings.watch_namespaces = list(namespaces)
    setup_logging(settings.log_format, settings.log_level)
    try:
        access = load_cluster_access()
    except AccessError as exc:
        raise StartError(str(exc)) from None
    try:
        asyncio.run(run_operator(settings, access))
    except LeadershipLost as exc:
        click.echo(f"gridop operator: {exc}; exiting to restart as a standby", err=True)
        return UNFINISHED
    except WebhookError as exc:
        click.echo(f"gridop operator: {exc}", err=True)
        return UNFINISHED
    except KubeError as exc:
        click.echo(f"gridop operator: the Kubernetes API refused start-up: {exc.api_message or exc} "
                   f"(does namespace {settings.operator_namespace!r} exist, and may the operator use it?)", err=True)
        return UNFINISHED
    except (OSError, aiohttp.ClientError) as exc:
        click.echo(f"gridop operator: cannot reach the Kubernetes API at {access.server}: {exc}", err=True)
        return UNFINISHED
    return 0


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("-n", "--namespace", "namespaces", multiple=True, metavar="NS",
              help="serve only this namespace (repeatable)  [default: GRIDOP_WATCH_NAMESPACES, else all]")
@click.option("--port", type=click.IntRange(1, 65535), help="listen port  [default: GRIDOP_GATEWAY_PORT, else 8000]")
@click.option("--host", help="listen address  [default: GRIDOP_GATEWAY_HOST, else every address]")
def gateway(namespaces: tuple[str, ...], port: int | None, host: str | None) -> int:
    """Run the console gateway (websocket interact and tail)."""
    import signal

    from .gateway.app import run_gateway
    from .kube.access import AccessError, load_cluster_access
    from .logs import setup_logging

    settings = _settings()
    if namespaces:
        settings.watch_namespaces = list(namespaces)
    if port:
        settings.gateway_port = port
    if host:
        settings.gateway_host = host
    setup_logging(settings.log_format, settings.log_level)
    try:
        access = load_cluster_access()
    except AccessError as exc:
        raise StartError(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_gateway(settings, access, stop_flag=stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        click.echo(f"gridop gateway: cannot listen on {settings.gateway_host or '*'}:{settings.gateway_port}: "
                   f"{exc.strerror or exc}", err=True)
        return UNFINISHED
    return 0


class _SettingOption(click.Option):
    """A flag that overrides one of the worker's settings (read from GRIDOP_* by `WorkerSettings`,
    as every gridop setting is): its help names the variable; click itself reads no environment."""

    def __init__(self, *args: Any, setting: str, **kwargs: Any):
        kwargs["help"] = f"{kwargs.get('help') or ''} [env: GRIDOP_{setting}]".strip()
        kwargs["default"] = None
        super().__init__(*args, **kwargs)
        self.setting = setting.lower()


def _env(name: str) -> dict[str, Any]:
    return {"cls": _SettingOption, "setting": name}


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--redis-url", metavar="URL", help="the data plane: redis://[:password@]host:port/db, "
              "or redis+cluster://host:port for a Redis Cluster", **_env("REDIS_URL"))
@click.option("--session", metavar="ID", help="run the tasks of this batch (a TaskBatch's session id)",
              **_env("SESSION_ID"))
@click.option("--pool", metavar="NAME", help="serve every session sent to this pool (a TaskPool) instead of one batch",
              **_env("POOL"))
@click.option("--handler", metavar="MODULE:FUNCTION", help="the task handler, called as function(event, context)",
              **_env("HANDLER"))
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, help="most tasks claimed at once",
              **_env("BATCH_SIZE"))
@click.option("--claim-seconds", type=click.FloatRange(min=0), default=0.1, metavar="SECONDS",
              help="claim about this much work at a time, by the measured time per task; 0: always --batch-size",
              **_env("CLAIM_SECONDS"))
@click.option("--heartbeat", type=click.FloatRange(min=0, min_open=True), default=5.0, metavar="SECONDS",
              help="how often the worker renews its leases (and a cancellation is noticed)",
              **_env("HEARTBEAT_SECONDS"))
@click.option("--lease", type=click.FloatRange(min=0, min_open=True), default=30.0, metavar="SECONDS",
              help="how long a claimed task stays the worker's without a heartbeat (then it is retried)",
              **_env("LEASE_SECONDS"))
@click.option("--timeout", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="per-task timeout; 0: none", **_env("TASK_TIMEOUT_SECONDS"))
@click.option("--isolation", type=click.Choice(["process", "thread"]), default="process",
              help="where a synchronous handler runs: a child process the worker stops on a timeout, a "
                   "cancellation or a stop; or a thread (no process hop, but a hung handler runs on)",
              **_env("HANDLER_ISOLATION"))
@click.option("--fail-on-error", is_flag=True, help="fail a task whose handler raises instead of retrying it")
@click.option("--retry-on-error", type=bool, default=True, hidden=True, **_env("RETRY_ON_ERROR"))
@click.option("--key-prefix", default="gridop:default", metavar="PREFIX",
              help="data-plane key prefix; the operator's workers use gridop:<namespace>", **_env("KEY_PREFIX"))
@click.option("--retention", type=click.IntRange(min=1), default=86400, metavar="SECONDS",
              help="with --pool: how long a finished session's results are kept", **_env("RESULT_RETENTION_SECONDS"))
@click.option("--keep-running", is_flag=True, help="keep waiting for work when the batch is done")
@click.option("--processes", type=click.IntRange(min=1), default=1, help="worker processes (one event loop each)",
              **_env("PROCESSES"))
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, metavar="PORT",
              help="serve Prometheus task metrics here (process k of --processes uses PORT+k); 0: not served",
              **_env("METRICS_PORT"))
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", **_env("LOG_FORMAT"))
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", **_env("LOG_LEVEL"))
def worker(**opts: Any) -> int:
    """Run task workers for one TaskBatch (--session) or a TaskPool (--pool)."""
    from pydantic import ValidationError

    from .logs import setup_logging
    from .settings import WorkerSettings, describe_error
    from .tasks.runtime import WorkerOptions, run_processes

    flags = {param.setting: opts[param.name] for param in worker.params
             if isinstance(param, _SettingOption) and param.name and opts[param.name] is not None}
    try:
        ws = WorkerSettings(**flags)
    except ValidationError as exc:
        raise StartError(describe_error(exc)) from None
    missing = [flag for flag, value in (("--redis-url", ws.redis_url), ("--session or --pool", ws.session_id or ws.pool),
                                        ("--handler", ws.handler)) if not value]
    if missing:
        raise StartError(f"missing {', '.join(missing)} (or their GRIDOP_* environment variables)")
    if ws.session_id and ws.pool:
        raise StartError("give --session (one batch) or --pool (every session sent to the pool), not both")
    assert ws.redis_url is not None and ws.handler is not None
    problem = _check_worker_options(ws)
    if problem is not None:
        raise StartError(problem)
    setup_logging(ws.log_format, ws.log_level.upper())
    options = WorkerOptions(
        redis_url=ws.redis_url, session_id=ws.session_id or "", pool=ws.pool,
        retention_seconds=ws.result_retention_seconds, handler=ws.handler, batch_size=ws.batch_size,
        heartbeat_seconds=ws.heartbeat_seconds, lease_seconds=ws.lease_seconds,
        task_timeout=ws.task_timeout_seconds or None, retry_on_error=ws.retry_on_error and not opts["fail_on_error"],
        exit_when_done=not opts["keep_running"], key_prefix=ws.key_prefix, claim_seconds=ws.claim_seconds,
        metrics_port=ws.metrics_port, isolation=ws.handler_isolation,
    )
    return run_processes(options, ws.processes)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("-o", "--output", default="crds", metavar="DIR", help="directory to write into")
@click.option("--chart", is_flag=True, help="write them as the chart's templates (release names, crds.install, crds.keep)")
def crds(output: str, chart: bool) -> int:
    """Write the CustomResourceDefinitions generated from the API models."""
    from .api import crdgen

    for path in crdgen.write(pathlib.Path(output), chart=chart):
        click.echo(path)
    return 0


def _bad_parameter(exc: click.BadParameter) -> str:
    """'--batch-size (from GRIDOP_BATCH_SIZE): ...': the flag, and the variable when the value came from there."""
    param, ctx = exc.param, exc.ctx
    if not isinstance(param, click.Option) or ctx is None or param.name is None:
        return exc.format_message()
    name = max(param.opts, key=len)
    if ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT:
        name = f"{param.envvar} (for {name})"
    return f"invalid value for {name}: {exc.message}"


def main(argv: list[str] | None = None) -> int:
    """Run gridop; return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "")
    prog = f"gridop {command}" if command in cli.commands else "gridop"
    try:
        code = cli.main(args=args, prog_name="gridop", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return USAGE
    except click.BadParameter as exc:
        click.echo(f"{prog}: {_bad_parameter(exc)}", err=True)
        return USAGE
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"{prog}: {exc.format_message()}{hint}", err=True)
        return USAGE
    except StartError as exc:
        click.echo(f"{prog}: {exc}", err=True)
        return USAGE
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo(f"{prog}: interrupted", err=True)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
