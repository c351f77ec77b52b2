"""gridctl console — interact with, tail, and replay session consoles.

    gridctl console interact NAME [--monitor]        (Ctrl-] detaches)
    gridctl console tail NAME -n 100 -f
    gridctl console replay FILE [--speed 2] [--max-idle 1]

The gateway URL comes from --gateway-url, $GRIDOP_GATEWAY_URL, or the session's own
status.console; the token from --token, $GRIDOP_TOKEN, or the kubeconfig user's token.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import click

from ..client.console import ConsoleClient
from ..client.sessions import validate_session_id
from ..kube import KubeClient, load_cluster_access, resources
from .common import Globals, error, pass_globals, runs_async


@click.group()
def console() -> None:
    """Session consoles through the gateway: interact, tail, replay a recording."""


def _connection(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.argument("name"),
        click.option("--gateway-url", envvar="GRIDOP_GATEWAY_URL", show_envvar=True, metavar="URL",
                     help="the console gateway  [default: the session's status.console]"),
        click.option("--token", envvar="GRIDOP_TOKEN", show_envvar=True,
                     help="bearer token  [default: the kubeconfig user's token]"),
        click.option("--tenant", envvar="GRIDOP_TENANT", show_envvar=True,
                     help="tenant (sent as Cray-Tenant-Name)  [default: none]"),
    ]):
        fn = option(fn)
    return fn


async def _resolve(g: Globals, name: str, url: str | None, token: str | None,
                   tenant: str | None) -> tuple[ConsoleClient, str]:
    name = validate_session_id(name)
    namespace = g.namespace
    if url is None or token is None or namespace is None:
        access = await asyncio.to_thread(load_cluster_access, g.kubeconfig, g.context)
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
    return ConsoleClient(url, token, tenant=tenant, namespace=namespace), name


@console.command()
@_connection
@click.option("--monitor", is_flag=True, help="read-only: watch without typing")
@pass_globals
@runs_async
async def interact(g: Globals, name: str, gateway_url: str | None, token: str | None, tenant: str | None,
                   monitor: bool) -> int:
    """Attach this terminal to session NAME's console (Ctrl-] detaches)."""
    client, name = await _resolve(g, name, gateway_url, token, tenant)
    reason = await client.interact(name, mode="monitor" if monitor else "interactive")
    error(f"\r\n[{reason}]", "")
    return 0


@console.command()
@_connection
@click.option("-n", "--lines", type=int, metavar="N", help="previous lines to show  [default: the gateway's, 100]")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@pass_globals
@runs_async
async def tail(g: Globals, name: str, gateway_url: str | None, token: str | None, tenant: str | None,
               lines: int | None, follow: bool) -> int:
    """Print session NAME's console log (the namespace goes before `console`: -n here is lines)."""
    if lines is not None and lines < 0:
        raise ValueError(f"--lines must be 0 or more, got {lines}")
    client, name = await _resolve(g, name, gateway_url, token, tenant)
    async for line in client.tail(name, lines=lines, follow=follow):
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


@console.command()
@click.argument("file", type=click.Path(path_type=pathlib.Path))
@click.option("--speed", type=float, default=1.0, help="playback speed factor")
@click.option("--max-idle", type=float, default=2.0, metavar="SECONDS", help="cap pauses at this long")
@runs_async
async def replay(file: pathlib.Path, speed: float, max_idle: float) -> int:
    """Play back a console recording FILE (asciicast v2, as the gateway records)."""
    if speed <= 0:
        raise ValueError(f"--speed must be positive, got {speed:g}")
    try:
        lines = (await asyncio.to_thread(file.read_text, encoding="utf-8")).splitlines()
    except FileNotFoundError:
        raise ValueError(f"no such recording: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read recording {file}: {exc}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    if header.get("version") != 2:
        raise ValueError(f"{file} is not an asciicast v2 recording")
    out = sys.stdout.buffer
    previous = 0.0
    for number, line in enumerate(lines[1:], start=2):
        try:
            at, kind, data = json.loads(line)
        except ValueError:
            raise ValueError(f"{file}:{number}: not an asciicast event") from None
        await asyncio.sleep(min(max(0.0, float(at) - previous), max_idle) / speed)
        previous = float(at)
        if kind == "o":
            out.write(str(data).encode())
            out.flush()
    return 0
