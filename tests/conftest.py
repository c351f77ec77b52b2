"""Fixtures every tier may use: a real redis-server process, and a real Redis Cluster (never a fake)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from bench.localredis import LocalCluster, free_port

# An operator started by a test (in-process or as a process) serves no conversion webhook unless
# the test asks for one: many operators run side by side here, and one port cannot serve them all.
# The webhook's own tests, the RBAC coverage run and the upgrade test turn it on, each on a free port.
os.environ.setdefault("GRIDOP_WEBHOOK", "false")


class RedisProcess:
    """A real redis-server on a free loopback port, which a test may stop and start again."""

    def __init__(self, workdir: pathlib.Path, *args: str, password: str | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install redis-server` (.ci/run does this)")
        self.port = free_port()
        self.password = password
        self.command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir),
                        "--save", "", *(("--requirepass", password) if password else ()), *args]
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.proc.kill()
        pytest.fail("redis-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (AOF flushed); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"), "--appendonly", "no", "--protected-mode", "yes").start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3-shard Redis Cluster (three redis-server processes joined by `redis-cli --cluster create`)."""
    try:
        cluster = LocalCluster(3, tmp_path_factory.mktemp("redis-cluster")).start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


