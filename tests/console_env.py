"""A console gateway under test: the real `gridop gateway` process against an emulated API.

`ConsoleEnv` runs the kmock emulator and the API front (tests/console_upstream.py) on an event
loop of their own, in a thread, so a module's tests (each on its own loop) share one environment;
`GatewayProcess` runs `python -m gridop gateway` on local ports with a kubeconfig for the front.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from typing import Any

import kmock
import yaml

from gridop.auth.keystore import JWKS_KEY, public_config_map_name
from gridop.auth.tokens import Keyring, issue_session_token
from gridop.kube import ClusterAccess, KubeClient, resources
from tests.console_upstream import ApiFront, PtyConsole
from tests.emulator import ApiServer, register_crds

SYSTEM_NAMESPACE = "gridop-system"
SIGNING_SECRET = "gridop-signing-keys"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleEnv:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="console-env", daemon=True)
        self.keyring = Keyring.generate()
        self.front: ApiFront
        self.api: KubeClient
        self._stack: Any = None

    # -- running things on the environment's loop ----------------------------------------------
    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """From a test's own event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def start(self) -> ConsoleEnv:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        self.emulator = ApiServer()
        await self.emulator.__aenter__()
        self.server = kmock.Server(self.emulator)
        await self.server.__aenter__()
        self.emulator.resources.load_bundled()
        register_crds(self.emulator)
        self.front = ApiFront(str(self.emulator.url))
        await self.front.start()
        self.api = await KubeClient.connect(ClusterAccess(server=str(self.emulator.url).rstrip("/"), namespace="default"))
        await self.api.create(resources.CONFIGMAPS, {
            "metadata": {"name": public_config_map_name(SIGNING_SECRET), "namespace": SYSTEM_NAMESPACE},
            "data": {JWKS_KEY: json.dumps(self.keyring.public_jwks())},
        }, SYSTEM_NAMESPACE)

    def stop(self) -> None:
        async def _stop() -> None:
            await self.front.stop()
            await self.api.close()
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(_stop())
        self.run(_cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # -- objects --------------------------------------------------------------------------------
    async def _session(self, namespace: str, name: str, user: str, tenant: str | None, phase: str, pod: str | None, node: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"user": user, "node": node, "config": {"airgen": {}, "grid": {}}}
        if tenant:
            spec["tenant"] = tenant
        body = {"apiVersion": "gridop.io/v1beta1", "kind": "GridSession", "metadata": {"name": name}, "spec": spec}
        await self.api.create(resources.GRIDSESSIONS, body, namespace)
        status: dict[str, Any] = {"phase": phase, "nodeName": node, "nodeIP": "172.18.0.3"}
        if pod:
            status.update(podName=pod, podUID=f"uid-{pod}")
        return await self.api.patch(resources.GRIDSESSIONS, name, {"status": status}, namespace, subresource="status")

    def session(self, namespace: str, name: str, *, user: str = "alice", tenant: str | None = None,
                phase: str = "Running", pod: str | None = "", node: str = "worker-1",
                console: list[str] | None = None) -> PtyConsole | None:
        """Create a GridSession as the operator would report it, with a real console for its pod."""
        pod_name = name if pod == "" else pod
        self.run(self._session(namespace, name, user, tenant, phase, pod_name, node))
        if pod_name:
            pty_console = self.run(self.front.add_console(namespace, pod_name, console or ["/bin/sh"]))
            if console is None:  # a shell: hand it over at its first prompt, as a user would find it
                deadline = time.monotonic() + 10
                while b"$ " not in pty_console.log and time.monotonic() < deadline:
                    time.sleep(0.01)
            return pty_console
        return None

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.run(self.api.patch(resources.GRIDSESSIONS, name, {"status": status}, namespace, subresource="status"))

    def delete_session(self, namespace: str, name: str) -> None:
        self.run(self.api.delete(resources.GRIDSESSIONS, name, namespace))

    def get(self, res: resources.Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.run(self.api.get(res, name, namespace))

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.run(self.api.list(resources.EVENTS, namespace))

    def session_token(self, namespace: str, name: str, *, user: str = "alice", tenant: str | None = None,
                      lifetime: float = 3600, keyring: Keyring | None = None, bind_namespace: bool = True) -> str:
        return issue_session_token(
            keyring or self.keyring, issuer="gridop", audience="gridop", user=user, session=name, tenant=tenant,
            lifetime=datetime.timedelta(seconds=lifetime), now=datetime.datetime.now(tz=datetime.UTC),
            namespace=namespace if bind_namespace else None,
        )

    def write_kubeconfig(self, path: pathlib.Path) -> pathlib.Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.front.url}}],
            "users": [{"name": "test", "user": {"token": "gateway-sa-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
        }))
        return path


class GatewayProcess:
    """`python -m gridop gateway` on free local ports."""

    def __init__(self, kubeconfig: pathlib.Path, log_path: pathlib.Path, *, port: int | None = None, **settings: Any):
        self.port = port or free_port()
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
        env.update({
            "KUBECONFIG": str(kubeconfig),
            "GRIDOP_OPERATOR_NAMESPACE": SYSTEM_NAMESPACE,
            "GRIDOP_SIGNING_SECRET": SIGNING_SECRET,
            "GRIDOP_GATEWAY_PORT": str(self.port),
            "GRIDOP_METRICS_PORT": str(self.metrics_port),
            "GRIDOP_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT / "operator"),
        })
        for key, value in settings.items():
            env[f"GRIDOP_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gridop", "gateway"], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.log_path.read_text()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._log.close()
        return code


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
