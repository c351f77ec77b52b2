"""gridctl console — interact with, tail, and replay session consoles.

    gridctl console interact NAME [--monitor]        (Ctrl-] detaches)
    gridctl console tail NAME -n 100 -f
    gridctl console replay FILE [--speed 2] [--max-idle 1]

The gateway URL comes from --gateway-url, $GRIDOP_GATEWAY_URL, or the session's own
status.console; the token from --token, $GRIDOP_TOKEN, or the kubeconfig user's token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
from typing import Any

from ..client.console import ConsoleClient
from ..client.sessions import validate_session_id
from ..kube import KubeClient, load_cluster_access, resources


def add_parser(kinds: Any) -> None:
    console = kinds.add_parser("console", help="session consoles through the gateway")
    verbs = console.add_subparsers(dest="verb", required=True)

    def connection(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", help="the session")
        p.add_argument("--gateway-url", default=os.environ.get("GRIDOP_GATEWAY_URL"),
                       help="console gateway (default: $GRIDOP_GATEWAY_URL, else the session's status.console)")
        p.add_argument("--token", default=os.environ.get("GRIDOP_TOKEN"),
                       help="bearer token (default: $GRIDOP_TOKEN, else the kubeconfig user's token)")
        p.add_argument("--tenant", default=os.environ.get("GRIDOP_TENANT"), help="tenant (Cray-Tenant-Name) [$GRIDOP_TENANT]")

    interact = verbs.add_parser("interact", help="attach this terminal to the session's console (Ctrl-] detaches)")
    connection(interact)
    interact.add_argument("--monitor", action="store_true", help="read-only: watch without typing")

    tail = verbs.add_parser("tail", help="print the console log")
    connection(tail)
    tail.add_argument("-n", "--lines", type=int, default=None, help="previous lines to show (default: the gateway's, 100)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")

    replay = verbs.add_parser("replay", help="play back a console recording (asciicast v2)")
    replay.add_argument("file", help="a .cast file the gateway recorded")
    replay.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default: 1)")
    replay.add_argument("--max-idle", type=float, default=2.0, help="cap pauses at this many seconds (default: 2)")


async def _resolve(args: argparse.Namespace) -> tuple[ConsoleClient, str]:
    name = validate_session_id(args.name)
    url, token, namespace = args.gateway_url, args.token, args.namespace
    if url is None or token is None or namespace is None:
        access = await asyncio.to_thread(load_cluster_access, args.kubeconfig, args.context)
        namespace = namespace or access.namespace
        token = token or await access.bearer_token()
        if url is None:
            async with await KubeClient.connect(access) as kube:
                gs = await kube.get(resources.GRIDSESSIONS, name, namespace)
            if gs is None:
                raise ValueError(f"session {name!r} not found in namespace {namespace!r}")
            interact_url = ((gs.get("status") or {}).get("console") or {}).get("interact")
            if not interact_url:
                raise ValueError("the session reports no console URL: pass --gateway-url or set GRIDOP_GATEWAY_URL")
            url = interact_url.split("/interact/")[0]
    if not token:
        raise ValueError("no token: pass --token, set GRIDOP_TOKEN, or use a kubeconfig user with a token")
    return ConsoleClient(url, token, tenant=args.tenant, namespace=namespace), name


async def _replay(path: pathlib.Path, speed: float, max_idle: float) -> int:
    if speed <= 0:
        raise ValueError(f"--speed must be positive, got {speed}")
    try:
        lines = (await asyncio.to_thread(path.read_text, encoding="utf-8")).splitlines()
    except FileNotFoundError:
        raise ValueError(f"no such recording: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read recording {path}: {exc}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    if header.get("version") != 2:
        raise ValueError(f"{path} is not an asciicast v2 recording")
    out = sys.stdout.buffer
    previous = 0.0
    for number, line in enumerate(lines[1:], start=2):
        try:
            at, kind, data = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not an asciicast event") from None
        await asyncio.sleep(min(max(0.0, float(at) - previous), max_idle) / speed)
        previous = float(at)
        if kind == "o":
            out.write(str(data).encode())
            out.flush()
    return 0


async def run(args: argparse.Namespace) -> int:
    if args.verb == "replay":
        return await _replay(pathlib.Path(args.file), args.speed, args.max_idle)
    if args.verb == "tail" and args.lines is not None and args.lines < 0:
        raise ValueError(f"--lines must be 0 or more, got {args.lines}")
    client, name = await _resolve(args)
    if args.verb == "tail":
        async for line in client.tail(name, lines=args.lines, follow=args.follow):
            sys.stdout.write(line)
            sys.stdout.flush()
        return 0
    reason = await client.interact(name, mode="monitor" if args.monitor else "interactive")
    print(f"\r\n[{reason}]", file=sys.stderr)
    return 0
