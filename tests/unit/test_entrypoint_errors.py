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
    (["operator"], {"GRIDOP_RESYNC_SECONDS": "abc"},
     "gridop operator: GRIDOP_RESYNC_SECONDS='abc': Input should be a valid number"),
    (["operator"], {"GRIDOP_RESYNC_SECONDS": "-1"},
     "gridop operator: GRIDOP_RESYNC_SECONDS='-1': Input should be greater than 0"),
    (["gateway"], {"GRIDOP_GATEWAY_CONSOLE_COMMAND": "sh -l"},
     "gridop gateway: GRIDOP_GATEWAY_CONSOLE_COMMAND cannot be read"),
    # A plain comma list is a list: the operator gets past its settings to the (missing) kubeconfig.
    (["operator"], {"GRIDOP_WATCH_NAMESPACES": "team-a,team-b", "KUBECONFIG": "/nonexistent/kubeconfig"},
     "gridop operator: cannot read kubeconfig /nonexistent/kubeconfig"),
    (WORKER, {"GRIDOP_BATCH_SIZE": "abc"},
     "gridop worker: GRIDOP_BATCH_SIZE='abc': Input should be a valid integer"),
    (WORKER, {"GRIDOP_BATCH_SIZE": "0"}, "gridop worker: GRIDOP_BATCH_SIZE='0': Input should be greater than or equal to 1"),
    (WORKER, {"GRIDOP_HANDLER_ISOLATION": "fork"}, "gridop worker: GRIDOP_HANDLER_ISOLATION='fork': Input should be 'process' or 'thread'"),
    ([*WORKER, "--batch-size", "0"], {}, "gridop worker: invalid value for --batch-size: 0 is not in the range x>=1"),
    (["nosuch"], {}, "gridop: No such command 'nosuch'."),
])
def test_one_line_and_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = gridop(*args, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


@pytest.fixture
def redis_with_a_team_user(redis_url: str) -> str:
    """The admin URL; the ACL user `team-a` reaches only gridop:team-a:* keys (as the operator's per-namespace users do)."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser("team-a", enabled=True, passwords=["+pw"], keys=["gridop:team-a:*"], commands=["+@all"])
    admin.close()
    return redis_url


def test_data_plane_mistakes_are_one_line(redis_with_a_team_user: str) -> None:
    port = redis_with_a_team_user.rsplit(":", 1)[1].split("/")[0]
    handler = ["--handler", "gridop.tasks.examples:square"]
    cases = [
        ([*WORKER, *handler, "--redis-url", f"redis+cluster://127.0.0.1:{port}"],
         f"gridop worker: --redis-url 'redis+cluster://127.0.0.1:{port}' names a Redis Cluster, but that server is a plain "
         "Redis; use redis:// for it"),
        ([*WORKER, *handler, "--redis-url", f"redis://team-a:pw@127.0.0.1:{port}/0"],
         f"gridop worker: the Redis user of --redis-url redis://team-a:***@127.0.0.1:{port}/0 may not use keys under "
         "'gridop:default'"),
    ]
    for args, message in cases:
        result = gridop(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(message), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_named(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gridop(*WORKER, "--handler", "gridop.tasks.examples:square", "--redis-url", redis_url,
                        "--metrics-port", str(port))
    assert result.returncode == 2
    assert result.stderr == (f"gridop worker: --metrics-port: port {port} is already in use (another worker on this "
                             "machine?); give each worker its own --metrics-port, or 0 to serve no metrics\n")


def test_version_and_help() -> None:
    version = gridop("--version")
    assert version.returncode == 0 and version.stdout.startswith("gridop, version ")
    from gridop.__main__ import cli

    for command in cli.commands.values():  # every option says what it does
        undocumented = [p.name for p in command.params if not getattr(p, "help", None) and not getattr(p, "hidden", False)
                        and p.name not in ("log_format", "log_level")]
        assert undocumented == [], command.name
    assert "GRIDOP_HEARTBEAT_SECONDS" in gridop("worker", "--help").stdout


def test_an_unreachable_api_server_is_one_line_and_exit_1(tmp_path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{_closed_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    result = gridop("operator", KUBECONFIG=str(kubeconfig), GRIDOP_LOG_FORMAT="text")
    assert result.returncode == 1
    assert result.stderr.startswith("gridop operator: cannot reach the Kubernetes API at http://127.0.0.1:")
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr, result.stderr
