"""The operator's controllers at scale on the API emulator: N objects applied at once.

    .venv/bin/python -m bench.session_start --kind sessions --count 200 1000
    .venv/bin/python -m bench.session_start --kind batches --count 100 --baseline 3eab366
    .venv/bin/python -m bench.session_start --kind pools --count 100 --baseline 3eab366

Runs `gridop operator` as a separate process against an in-memory Kubernetes API (kmock), as in
a cluster: the API, the operator and this client are three processes sharing the machine.

- `sessions`: N GridSessions applied by 8 parallel appliers, this client playing the scheduler and
  kubelet (each new pod bound and reported Running + Ready, two writes). Beside it, the floor:
  the same objects a session makes (ConfigMap, Secret, Service, Pod) created directly by 8
  parallel appliers, the kubelet the same. Printed: all Ready after (s), gridop / floor, latency
  percentiles, API requests and operator CPU per session start.
- `batches` / `pools`: N TaskBatches (or TaskPools) applied at once, each sent 10 tasks that no
  worker runs (so every one stays Running), on a local redis-server. Printed: time until all show
  their workers, then over `--window` seconds of running: API reads and writes per object per
  minute, operator CPU per object per minute and per pass.

With `--baseline REVISION` the operator of that git revision runs the same rounds, interleaved
(A B A B), from the same harness. Each round uses a fresh emulator (and Redis database). The
emulator answers in microseconds: the figures are the operator's own costs, not a cluster's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.localredis import start_redis  # noqa: E402
from bench.rtt_floor import unpack  # noqa: E402
from gridop.kube import ClusterAccess, KubeClient, Resource, resources  # noqa: E402
from gridop.kube.informer import Informer  # noqa: E402

NS = "bench"
APPLIERS = 8


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


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The operator's Prometheus metrics: name -> labels -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = tuple(tuple(item.split("=", 1)) for item in labels.rstrip("}").split(",") if "=" in item)
        out.setdefault(name, {})[tuple((k, v.strip('"')) for k, v in pairs)] = float(value)  # type: ignore[misc]
    return out


def requests(metrics: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(verb, resource) -> count, from gridop_kube_requests_total."""
    return {(dict(k)["verb"], dict(k)["resource"]): v for k, v in metrics.get("gridop_kube_requests_total", {}).items()}


def passes(metrics: dict[str, Any], kind: str) -> float:
    return sum(v for k, v in metrics.get("gridop_reconcile_seconds_count", {}).items() if dict(k).get("kind") == kind)


def split(used: dict[tuple[str, str], float]) -> tuple[float, float]:
    reads = sum(v for (verb, _), v in used.items() if verb in ("get", "list"))
    writes = sum(v for (verb, res), v in used.items() if verb in ("create", "patch", "update", "delete") and res != "events")
    return reads, writes


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


async def stop(proc: subprocess.Popen[Any] | None, patience: float) -> None:
    """SIGTERM, then SIGKILL after `patience` seconds: never leave a process behind (it would hold
    the caller's output open, and a port)."""
    if proc is None:
        return
    proc.terminate()
    try:
        await asyncio.to_thread(proc.wait, patience)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)


