"""The console gateway on a real cluster: interact with and tail a real session pod through the
real API server (pod attach over v5.channel.k8s.io, pod logs), authorized by the session's own token.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator

import pytest
import yaml

from gridop.client.console import ConsoleClient, ConsoleError
from gridop.kube import KubeClient, resources

from .conftest import ROOT, _free_port, eventually


@pytest.fixture
async def gateway(operator: None, namespace: str) -> AsyncIterator[str]:
    port, metrics_port = _free_port(), _free_port()
    env = {**os.environ, "GRIDOP_OPERATOR_NAMESPACE": namespace, "GRIDOP_GATEWAY_PORT": str(port),
           "GRIDOP_METRICS_PORT": str(metrics_port), "GRIDOP_LOG_FORMAT": "text"}
    log_path = pathlib.Path(tempfile.gettempdir()) / f"gridop-gateway-{namespace}.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gridop", "gateway", "--namespace", namespace],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    await eventually(lambda: asyncio.to_thread(ready), timeout=60, what=f"gateway ready (log: {log_path})")
    yield f"ws://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 30)
    log.close()


async def test_interact_and_tail_a_real_session(
    kube: KubeClient, gateway: str, namespace: str, resource_node: str
) -> None:
    body = yaml.safe_load((ROOT / "examples" / "gridsession.yaml").read_text())
    body["metadata"]["name"] = "console-e2e"
    body["spec"]["workload"] = {"image": "busybox:1.36", "command": ["sh"]}
    await kube.create(resources.GRIDSESSIONS, body, namespace)

    async def running() -> dict | None:
        gs = await kube.get(resources.GRIDSESSIONS, "console-e2e", namespace)
        return gs if (gs or {}).get("status", {}).get("phase") == "Running" else None

    await eventually(running, timeout=240, what="session Running")
    secret = await kube.get(resources.SECRETS, "console-e2e-token", namespace)
    token = base64.b64decode(secret["data"]["token"]).decode()
    tenant = body["spec"].get("tenant")
    client = ConsoleClient(gateway, token, tenant=tenant, namespace=namespace)

    stream = await client.open("console-e2e")
    try:
        await stream.resize(100, 30)
        await stream.send("echo e2e-$((6*7)); stty size\r")
        seen = b""
        async with asyncio.timeout(30):
            async for data in stream:
                seen += data
                if b"e2e-42" in seen and b"30 100" in seen:
                    break
    finally:
        await stream.close()

    lines = [line async for line in client.tail("console-e2e", lines=20)]
    assert any("e2e-42" in line for line in lines), lines

    with pytest.raises(ConsoleError) as info:
        await ConsoleClient(gateway, token, tenant=tenant, namespace=namespace).open("someone-else")
    assert info.value.status == 403
    await kube.delete(resources.GRIDSESSIONS, "console-e2e", namespace)
