"""gridctl — start, stop, list and inspect grid sessions; reach their consoles.

    gridctl session start NAME --node kind-worker --user alice --config session.json
    gridctl session list
    gridctl session get NAME -o yaml
    gridctl session stop NAME
    gridctl console tail NAME -n 100 -f
    gridctl console interact NAME

Installed as `kubectl-grid` too, so `kubectl grid session list` works.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from redis.exceptions import RedisError

from ..api.v1alpha1 import API_VERSION, GridSessionSpec, Phase
from ..api.v1alpha1.gridsession import KIND
from ..client.sessions import validate_session_id
from ..kube import KubeClient, KubeError, load_cluster_access, resources
from ..sessions.config import read_session_config_file
from ..client.console import ConsoleError
from ..kube.access import AccessError
from . import console as console_cli
from . import tasks as tasks_cli


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    if not timestamp:
        return "<none>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(tz=datetime.UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [["<none>" if v in (None, "") else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def session_rows(items: list[dict[str, Any]], wide_namespace: bool) -> str:
    rows = []
    for gs in sorted(items, key=lambda g: (g["metadata"].get("namespace", ""), g["metadata"]["name"])):
        st = gs.get("status") or {}
        ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        row = [
            gs["metadata"]["name"], st.get("phase", Phase.PENDING.value), gs["spec"].get("user"), st.get("nodeName"),
            st.get("nodeIP"), age(st.get("lastActiveTime")), age(gs["metadata"].get("creationTimestamp")),
            ready.get("reason", ""),
        ]
        rows.append(([gs["metadata"].get("namespace")] if wide_namespace else []) + row)
    headers = ["NAME", "PHASE", "USER", "NODE", "NODE-IP", "LAST-ACTIVE", "AGE", "REASON"]
    return table((["NAMESPACE"] if wide_namespace else []) + headers, rows)


def parse_selector(text: str) -> dict[str, str]:
    result = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--selector: {part!r} is not key=value")
        result[key.strip()] = value.strip()
    return result


def session_body(args: argparse.Namespace) -> dict[str, Any]:
    """The GridSession `session start` creates, checked locally first (ValueError names what is wrong)."""
    name = validate_session_id(args.name)
    config = read_session_config_file(args.config)
    spec: dict[str, Any] = {"user": args.user, "config": {"airgen": config.get("airgen"), "grid": config.get("grid")}}
    if args.node:
        spec["node"] = args.node
    if args.selector:
        spec["nodeSelector"] = parse_selector(args.selector)
    if args.image:
        spec["workload"] = {"image": args.image}
    if args.idle_timeout:
        spec["idleTimeoutSeconds"] = args.idle_timeout
    if args.tenant:
        spec["tenant"] = args.tenant
    try:
        GridSessionSpec.model_validate(spec)
    except ValueError as exc:
        raise ValueError(f"invalid session: {exc}") from exc
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


async def _start(kube: KubeClient, ns: str, args: argparse.Namespace, body: dict[str, Any]) -> int:
    name = body["metadata"]["name"]
    await kube.create(resources.GRIDSESSIONS, body, ns)
    print(f"gridsession.gridop.io/{name} created")
    if not args.wait:
        return 0
    deadline = asyncio.get_running_loop().time() + args.timeout
    while asyncio.get_running_loop().time() < deadline:
        gs = await kube.get(resources.GRIDSESSIONS, name, ns) or {}
        st = gs.get("status") or {}
        if st.get("phase") == Phase.RUNNING.value:
            print(f"{name} is running on {st.get('nodeName')} ({st.get('nodeIP')})")
            return 0
        if st.get("phase") in (Phase.FAILED.value, Phase.STOPPED.value):
            ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
            print(f"{name} {st['phase'].lower()}: {ready.get('reason')}: {ready.get('message')}", file=sys.stderr)
            return 1
        await asyncio.sleep(1)
    print(f"{name} did not start within {args.timeout}s", file=sys.stderr)
    return 1


async def run(args: argparse.Namespace) -> int:
    # What the user typed is checked before the cluster is: a bad name or file is named as such.
    body = session_body(args) if args.verb == "start" else None
    if args.verb in ("stop", "get"):
        validate_session_id(args.name)
    access = await asyncio.to_thread(load_cluster_access, args.kubeconfig, args.context)
    ns = args.namespace or access.namespace
    async with await KubeClient.connect(access) as kube:
        if args.verb == "start":
            assert body is not None
            return await _start(kube, ns, args, body)
        if args.verb == "stop":
            name = validate_session_id(args.name)
            if await kube.delete(resources.GRIDSESSIONS, name, ns):
                print(f"gridsession.gridop.io/{name} deleted")
                return 0
            print(f"Error: session {name!r} not found in namespace {ns!r}", file=sys.stderr)
            return 1
        if args.verb == "list":
            items = await kube.list(resources.GRIDSESSIONS, None if args.all_namespaces else ns)
            if args.user:
                items = [g for g in items if g["spec"].get("user") == args.user]
            if not items:
                print("No sessions found.", file=sys.stderr)
                return 0
            print(session_rows(items, args.all_namespaces))
            return 0
        if args.verb == "get":
            gs = await kube.get(resources.GRIDSESSIONS, validate_session_id(args.name), ns)
            if gs is None:
                print(f"Error: session {args.name!r} not found in namespace {ns!r}", file=sys.stderr)
                return 1
            if args.output == "json":
                print(json.dumps(gs, indent=2))
            elif args.output == "yaml":
                print(yaml.safe_dump(gs, sort_keys=False), end="")
            else:
                print(session_rows([gs], False))
            return 0
    raise AssertionError(args.verb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridctl", description="Grid sessions on Kubernetes (gridop).")
    parser.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context to use")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    kinds = parser.add_subparsers(dest="kind", required=True)
    session = kinds.add_parser("session", aliases=["sessions", "gs"], help="grid sessions")
    verbs = session.add_subparsers(dest="verb", required=True)

    start = verbs.add_parser("start", help="start a session on a resource node")
    start.add_argument("name")
    where = start.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="resource node to run on")
    where.add_argument("--selector", help="run on any node with these labels (k=v,k2=v2)")
    start.add_argument("--config", required=True, help="session configuration file with 'airgen' and 'grid'")
    start.add_argument("--user", default=getpass.getuser(), help="session owner (default: you)")
    start.add_argument("--tenant")
    start.add_argument("--image", help="workload image (default: the operator's session image)")
    start.add_argument("--idle-timeout", type=int, help="stop after this many idle seconds")
    start.add_argument("--wait", action="store_true", help="wait until the session runs (or fails)")
    start.add_argument("--timeout", type=float, default=300.0, help="how long --wait waits (seconds)")

    stop = verbs.add_parser("stop", help="stop (delete) a session and everything it created")
    stop.add_argument("name")

    ls = verbs.add_parser("list", aliases=["ls"], help="list sessions")
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    ls.add_argument("--user", help="only this user's sessions")

    get = verbs.add_parser("get", help="show one session")
    get.add_argument("name")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")

    tasks_cli.add_parser(kinds)
    console_cli.add_parser(kinds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "ls":
        args.verb = "list"
    try:
        if args.kind in ("tasks", "tb"):
            return asyncio.run(tasks_cli.run(args))
        if args.kind == "console":
            return asyncio.run(console_cli.run(args))
        return asyncio.run(run(args))
    except ConsoleError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return 1
    except AccessError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except tasks_cli.Unfinished as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return tasks_cli.UNFINISHED
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KubeError as exc:
        print(f"Error from server: {exc.api_message or exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Error: cannot reach the cluster: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"Error: data plane: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
