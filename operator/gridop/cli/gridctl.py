"""gridctl — start, stop, list and inspect grid sessions; run task batches; reach consoles.

    gridctl session start NAME --node gridop-worker --user alice --config session.json --wait
    gridctl session list -A
    gridctl session get NAME -o yaml
    gridctl session stop NAME
    gridctl tasks submit tasks.jsonl --wait
    gridctl console tail NAME -n 100 -f

Installed as `kubectl-grid` too, so `kubectl grid session list` works.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import os
import sys
from typing import Any

import click

from ..api.v1beta1 import API_VERSION, GridSessionSpec, Phase
from ..api.v1beta1.gridsession import KIND
from ..client.sessions import start_verdict, validate_session_id
from ..kube import KubeClient, load_cluster_access, resources
from ..sessions.config import read_session_config_file
from . import console as console_cli
from . import tasks as tasks_cli
from .common import (
    CONTEXT_SETTINGS,
    UNFINISHED,
    USAGE,
    AliasedGroup,
    Globals,
    error,
    pass_globals,
    positive,
    runs_async,
)
from .output import as_list, output_option, print_document, print_table, stderr


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    if not timestamp:
        return "<none>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(tz=datetime.UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _ready(gs: dict[str, Any]) -> dict[str, Any]:
    conditions = (gs.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def print_sessions(items: list[dict[str, Any]], output: str, all_namespaces: bool) -> None:
    items = sorted(items, key=lambda g: (g["metadata"].get("namespace", ""), g["metadata"]["name"]))
    if output == "name":
        for gs in items:
            click.echo(f"gridsession.gridop.io/{gs['metadata']['name']}")
        return
    headers = ["NAME", "PHASE", "USER", "NODE", "NODE-IP", "LAST-ACTIVE", "AGE", "REASON"]
    if output == "wide":
        headers += ["TENANT", "SHARING", "ATTACHED", "CONSOLE"]
    rows = []
    for gs in items:
        st = gs.get("status") or {}
        row = [gs["metadata"]["name"], st.get("phase", Phase.PENDING.value), gs["spec"].get("user"),
               st.get("nodeName"), st.get("nodeIP"), age(st.get("lastActiveTime")),
               age(gs["metadata"].get("creationTimestamp")), _ready(gs).get("reason", "")]
        if output == "wide":
            row += [gs["spec"].get("tenant"), gs["spec"].get("sharing"), len(st.get("attachedClients") or []),
                    (st.get("console") or {}).get("interact")]
        rows.append(([gs["metadata"].get("namespace")] if all_namespaces else []) + row)
    print_table((["NAMESPACE"] if all_namespaces else []) + headers, rows)


def parse_selector(text: str) -> dict[str, str]:
    result = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--selector: {part!r} is not key=value")
        result[key.strip()] = value.strip()
    return result


def session_body(name: str, config_file: str, user: str, node: str | None = None, selector: str | None = None,
                 image: str | None = None, idle_timeout: int | None = None,
                 tenant: str | None = None) -> dict[str, Any]:
    """The GridSession `session start` creates, checked locally first (ValueError names what is wrong)."""
    name = validate_session_id(name)
    if bool(node) == bool(selector):
        raise ValueError("give exactly one of --node NODE or --selector k=v (where the session runs)")
    config = read_session_config_file(config_file)
    spec: dict[str, Any] = {"user": user, "config": {"airgen": config.get("airgen"), "grid": config.get("grid")}}
    if node:
        spec["node"] = node
    if selector:
        spec["nodeSelector"] = parse_selector(selector)
    if image:
        spec["workload"] = {"image": image}
    if idle_timeout:
        spec["idleTimeoutSeconds"] = idle_timeout
    if tenant:
        spec["tenant"] = tenant
    try:
        GridSessionSpec.model_validate(spec)
    except ValueError as exc:
        raise ValueError(f"invalid session: {exc}") from exc
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise ValueError("cannot tell who you are (no $USER): pass --user NAME") from None


async def _connect(g: Globals) -> tuple[KubeClient, str]:
    access = await asyncio.to_thread(load_cluster_access, g.kubeconfig, g.context)
    return await KubeClient.connect(access), g.namespace or access.namespace


async def _wait_running(kube: KubeClient, name: str, ns: str, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with stderr().status(f"waiting for {name} to run") as status:
        while loop.time() < deadline:
            started, why = start_verdict(await kube.get(resources.GRIDSESSIONS, name, ns))
            if started is not None:
                status.stop()
                if started:
                    click.echo(f"{name} is {why}")
                    return 0
                error(f"{name} did not start: {why} (see: gridctl session get {name} -o yaml)")
                return UNFINISHED
            status.update(f"waiting for {name} to run: {why}")
            await asyncio.sleep(1)
    error(f"{name} did not start within {timeout:g}s (see: gridctl session get {name} -o yaml)")
    return UNFINISHED


# -- the commands ------------------------------------------------------------------------------------------


@click.group(cls=AliasedGroup, context_settings=CONTEXT_SETTINGS, aliases={"sessions": "session", "gs": "session",
                                                                          "tb": "tasks"})
@click.option("--kubeconfig", metavar="PATH", help="kubeconfig to use  [default: $KUBECONFIG, else ~/.kube/config]")
@click.option("--context", metavar="NAME", help="kubeconfig context to use  [default: the current context]")
@click.option("-n", "--namespace", metavar="NS",
              help="namespace of sessions and task batches  [default: the context's, else 'default']")
@click.version_option(package_name="gridop", prog_name="gridctl")
@click.pass_context
def cli(ctx: click.Context, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Grid sessions, task batches and consoles on Kubernetes (gridop).

    Exit codes: 0 done; 1 the work did not finish (timeout, refused, unreachable); 2 a usage error
    (nothing was sent); 3 finished, but some tasks failed or were cancelled; 130 interrupted.
    """
    ctx.obj = Globals(kubeconfig=kubeconfig, context=context, namespace=namespace)