def served_kinds(tree: pathlib.Path) -> dict[str, Resource]:
    """gridop's kinds at the storage version of `tree`'s CRDs (v1alpha1 before there was v1beta1)."""
    kinds = {}
    for path in (tree / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        version = next(v["name"] for v in crd["spec"]["versions"] if v["storage"])
        names = crd["spec"]["names"]
        kinds[names["plural"]] = Resource(crd["spec"]["group"], version, names["plural"], names["kind"])
    return kinds


class World:
    """A fresh emulator (and, for batches and pools, a Redis database), this client's API access,
    and the operator of one tree running against them."""

    def __init__(self, tree: pathlib.Path, redis_url: str | None):
        self.tree, self.redis_url = tree, redis_url

    async def __aenter__(self) -> World:
        self.api_port, self.port = free_port(), free_port()
        server = (os.environ.get("BENCH_EMULATOR") or "-m tests.emulator").split()
        # The API as the tree under test defines it: its own CRDs, its own storage versions.
        self.emulator = subprocess.Popen([sys.executable, *server, "--port", str(self.api_port), "--crds", str(self.tree / "crds")],
                                         cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.kinds = served_kinds(self.tree)
        assert self.emulator.stdout is not None
        self.emulator.stdout.readline()  # "emulator listening on ..."
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.api = await KubeClient.connect(ClusterAccess(server=self.url, namespace=NS), user_agent="bench")
        await self.api.create(resources.NODES, {"metadata": {"name": "w1", "labels": {"gridop.io/resource-node": "true"}},
                                                "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        self.binds: asyncio.Queue[str] = asyncio.Queue()
        self.kubelets = [asyncio.create_task(self._kubelet()) for _ in range(4)]
        self.tmp = tempfile.TemporaryDirectory()
        return self

    async def _kubelet(self) -> None:  # the scheduler binds, then the kubelet reports Running + Ready
        while True:
            name = await self.binds.get()
            await self.api.patch(resources.PODS, name, {"spec": {"nodeName": "w1"}}, NS)
            await self.api.patch(resources.PODS, name, {"status": {
                "phase": "Running", "hostIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]}}, NS, subresource="status")

    def start_operator(self) -> None:
        kubeconfig = pathlib.Path(self.tmp.name, "kubeconfig")
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": NS}}],
        }))
        env = {**os.environ, "PYTHONPATH": str(self.tree / "operator"), "KUBECONFIG": str(kubeconfig),
               # (GRIDOP_NAMESPACE for revisions that named the operator's namespace so)
               "GRIDOP_OPERATOR_NAMESPACE": NS, "GRIDOP_NAMESPACE": NS, "GRIDOP_METRICS_PORT": str(self.port),
               "GRIDOP_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "GRIDOP_LOG_FORMAT": "text"}
        if self.redis_url:
            env["GRIDOP_REDIS_URL"] = self.redis_url
        # Each operator its own webhook port: one still stopping cannot keep the next from serving.
        env["GRIDOP_WEBHOOK_PORT"] = str(free_port())
        log = open(os.environ["BENCH_LOG"], "a") if os.environ.get("BENCH_LOG") else subprocess.DEVNULL  # noqa: SIM115
        self.operator: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "gridop", "operator"], env=env, cwd=self.tmp.name, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log)

    def _ready_now(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    async def ready(self, timeout: float = 60.0) -> None:
        """Until the operator says it is ready (caches synced, signing keys there): /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.operator is not None
            if self.operator.poll() is not None:
                raise SystemExit(f"the operator exited ({self.operator.returncode}); set BENCH_LOG=FILE to see why")
            if await asyncio.to_thread(self._ready_now):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the operator was not ready within {timeout:.0f}s")
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        for task in self.kubelets:
            task.cancel()
        await stop(getattr(self, "operator", None), 30.0)
        await self.api.close()
        await stop(self.emulator, 10.0)
        self.tmp.cleanup()


async def watch(world: World, resource: Any, on_event: Callable[[str, dict[str, Any]], None]) -> Informer:
    informer = Informer(world.api, resource, [NS])
    informer.add_listener(on_event)
    await informer.start()
    await informer.synced.wait()
    return informer


async def apply_all(n: int, create: Callable[[int], Awaitable[None]]) -> None:
    """Objects 0..n-1 created by APPLIERS parallel appliers, as `kubectl apply` runs would."""
    async def applier(k: int) -> None:
        for i in range(k, n, APPLIERS):
            await create(i)

    await asyncio.gather(*(applier(k) for k in range(APPLIERS)))


# -- sessions ----------------------------------------------------------------------------------

async def sessions_round(tree: pathlib.Path | None, n: int) -> dict[str, Any]:
    """All Ready after (s) for gridop from `tree`, or for the floor (tree None)."""
    async with World(tree or ROOT, None) as world:
        created: dict[str, float] = {}
        ready: dict[str, float] = {}
        done = asyncio.Event()

        def on_pod(kind: str, pod: dict[str, Any]) -> None:
            name = pod["metadata"]["name"]
            if kind == "ADDED":
                world.binds.put_nowait(name)
            conditions = (pod.get("status") or {}).get("conditions") or []
            if tree is None and name not in ready and any(c.get("type") == "Ready" and c.get("status") == "True"
                                                          for c in conditions):
                ready[name] = time.perf_counter()
                if len(ready) == n:
                    done.set()

        def on_session(kind: str, gs: dict[str, Any]) -> None:
            name = gs["metadata"]["name"]
            conditions = (gs.get("status") or {}).get("conditions") or []
            if name not in ready and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                ready[name] = time.perf_counter()
                if len(ready) == n:
                    done.set()

        informers = [await watch(world, resources.PODS, on_pod)]
        if tree is not None:
            informers.append(await watch(world, world.kinds["gridsessions"], on_session))
            world.start_operator()
            await world.ready()  # started, caches synced, signing keys created
            before, cpu0 = scrape(world.port), cpu_seconds(world.operator.pid)  # type: ignore[union-attr]

        async def create_session(i: int) -> None:
            name = f"s{i:04d}"
            created[name] = time.perf_counter()
            await world.api.create(world.kinds["gridsessions"], {"metadata": {"name": name}, "spec": {
                "user": "bench", "node": "w1", "config": {"airgen": {}, "grid": {}}}}, NS)

        async def create_children(i: int) -> None:  # what one session makes, created directly
            name = f"s{i:04d}"
            created[name] = time.perf_counter()
            meta = {"name": name, "labels": {"bench": name}}
            await world.api.create(resources.CONFIGMAPS, {"metadata": meta, "data": {"session.json": "{}"}}, NS)
            await world.api.create(resources.SECRETS, {"metadata": {**meta, "name": f"{name}-token"},
                                                       "data": {"token": "eA=="}}, NS)
            await world.api.create(resources.SERVICES, {"metadata": meta, "spec": {
                "selector": {"bench": name}, "ports": [{"name": "http", "port": 8080}]}}, NS)
            await world.api.create(resources.PODS, {"metadata": meta, "spec": {
                "containers": [{"name": "session", "image": "busybox:1.36"}]}}, NS)

        await apply_all(n, create_session if tree is not None else create_children)
        await asyncio.wait_for(done.wait(), timeout=900)
        span = max(ready.values()) - min(created.values())
        result: dict[str, Any] = {"span": span, "ready": [ready[k] - created[k] for k in created]}
        if tree is not None:
            await asyncio.sleep(2.5)  # deferred writes and echoes settle, then count
            after = scrape(world.port)
            result["requests"] = delta(requests(after), requests(before))
            result["cpu"] = cpu_seconds(world.operator.pid) - cpu0  # type: ignore[union-attr]
        for informer in informers:
            await informer.stop()
        return result


def report_sessions(n: int, results: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> None:
    print(f"\n{n} GridSessions applied by {APPLIERS} appliers ({len(results['floor'])} rounds, interleaved)")
    print(f"  {'':40}{'all Ready after (s): min / median / max':>42}{'x floor (median)':>18}")
    floor = statistics.median(r["span"] for r in results["floor"])
    for key, rounds in results.items():
        spans = sorted(r["span"] for r in rounds)
        print(f"  {labels[key]:40}{spans[0]:>18.2f} / {statistics.median(spans):.2f} / {spans[-1]:.2f}"
              f"{statistics.median(spans) / floor:>18.2f}")
    for key, rounds in results.items():
        if key == "floor":
            continue
        last = rounds[-1]
        reads, writes = split(last["requests"])
        ready = last["ready"]
        print(f"  {labels[key]}: creation -> Ready p50 {statistics.median(ready)*1000:.0f} ms, p99 "
              f"{pct(ready, .99)*1000:.0f} ms; per start {reads/n:.2f} reads, {writes/n:.2f} writes, "
              f"{last['cpu'] / n * 1000:.1f} ms operator CPU")


# -- batches and pools -------------------------------------------------------------------------

async def objects_round(kind: str, tree: pathlib.Path, n: int, redis_url: str, window: float) -> dict[str, Any]:
    from gridop.client.tasks import AsyncGridConnector

    async with World(tree, redis_url) as world:
        resource = world.kinds["taskbatches" if kind == "batches" else "taskpools"]
        serving: set[str] = set()
        done = asyncio.Event()

        def on_object(event: str, obj: dict[str, Any]) -> None:
            st = obj.get("status") or {}
            # Serving: workers asked for, and the object's status shows its 10 tasks.
            if st.get("workers") and (st.get("counts") or {}).get("total") == 10:
                serving.add(obj["metadata"]["name"])
                if len(serving) == n:
                    done.set()

        informer = await watch(world, resource, on_object)
        world.start_operator()
        await world.ready()
        started = time.perf_counter()

        async def create(i: int) -> None:
            spec: dict[str, Any] = {"handler": "bench.handlers:zero", "workers": {"max": 4, "tasksPerWorker": 10}}
            await world.api.create(resource, {"apiVersion": resource.api_version, "kind": resource.kind,
                                              "metadata": {"name": f"o{i:04d}"}, "spec": spec}, NS)

        await apply_all(n, create)
        config = {"redis_url": redis_url, "namespace": NS}
        async with AsyncGridConnector(config) as client:
            for i in range(n):
                if kind == "batches":
                    await client.send([{"n": k} for k in range(10)], session_id=f"o{i:04d}")
                else:
                    async with AsyncGridConnector({**config, "pool": f"o{i:04d}"}) as pooled:
                        await pooled.send([{"n": k} for k in range(10)])
        await asyncio.wait_for(done.wait(), timeout=600)
        to_serving = time.perf_counter() - started  # (tasks are sent after the last object is applied)
        await asyncio.sleep(min(3.0, window))  # settle
        assert world.operator is not None
        before, cpu0 = scrape(world.port), cpu_seconds(world.operator.pid)
        await asyncio.sleep(window)
        after, cpu1 = scrape(world.port), cpu_seconds(world.operator.pid)
        await informer.stop()
        used = delta(requests(after), requests(before))
        label = "TaskBatch" if kind == "batches" else "TaskPool"
        return {"serving": to_serving, "requests": used, "cpu": cpu1 - cpu0,
                "passes": passes(after, label) - passes(before, label)}


def report_objects(kind: str, n: int, window: float, results: dict[str, list[dict[str, Any]]],
                   labels: dict[str, str]) -> None:
    what = "TaskBatches" if kind == "batches" else "TaskPools"
    print(f"\n{n} {what} applied at once, 10 tasks each, no workers running them ({len(results['gridop'])} rounds, "
          f"interleaved; then {window:.0f} s of running)")
    print(f"  {'':34}{'all serving (s)':>18}{'reads/obj/min':>15}{'writes/obj/min':>16}{'CPU ms/obj/min':>16}"
          f"{'CPU ms/pass':>13}")
    per_min = 60.0 / window / n
    for key, rounds in results.items():
        for r in rounds:
            reads, writes = split(r["requests"])
            cpu_pass = f"{r['cpu'] / r['passes'] * 1000:.2f}" if r["passes"] else "-"
            print(f"  {labels[key]:34}{r['serving']:>18.2f}{reads * per_min:>15.2f}{writes * per_min:>16.2f}"
                  f"{r['cpu'] * 1000 * per_min:>16.1f}{cpu_pass:>13}")
            if r["requests"]:
                print("      per object per minute: " + ", ".join(
                    f"{verb} {res} {v * per_min:.2f}" for (verb, res), v in sorted(r["requests"].items())))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"gridop": ROOT}
        labels = {"floor": "floor (the children, created directly)", "gridop": "gridop"}
        if args.baseline:
            trees["baseline"] = unpack(args.baseline, pathlib.Path(tmp))
            labels["baseline"] = f"gridop at {args.baseline}"
        redis_proc = None
        if args.kind != "sessions":
            port = free_port()
            redis_proc = start_redis(port, tmp)
        try:
            for n in args.count:
                results: dict[str, list[dict[str, Any]]] = {}
                for r in range(args.rounds):
                    if args.kind == "sessions":
                        results.setdefault("floor", []).append(await sessions_round(None, n))
                    for key, tree in trees.items():
                        if args.kind == "sessions":
                            results.setdefault(key, []).append(await sessions_round(tree, n))
                        else:
                            url = f"redis://127.0.0.1:{port}/{r % 8}"
                            redis.Redis.from_url(url).flushdb()
                            results.setdefault(key, []).append(
                                await objects_round(args.kind, tree, n, url, args.window))
                if args.kind == "sessions":
                    report_sessions(n, results, labels)
                else:
                    report_objects(args.kind, n, args.window, results, labels)
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    redis_proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["sessions", "batches", "pools"], default="sessions")
    parser.add_argument("--count", "--sessions", type=int, nargs="+", default=[50], help="objects applied at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each (interleaved)")
    parser.add_argument("--window", type=float, default=30.0, help="batches/pools: seconds of running measured")
    parser.add_argument("--baseline", metavar="REVISION", help="also run gridop at this git revision (interleaved)")
    asyncio.run(main(parser.parse_args()))
