"""Session start latency and operator memory, on the API emulator.

    .venv/bin/python -m bench.session_start --sessions 50

Runs `gridop operator` as a separate process against an in-memory Kubernetes API (kmock), creates
N GridSessions at once, plays the kubelet (binds and starts each pod the moment it appears) and
prints apply→pod-created and apply→Running latencies and the operator's resident memory.
The emulator answers in microseconds, so the figures are the operator's own overhead; on a real
cluster add the scheduler, image pull and container start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridop.kube import ClusterAccess, KubeClient, resources  # noqa: E402

NS = "bench"


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(n: int) -> None:
    # Three processes, as in a cluster: the API (emulator), the operator, and this client.
    api_port = free_port()
    emulator = subprocess.Popen([sys.executable, "-m", "tests.emulator", "--port", str(api_port)], cwd=ROOT,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert emulator.stdout is not None
    emulator.stdout.readline()  # "emulator listening on ..."
    url = f"http://127.0.0.1:{api_port}"
    try:
        api_cpu = cpu_seconds(emulator.pid)
        await run(url, n)
        print(f"  API emulator CPU: {cpu_seconds(emulator.pid) - api_cpu:.1f} s (kmock is single-threaded Python;"
              " when this is close to the wall time, the emulator is the bottleneck)")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


async def run(url: str, n: int) -> None:
    if True:
        api = await KubeClient.connect(ClusterAccess(server=url, namespace=NS))
        await api.create(resources.NODES, {"metadata": {"name": "w1", "labels": {"gridop.io/resource-node": "true"}},
                                           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = pathlib.Path(tmp, "kubeconfig")
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "emu",
                "clusters": [{"name": "emu", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": NS}}],
            }))
            port = free_port()
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "GRIDOP_NAMESPACE": NS, "GRIDOP_METRICS_PORT": str(port),
                   "GRIDOP_LOG_LEVEL": "WARNING", "GRIDOP_LOG_FORMAT": "text"}
            proc = subprocess.Popen([sys.executable, "-m", "gridop", "operator"], env=env, stdin=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                await asyncio.sleep(3)
                idle_rss, _ = rss_kib(proc.pid)
                created: dict[str, float] = {}
                pod_seen: dict[str, float] = {}
                running: dict[str, float] = {}

                async def kubelet() -> None:
                    while len(pod_seen) < n:
                        for pod in await api.list(resources.PODS, NS):
                            name = pod["metadata"]["name"]
                            if name not in pod_seen:
                                pod_seen[name] = time.perf_counter()
                                await api.patch(resources.PODS, name, {"spec": {"nodeName": "w1"}}, NS)
                                await api.patch(resources.PODS, name, {"status": {
                                    "phase": "Running", "hostIP": "10.0.0.1",
                                    "conditions": [{"type": "Ready", "status": "True"}]}}, NS, subresource="status")
                        await asyncio.sleep(0.02)

                async def observer() -> None:
                    while len(running) < n:
                        for gs in await api.list(resources.GRIDSESSIONS, NS):
                            name = gs["metadata"]["name"]
                            if name not in running and (gs.get("status") or {}).get("phase") == "Running":
                                running[name] = time.perf_counter()
                        await asyncio.sleep(0.02)

                op_cpu = cpu_seconds(proc.pid)
                tasks = [asyncio.create_task(kubelet()), asyncio.create_task(observer())]
                for i in range(n):
                    name = f"s{i:04d}"
                    created[name] = time.perf_counter()
                    await api.create(resources.GRIDSESSIONS, {"metadata": {"name": name}, "spec": {
                        "user": "bench", "node": "w1", "config": {"airgen": {}, "grid": {}}}}, NS)
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
                rss, hwm = rss_kib(proc.pid)
                op_cpu = cpu_seconds(proc.pid) - op_cpu
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        await api.close()

    to_pod = [pod_seen[k] - created[k] for k in created]
    to_run = [running[k] - created[k] for k in created]
    span = max(running.values()) - min(created.values())
    print(f"gridop session start on the API emulator: {n} sessions created at once")
    print(f"  apply -> pod created : p50 {statistics.median(to_pod)*1000:7.1f} ms   p99 {pct(to_pod, .99)*1000:7.1f} ms")
    print(f"  apply -> Running     : p50 {statistics.median(to_run)*1000:7.1f} ms   p99 {pct(to_run, .99)*1000:7.1f} ms"
          f"   max {max(to_run)*1000:7.1f} ms")
    print(f"  all {n} Running after {span:.2f} s ({n/span:.1f} sessions/s)")
    print(f"  operator CPU: {op_cpu:.1f} s over {span:.1f} s wall ({op_cpu / n * 1000:.0f} ms per session start)")
    print(f"  operator RSS: idle {idle_rss/1024:.1f} MiB, after {n} sessions {rss/1024:.1f} MiB (peak {hwm/1024:.1f} MiB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    asyncio.run(main(parser.parse_args().sessions))
