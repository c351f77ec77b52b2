"""Mistakes a user makes starting gridop's processes end in one line naming the culprit, and exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def gridop(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_") and k != "KUBECONFIG"}
    return subprocess.run([sys.executable, "-m", "gridop", *args], capture_output=True, text=True, timeout=60,
                          env={**environ, **env}, stdin=subprocess.DEVNULL)


WORKER = ["worker", "--session", "s"]


@pytest.mark.parametrize(("args", "env", "message"), [
    ([*WORKER, "--redis-url", "redis://127.0.0.1:6379/0", "--handler", "nosuchmodule:fn"], {},
     "gridop worker: handler 'nosuchmodule:fn': cannot import 'nosuchmodule'"),
    ([*WORKER, "--redis-url", "redis://127.0.0.1:6379/0", "--handler", "nocolon"], {},
     "gridop worker: handler 'nocolon' must look like 'module:function'"),
    ([*WORKER, "--redis-url", f"redis://:hunter2@127.0.0.1:{_closed_port()}/0", "--handler", "gridop.tasks.examples:square"], {},
     "gridop worker: cannot reach the data plane at redis://:***@127.0.0.1:"),
    ([*WORKER, "--redis-url", "http://cache:6379", "--handler", "gridop.tasks.examples:square"], {},
     "gridop worker: --redis-url 'http://cache:6379' is not a Redis URL"),
    ([*WORKER, "--redis-url", "redis://x", "--handler", "gridop.tasks.examples:square", "--lease", "5", "--heartbeat", "5"], {},
     "gridop worker: --lease (5s) must be longer than --heartbeat (5s)"),
    (["operator"], {"KUBECONFIG": "/nonexistent/kubeconfig"},
     "gridop operator: cannot read kubeconfig /nonexistent/kubeconfig"),
    (["gateway"], {"KUBECONFIG": "/nonexistent/kubeconfig"},
     "gridop gateway: cannot read kubeconfig /nonexistent/kubeconfig"),
])
def test_one_line_and_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = gridop(*args, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
