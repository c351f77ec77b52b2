"""gridctl console — interact with, tail, and replay session consoles.

    gridctl console interact NAME [--monitor]        (Ctrl-] detaches)
    gridctl console tail NAME -n 100 -f
    gridctl console replay FILE [--speed 2] [--max-idle 1]

The gateway URL comes from --gateway-url, $GRIDOP_GATEWAY_URL, or the session's own
status.console; the token from --token, $GRIDOP_TOKEN, the kubeconfig user's token, or else (a
kubeconfig that authenticates with a client certificate, as kind's does) the session's own token
Secret `<name>-token`; the tenant from --tenant, $GRIDOP_TENANT, or the session's spec.tenant.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import click

from ..client.console import ConsoleClient
from ..client.sessions import validate_session_id
from ..kube import KubeClient, KubeError, load_cluster_access, resources
from ..kube.access import AccessError
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
                     help="bearer token  [default: the kubeconfig user's token, else the session's token Secret]"),
        click.option("--tenant", envvar="GRIDOP_TENANT", show_envvar=True,
                     help="tenant (sent as Cray-Tenant-Name)  [default: the session's spec.tenant]"),
    ]):
        fn = option(fn)
    return fn


async def _resolve(g: Globals, name: str, url: str | None, token: str | None,
                   tenant: str | None) -> tuple[ConsoleClient, str]:
    """The gateway, token, tenant and namespace for session NAME: what is given, and the rest from
    the cluster (the session object, and its token Secret when the kubeconfig holds no token)."""
    name = validate_session_id(name)
    namespace = g.namespace
    if url is not None and token is not None and (tenant is not None or namespace is not None):
        # Everything needed is given; the session's tenant, when there is a cluster to ask.
        if tenant is None:
            with contextlib.suppress(AccessError, KubeError, OSError, aiohttp.ClientError):
                access = await asyncio.to_thread(load_cluster_access, g.kubeconfig, g.context)
                async with await KubeClient.connect(access) as kube:
                    tenant = ((await kube.get(resources.GRIDSESSIONS, name, namespace) or {}).get("spec") or {}).get("tenant")
        return ConsoleClient(url, token, tenant=tenant or None, namespace=namespace), name
    if url is None or token is None or tenant is None or namespace is None:
        access = await asyncio.to_thread(load_cluster_access, g.kubeconfig, g.context)
        namespace = namespace or access.namespace
        token = token or await access.bearer_token()
        async with await KubeClient.connect(access) as kube:
            gs = await kube.get(resources.GRIDSESSIONS, name, namespace)
            if gs is None:
                raise ValueError(f"session {name!r} not found in namespace {namespace!r} (see: gridctl session list)")
            if not token:
                token = await _session_token(kube, name, namespace)
        tenant = tenant if tenant is not None else (gs.get("spec") or {}).get("tenant")
        if url is None:
            interact_url = ((gs.get("status") or {}).get("console") or {}).get("interact")
            if not interact_url:
                raise ValueError("the session reports no console URL: pass --gateway-url or set GRIDOP_GATEWAY_URL")
            url = interact_url.split("/interact/")[0]
    if not token:
        raise ValueError("no token: pass --token, set GRIDOP_TOKEN, or use a kubeconfig user with a token")
    return ConsoleClient(url, token, tenant=tenant or None, namespace=namespace), name


async def _session_token(kube: KubeClient, name: str, namespace: str) -> str | None:
    """The session's own JWT (its Secret `<name>-token`), for a kubeconfig without a bearer token:
    reading it takes `get` on that Secret, which the session's owner usually has in their namespace."""
    secret = await kube.get(resources.SECRETS, f"{name}-token", namespace)
    raw = ((secret or {}).get("data") or {}).get("token")
    if not raw:
        raise ValueError(f"no token: the kubeconfig has none, and session {name!r} has no token Secret "
                         f"{name}-token yet; pass --token or set GRIDOP_TOKEN")
    return base64.b64decode(raw).decode()


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
