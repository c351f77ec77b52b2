"""docs/sdk.md, run as written: its resource configuration is the file its blocks read, and the
blocks start, share and stop sessions through the operator."""

from __future__ import annotations

import asyncio
import pathlib

import kmock

from gridop.kube import KubeClient, resources
from tests.integration.conftest import eventually

from .snippets import block, run_python, user_env

PAGE = "docs/sdk.md"


async def test_sync_and_sharing_blocks(
    emulator: kmock.KubernetesEmulator, operator, api: KubeClient, kind_nodes: None, kubeconfig: pathlib.Path,
    workdir: pathlib.Path,
) -> None:
    (workdir / "resource_config.json").write_text(block(PAGE, "{").text)
    env = user_env(KUBECONFIG=str(kubeconfig))
    imported = await asyncio.to_thread(run_python, block(PAGE, "from gridop.client import GridSessionManager"),
                                       workdir, env)
    assert imported.returncode == 0, imported.stderr

    sync = await asyncio.to_thread(run_python, block(PAGE, "from gridop.client import SyncGridSessionManager"),
                                   workdir, env)
    assert sync.returncode == 0, sync.stderr[-3000:]
    assert sync.stdout == "True\n"
    await eventually(lambda: _gone(api, "sim-1"))  # AUTO created it, so leaving closed it

    shared = await asyncio.to_thread(run_python, block(PAGE, "from gridop.client import GridSessionManager, Session"),
                                     workdir, env)
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert shared.stdout == "ALREADY_EXISTS\n"
    await eventually(lambda: _gone(api, "sim-2"))


async def _gone(api: KubeClient, name: str) -> bool:
    return await api.get(resources.GRIDSESSIONS, name, "default") is None