@cli.group(cls=AliasedGroup, aliases={"ls": "list"})
def session() -> None:
    """Grid sessions: start one on a resource node, list, inspect, stop."""


@session.command()
@click.argument("name")
@click.option("--node", help="the resource node to run on  [default: none; give --node or --selector]")
@click.option("--selector", metavar="K=V[,K=V]",
              help="run on any node with these labels  [default: none; give --node or --selector]")
@click.option("--config", "config_file", required=True, metavar="FILE",
              help="session configuration (JSON) with 'airgen' and 'grid' sections")
@click.option("--user", help="the session's owner  [default: you, from $USER]")
@click.option("--tenant", help="the tenant the session belongs to  [default: none]")
@click.option("--image", help="workload image  [default: the operator's session image]")
@click.option("--idle-timeout", type=int, metavar="SECONDS", help="stop the session after this long idle  [default: never]")
@click.option("--wait/--no-wait", default=False, help="wait until the session runs (exit 1 if it fails)")
@click.option("--timeout", type=float, default=300.0, metavar="SECONDS", help="how long --wait waits")
@pass_globals
@runs_async
async def start(g: Globals, name: str, node: str | None, selector: str | None, config_file: str, user: str | None,
                tenant: str | None, image: str | None, idle_timeout: int | None, wait: bool, timeout: float) -> int:
    """Start session NAME on a resource node."""
    positive("timeout", timeout)
    positive("idle-timeout", idle_timeout)
    body = session_body(name, config_file, user or _whoami(), node=node, selector=selector, image=image,
                        idle_timeout=idle_timeout, tenant=tenant)  # what the user typed is checked first
    kube, ns = await _connect(g)
    async with kube:
        await kube.create(resources.GRIDSESSIONS, body, ns)
        click.echo(f"gridsession.gridop.io/{body['metadata']['name']} created")
        return await _wait_running(kube, body["metadata"]["name"], ns, timeout) if wait else 0


@session.command()
@click.argument("name")
@pass_globals
@runs_async
async def stop(g: Globals, name: str) -> int:
    """Stop session NAME: delete it and everything it created."""
    validate_session_id(name)
    kube, ns = await _connect(g)
    async with kube:
        if await kube.delete(resources.GRIDSESSIONS, name, ns):
            click.echo(f"gridsession.gridop.io/{name} deleted")
            return 0
    error(f"session {name!r} not found in namespace {ns!r}")
    return UNFINISHED


@session.command("list")
@click.option("-A", "--all-namespaces", is_flag=True, help="sessions of every namespace")
@click.option("--user", help="only this user's sessions  [default: everyone's]")
@output_option("table", "wide", "json", "yaml", "name", default="table")
@pass_globals
@runs_async
async def list_(g: Globals, all_namespaces: bool, user: str | None, output: str) -> int:
    """List sessions."""
    kube, ns = await _connect(g)
    async with kube:
        items = await kube.list(resources.GRIDSESSIONS, None if all_namespaces else ns)
    items = [gs for gs in items if user is None or gs["spec"].get("user") == user]
    if output in ("json", "yaml"):
        print_document(as_list(items), output)
    elif not items:
        error(f"No sessions found in {'any namespace' if all_namespaces else f'namespace {ns!r}'}.", "")
    else:
        print_sessions(items, output, all_namespaces)
    return 0


@session.command()
@click.argument("name")
@output_option("table", "wide", "json", "yaml", "name", default="table")
@pass_globals
@runs_async
async def get(g: Globals, name: str, output: str) -> int:
    """Show session NAME."""
    validate_session_id(name)
    kube, ns = await _connect(g)
    async with kube:
        gs = await kube.get(resources.GRIDSESSIONS, name, ns)
    if gs is None:
        error(f"session {name!r} not found in namespace {ns!r}")
        return UNFINISHED
    if output in ("json", "yaml"):
        print_document(gs, output)
    else:
        print_sessions([gs], output, False)
    return 0


cli.add_command(tasks_cli.tasks)
cli.add_command(console_cli.console)


def main(argv: list[str] | None = None) -> int:
    """Run gridctl; return its exit code. A mistake on the command line is one line and code 2."""
    prog = "kubectl grid" if os.path.basename(sys.argv[0]) == "kubectl-grid" else "gridctl"
    try:
        code = cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return USAGE
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else prog
        error(f"{exc.format_message()} (see '{where} --help')")
        return USAGE
    except click.ClickException as exc:
        error(exc.format_message())
        return exc.exit_code
    except click.Abort:
        error("interrupted", "")
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
