"""Local Redis servers for tests and benchmarks: one redis-server, or a Redis Cluster of N shards.

A cluster of three or more shards is created the way an operator of Redis would, with
`redis-cli --cluster create` (Debian's redis-tools); one or two shards (which redis-cli refuses)
get their slots assigned with CLUSTER ADDSLOTSRANGE and meet each other.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import subprocess
import time

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, what: str, proc: subprocess.Popen[bytes]) -> None:
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} on port {port} exited with code {proc.returncode}")
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"{what} on port {port} did not start")


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` (.ci/run does this)")
    return binary


def start_redis(port: int, workdir: str, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, *args], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _wait(port, "redis-server", proc)
    return proc


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class LocalCluster:
    """A Redis Cluster of `shards` primaries (no replicas) on loopback ports."""

    def __init__(self, shards: int, workdir: str | pathlib.Path):
        self.shards = shards
        self.workdir = pathlib.Path(workdir)
        self.ports = [_cluster_port() for _ in range(shards)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> LocalCluster:
        for port in self.ports:
            node_dir = self.workdir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(start_redis(port, str(node_dir), "--cluster-enabled", "yes", "--cluster-config-file",
                                          "nodes.conf", "--cluster-node-timeout", "5000"))
        if self.shards >= 3:
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli is not installed: `apt-get install redis-tools`")
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL)
        else:
            step = 16384 // self.shards
            for k, port in enumerate(self.ports):
                hi = 16383 if k == self.shards - 1 else (k + 1) * step - 1
                redis.Redis(port=port).execute_command("CLUSTER", "ADDSLOTSRANGE", k * step, hi)
                if k:
                    redis.Redis(port=port).execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(self._ready(port) for port in self.ports):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the local Redis Cluster did not converge")

    def _ready(self, port: int) -> bool:
        info = redis.Redis(port=port).execute_command("CLUSTER", "INFO").decode()
        nodes = redis.Redis(port=port).execute_command("CLUSTER", "NODES")
        known = len(nodes) if isinstance(nodes, dict) else len(nodes.decode().strip().splitlines())
        return "cluster_state:ok" in info and known == self.shards

    def flush(self) -> None:
        for port in self.ports:
            redis.Redis(port=port).flushall()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
