"""Session start at scale on the API emulator: latency, API requests, CPU and memory per start.

    .venv/bin/python -m bench.session_start --sessions 50 200 1000

Runs `gridop operator` as a separate process against an in-memory Kubernetes API (kmock), creates
N GridSessions at once, plays the kubelet (binds and starts each pod the moment it appears, as
two writes like a real scheduler and kubelet) and prints, per N:

- creation -> pod created and creation -> Ready (p50/p99/max);
- API requests per session start, read from the operator's own `gridop_kube_requests_total`
  (reads = get + list, writes = create + patch + update + delete; Events are counted apart);
- operator CPU per session start and resident memory.

The emulator answers in microseconds, so the figures are the operator's own overhead (the
emulator is single-threaded Python and shares the 2 cores; its CPU is printed too).
On a real cluster add the scheduler, image pull and container start.
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
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridop.kube import ClusterAccess, KubeClient, resources  # noqa: E402
from gridop.kube.informer import Informer  # noqa: E402

NS = "bench"


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests(port: int) -> dict[tuple[str, str], float]:
    """The operator's API request counters: (verb, resource) -> count."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("gridop_kube_requests_total{"):
            labels, value = line[len("gridop_kube_requests_total{"):].split("} ")
            parts = dict(item.split("=", 1) for item in labels.split(","))
            counts[(parts["verb"].strip('"'), parts["resource"].strip('"'))] = float(value)
    return counts


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


async def main(sizes: list[int]) -> None:
    # Three processes, as in a cluster: the API (emulator), the operator, and this client.
    for n in sizes:
        api_port = free_port()
        server = (os.environ.get("BENCH_EMULATOR") or "-m tests.emulator").split()
        emulator = subprocess.Popen([sys.executable, *server, "--port", str(api_port)], cwd=ROOT,
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert emulator.stdout is not None
        emulator.stdout.readline()  # "emulator listening on ..."
        try:
            api_cpu = cpu_seconds(emulator.pid)
            await run(f"http://127.0.0.1:{api_port}", n)
            print(f"  API emulator CPU: {cpu_seconds(emulator.pid) - api_cpu:.1f} s")
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)


async def run(url: str, n: int) -> None:
    api = await KubeClient.connect(ClusterAccess(server=url, namespace=NS), user_agent="bench")
    await api.create(resources.NODES, {"metadata": {"name": "w1", "labels": {"gridop.io/resource-node": "true"}},
                                       "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    created: dict[str, float] = {}
    pod_seen: dict[str, float] = {}
    ready: dict[str, float] = {}
    all_ready = asyncio.Event()
    binds: asyncio.Queue[str] = asyncio.Queue()

    def on_pod(kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        if kind == "ADDED" and name not in pod_seen:
            pod_seen[name] = time.perf_counter()
            binds.put_nowait(name)

    def on_session(kind: str, gs: dict) -> None:
        name = gs["metadata"]["name"]
        conditions = (gs.get("status") or {}).get("conditions") or []
        if name not in ready and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready[name] = time.perf_counter()
            if len(ready) == n:
                all_ready.set()

    async def kubelet() -> None:  # the scheduler binds, then the kubelet reports Running + Ready
        while True:
            name = await binds.get()
            await api.patch(resources.PODS, name, {"spec": {"nodeName": "w1"}}, NS)
            await api.patch(resources.PODS, name, {"status": {
                "phase": "Running", "hostIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]}}, NS, subresource="status")

    pods = Informer(api, resources.PODS, [NS])
    sessions = Informer(api, resources.GRIDSESSIONS, [NS])
    pods.add_listener(on_pod)
    sessions.add_listener(on_session)
    await pods.start()
    await sessions.start()
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = pathlib.Path(tmp, "kubeconfig")
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": NS}}],
        }))
        port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "GRIDOP_OPERATOR_NAMESPACE": NS, "GRIDOP_METRICS_PORT": str(port),
               "GRIDOP_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "GRIDOP_LOG_FORMAT": "text"}
        proc = subprocess.Popen([sys.executable, "-m", "gridop", "operator"], env=env, stdin=subprocess.DEVNULL,
                                stderr=open(os.environ["BENCH_LOG"], "w") if os.environ.get("BENCH_LOG") else subprocess.DEVNULL)  # noqa: SIM115
        workers = [asyncio.create_task(kubelet()) for _ in range(4)]
        try:
            await asyncio.sleep(4)  # started, caches synced, signing keys created
            idle_rss, _ = rss_kib(proc.pid)
            before = requests(port)
            op_cpu = cpu_seconds(proc.pid)
            for i in range(n):
                name = f"s{i:04d}"
                created[name] = time.perf_counter()
                await api.create(resources.GRIDSESSIONS, {"metadata": {"name": name}, "spec": {
                    "user": "bench", "node": "w1", "config": {"airgen": {}, "grid": {}}}}, NS)
            await asyncio.wait_for(all_ready.wait(), timeout=600)
            await asyncio.sleep(2.5)  # let deferred writes and echoes settle, then count
            rss, hwm = rss_kib(proc.pid)
            op_cpu = cpu_seconds(proc.pid) - op_cpu
            used = delta(requests(port), before)
        finally:
            for w in workers:
                w.cancel()
            proc.terminate()
            proc.wait(timeout=30)
            await pods.stop()
            await sessions.stop()
            await api.close()

    to_pod = [pod_seen[k] - created[k] for k in created]
    to_ready = [ready[k] - created[k] for k in created]
    span = max(ready.values()) - min(created.values())
    reads = sum(v for (verb, _), v in used.items() if verb in ("get", "list"))
    events = sum(v for (_, res), v in used.items() if res == "events")
    writes = sum(v for (verb, res), v in used.items() if verb in ("create", "patch", "update", "delete") and res != "events")
    print(f"gridop session start on the API emulator: {n} sessions created at once")
    print(f"  creation -> pod created: p50 {statistics.median(to_pod)*1000:7.0f} ms   p99 {pct(to_pod, .99)*1000:7.0f} ms")
    print(f"  creation -> Ready      : p50 {statistics.median(to_ready)*1000:7.0f} ms   p99 {pct(to_ready, .99)*1000:7.0f} ms"
          f"   max {max(to_ready)*1000:7.0f} ms")
    print(f"  all {n} Ready after {span:.2f} s ({n/span:.0f} sessions/s)")
    print(f"  API requests per session start: {reads/n:.2f} reads, {writes/n:.2f} writes (+ {events/n:.2f} Events)")
    print("    by verb and resource: " + ", ".join(f"{verb} {res} {v/n:.2f}" for (verb, res), v in sorted(used.items())))
    print(f"  operator CPU: {op_cpu:.1f} s ({op_cpu / n * 1000:.1f} ms per session start)")
    print(f"  operator RSS: idle {idle_rss/1024:.0f} MiB, with {n} sessions {rss/1024:.0f} MiB (peak {hwm/1024:.0f} MiB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[50])
    asyncio.run(main(parser.parse_args().sessions))
