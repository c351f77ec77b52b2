"""Where a single-task round trip's time goes: gridop next to two floors measured on the same
machine, interleaved (A B C A B C ...) so the machine's drift hits each alike.

    .venv/bin/python -m bench.rtt_floor --round-trips 1000 --rounds 3

- redis: the same four hops through one redis-server (client -> Redis -> worker -> Redis ->
  client) with trivial commands (LPUSH and BLPOP), driven by bare asyncio protocols with hiredis:
  what any round trip brokered by Redis costs on this machine.
- scripts: the data plane's own hops and Lua scripts -- APPEND hands the task to the idle worker,
  COMPLETE records its result and emits the event, the client reads it from the stream -- still
  driven by bare protocol code, with no gridop Python in the loop: the floor of gridop's design here.
- gridop: AsyncGridConnector.send() then get_results(), 2 `gridop worker` processes with default
  options, as bench.tasks measures it (the client in a process of its own).
- with --baseline REVISION: the same for gridop as it was at that git revision (unpacked from this
  checkout's history, run by this harness), interleaved with the rest. The ratio of each round's
  pair says how much faster the round trip got, whatever the machine's speed that day:

    .venv/bin/python -m bench.rtt_floor --round-trips 1000 --rounds 5 --baseline 86efa6c

  (86efa6c: the data plane as it was when the work on its speed began.)

The floors run one worker process (gridop's second worker is idle and waits in Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hiredis

from bench.localredis import free_port, start_redis
from bench.tasks import ROOT, cpu_seconds, gridop_workers, pct, run_loop, stop, tree_env

WARM_UP = 50  # round trips before the timed ones (connections made, workers waiting)


class Bare(asyncio.Protocol):
    """A Redis connection and nothing more: commands out, replies matched in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.popleft().set_result(reply)

    def call(self, *args: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(hiredis.pack_command(args))
        return future


async def bare(port: int) -> Bare:
    _, conn = await asyncio.get_running_loop().create_connection(Bare, "127.0.0.1", port)
    return conn


async def timing(n: int, round_trip: Callable[[int], Awaitable[None]]) -> AsyncIterator[list[float] | None]:
    """Run WARM_UP round trips, yield None (the timed ones start: CPU counters are read), run n
    timed ones and yield their durations."""
    samples: list[float] = []
    for k in range(WARM_UP + n):
        if k == WARM_UP:
            samples.clear()
            yield None
        t0 = time.perf_counter()
        await round_trip(k)
        samples.append(time.perf_counter() - t0)
    yield samples


# -- redis: four trivial hops ----------------------------------------------------------------

async def redis_worker(port: int) -> None:
    take, give = await bare(port), await bare(port)
    while True:
        _, item = await take.call("BLPOP", "floor:q", 0)
        await give.call("LPUSH", "floor:r", item)


async def redis_client(port: int, n: int) -> AsyncIterator[list[float] | None]:
    send, wait = await bare(port), await bare(port)

    async def round_trip(_: int) -> None:
        await send.call("LPUSH", "floor:q", "{}")
        await wait.call("BLPOP", "floor:r", 0)

    async for timed in timing(n, round_trip):
        yield timed


# -- scripts: the data plane's hops, no gridop Python ----------------------------------------

SID = "floor"


def _script_keys() -> tuple[list[str], dict[str, str]]:
    """The batch's keys, as gridop's store names them, and the scripts' SHA1s (once, before timing)."""
    import hashlib

    import redis.asyncio as aioredis

    from gridop.tasks import scripts
    from gridop.tasks.store import TaskStore

    keys = TaskStore(aioredis.Redis()).keys(SID)  # no connection is made: only the names
    shas = {name: hashlib.sha1(getattr(scripts, name).encode()).hexdigest() for name in ("APPEND", "COMPLETE", "CLAIM")}
    return keys, shas


def _claim_of(reply: list[Any]) -> tuple[bytes, list[int]]:
    claim, runs = reply[0], int(reply[2])
    indices: list[int] = []
    for run in reply[3:3 + runs]:
        lo, hi = run.split(b":")[:2]
        indices.extend(range(int(lo), int(hi) + 1))
    return claim, indices


async def script_worker(port: int) -> None:
    """What `gridop worker` does for a hand-off, minus everything else."""
    keys, shas = _script_keys()
    take, talk = await bare(port), await bare(port)
    me = f"bare-{os.getpid()}"
    register = True
    while True:
        if register:
            await talk.call("RPUSH", keys[15], f"{me}|30|{time.time() + 3600}")
        got = await take.call("BLPOP", keys[16], keys[14], 5)
        if got is not None and got[0].endswith(b":hand"):
            claim, _, run, _ = got[1].split(b"\n", 3)
            work: tuple[bytes, list[int]] | None = (claim, [int(run.split(b":")[0])])
        else:
            now = time.time()
            reply = await talk.call("EVALSHA", shas["CLAIM"], len(keys), *keys, 1024, now, now + 30, me)
            work = _claim_of(reply) if reply else None
            register = work is None
            if work is None:
                continue
        while work is not None:
            started, outcome = time.time(), []
            for i in work[1]:
                outcome += [i, started, b"e30="]  # the encoded result of the zero-work task: {}
            reply = await talk.call("EVALSHA", shas["COMPLETE"], len(keys), *keys, time.time(), 1024, me, 30, 6,
                                    work[0], len(work[1]), *outcome)
            work = _claim_of(reply[3:]) if len(reply) > 3 else None
            register = False  # COMPLETE registered it idle when it found nothing more


async def script_client(port: int, n: int) -> AsyncIterator[list[float] | None]:
    keys, shas = _script_keys()
    conn = await bare(port)
    call = uuid.uuid4().hex

    async def round_trip(k: int) -> None:
        first, position = await conn.call("EVALSHA", shas["APPEND"], len(keys), *keys, time.time(), f"{call}:{k}",
                                          b"e30=")
        wanted, done = str(first).encode(), False
        while not done:
            streams = await conn.call("XREAD", "COUNT", 100, "BLOCK", 1000, "STREAMS", keys[13], position)
            for position, fields in (streams or [[None, []]])[0][1]:  # noqa: B007  (the next XREAD resumes there)
                entry = dict(zip(fields[::2], fields[1::2], strict=False))
                done = done or wanted in entry.get(b"f", b"").split(b",")

    async for timed in timing(n, round_trip):
        yield timed


async def declare_batch(url: str) -> None:
    from gridop.tasks import scripts
    from gridop.tasks.codec import encode
    from gridop.tasks.store import Outcome, RetryPolicy, TaskStore

    store = TaskStore.from_url(url)
    try:
        await store.create(SID, [encode({})], RetryPolicy())
        await store.submit(SID, [encode({})])
        [task] = await store.claim(SID, "setup", 1, 30)
        await store.complete(SID, [Outcome(task.index, task.token, "ok", encode({}))])
        for name in ("APPEND", "COMPLETE", "CLAIM"):
            await store.redis.script_load(getattr(scripts, name))
    finally:
        await store.close()


# -- gridop ------------------------------------------------------------------------------------

async def gridop_client(url: str, n: int, sid: str) -> AsyncIterator[list[float] | None]:
    from gridop.client.tasks import AsyncGridConnector

    async with AsyncGridConnector({"redis_url": url}) as c:

        async def round_trip(_: int) -> None:
            await c.get_results(await c.send([{}], session_id=sid, append=True), timeout_sec=10)

        async for timed in timing(n, round_trip):
            yield timed


def client_child(tree: str, url: str, n: int, sid: str, pids: list[int]) -> None:
    """The gridop client of one round, in a process of its own that imports gridop from `tree`:
    prints its samples and the CPU µs per round trip of the processes `pids` and itself."""
    import gridop

    if not pathlib.Path(gridop.__file__).resolve().is_relative_to(pathlib.Path(tree).resolve()):
        raise SystemExit(f"bench.rtt_floor: the client imported gridop from {gridop.__file__}, not from {tree}")

    async def measured() -> dict[str, list[float]]:
        before: list[float] = []
        async for phase in gridop_client(url, n, sid):
            if phase is None:  # warmed up: the timed round trips start
                before = [*(cpu_seconds(pid) for pid in pids), time.process_time()]
            else:
                after = [*(cpu_seconds(pid) for pid in pids), time.process_time()]
                return {"samples": phase, "cpu": [(b - a) / len(phase) * 1e6 for a, b in zip(before, after, strict=False)]}
        raise AssertionError("timing() ends with the samples")

    print(json.dumps(run_loop()(measured())))


def child(kind: str, port: int) -> None:
    run_loop()(redis_worker(port) if kind == "redis" else script_worker(port))


def gridop_round(tree: pathlib.Path, port: int, redis_pid: int, n: int, sid: str) -> tuple[list[float], list[float]]:
    """A round of gridop from `tree`: its 2 workers, and its client in a process of its own (this
    checkout's harness, the tree's gridop), so a baseline revision runs exactly as this one does."""
    url = f"redis://127.0.0.1:{port}/0"
    procs = gridop_workers(url, "--session", sid, "--keep-running", tree=tree)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.rtt_floor", "--client", str(tree), url, str(n), sid,
                              str(redis_pid), *(str(p.pid) for p in procs)],
                             cwd=ROOT, env=tree_env(tree, bench=ROOT), capture_output=True, text=True, check=False)
    finally:
        stop(procs)
    if out.returncode:
        raise SystemExit(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"client exit {out.returncode}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    redis_cpu, *worker_cpu, client_cpu = got["cpu"]
    return got["samples"], [redis_cpu, sum(worker_cpu), client_cpu]


def one_round(kind: str, port: int, redis_pid: int, n: int, run: int,
              trees: dict[str, pathlib.Path]) -> tuple[list[float], list[float]]:
    """Round-trip times, and CPU µs per round trip spent by Redis, the worker(s) and the client."""
    if kind in trees:
        return gridop_round(trees[kind], port, redis_pid, n, f"rtt-{kind}-{run}")
    procs = [subprocess.Popen([sys.executable, "-m", "bench.rtt_floor", "--child", kind, str(port)], cwd=ROOT,
                              env=tree_env(), stdin=subprocess.DEVNULL)]
    time.sleep(0.5)  # connected and waiting
    timed = (redis_client if kind == "redis" else script_client)(port, n)

    async def measured() -> tuple[list[float], list[float]]:
        samples: list[float] = []
        cpu: list[float] = []
        async for phase in timed:
            if phase is None:  # warmed up: the timed round trips start
                cpu = [cpu_seconds(redis_pid), sum(cpu_seconds(p.pid) for p in procs), time.process_time()]
            else:
                samples = phase
        after = [cpu_seconds(redis_pid), sum(cpu_seconds(p.pid) for p in procs), time.process_time()]
        return samples, [(b - a) / len(samples) * 1e6 for a, b in zip(cpu, after, strict=False)]

    try:
        return run_loop()(measured())
    finally:
        stop(procs)


def unpack(revision: str, into: pathlib.Path) -> pathlib.Path:
    """This repository's tree at `revision`, written under `into` (git archive: no worktree to clean up)."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision], capture_output=True,
                             check=True).stdout
    except FileNotFoundError:
        raise SystemExit("bench.rtt_floor: --baseline needs git on PATH; run without --baseline") from None
    except subprocess.CalledProcessError as e:
        why = e.stderr.decode(errors="replace").strip().splitlines()[-1] if e.stderr.strip() else "git archive failed"
        raise SystemExit(f"bench.rtt_floor: --baseline {revision}: {why} (give a revision of this git checkout)") from None
    tree = into / "baseline"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(tree, filter="data")
    if not (tree / "operator" / "gridop").is_dir():
        raise SystemExit(f"bench.rtt_floor: --baseline {revision} has no operator/gridop to run")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=1000, help="timed round trips per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="REVISION",
                        help="also run gridop as it was at this git revision (same harness, interleaved)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if args.client:
        tree, url, n, sid, *pids = args.client
        client_child(tree, url, int(n), sid, [int(pid) for pid in pids])
        return
    kinds = {"redis": "redis, 4 trivial hops (bare)", "scripts": "gridop's scripts and hops (bare)",
             "gridop": "gridop client + 2 workers"}
    p50s: dict[str, list[float]] = {}
    p99s: dict[str, list[float]] = {}
    cpus: dict[str, list[list[float]]] = {}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"gridop": ROOT}
        if args.baseline:
            trees["baseline"] = unpack(args.baseline, pathlib.Path(tmp))
            kinds["baseline"] = f"gridop at {args.baseline}"
        redis_proc = start_redis(port, tmp)
        try:
            run_loop()(declare_batch(f"redis://127.0.0.1:{port}/0"))
            for run in range(args.rounds):
                for kind in kinds:
                    samples, cpu = one_round(kind, port, redis_proc.pid, args.round_trips, run, trees)
                    cpus.setdefault(kind, []).append(cpu)
                    p50s.setdefault(kind, []).append(statistics.median(samples) * 1000)
                    p99s.setdefault(kind, []).append(pct(samples, 0.99) * 1000)
        finally:
            stop([redis_proc])
    print(f"Single-task round trip, {args.round_trips:,} per round, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} cores (ms)")
    print(f"{'':36}{'p50 min / median / max':>26}{'p99 median':>12}   CPU µs per round trip, median: "
          "Redis / worker(s) / client")
    for kind, label in kinds.items():
        v = sorted(p50s[kind])
        cpu = " / ".join(f"{statistics.median(part):.0f}" for part in zip(*cpus[kind], strict=False))
        print(f"{label:36}{v[0]:>10.3f} / {statistics.median(v):.3f} / {v[-1]:.3f}{statistics.median(p99s[kind]):>12.3f}"
              f"   {cpu}")
    if args.baseline:
        # Each round's pair ran back to back, so its ratio is what the machine's drift leaves alone.
        ratios = sorted(a / b for a, b in zip(p50s["gridop"], p50s["baseline"], strict=False))
        print(f"gridop / gridop at {args.baseline}, p50 of each round: min / median / max "
              f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
