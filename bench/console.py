"""Console gateway benchmark: concurrent tail streams, memory per stream, added echo latency, fan-out.

    .venv/bin/python -m bench.console --streams 2000 --echoes 300 --monitors 100

One `gridop gateway` process (the real one, default options) in front of the API front of the
tests (kmock for objects; attach and logs served by real programs on real pseudo-terminals),
run in this process's thread. Prints:

* followed tail streams held at once, the gateway's RSS before/after and per stream, and the
  time for one console line to reach every stream;
* interact echo latency through the gateway vs straight to the upstream attach (the same
  pseudo-terminal echo), interleaved A B A B, min/median/p99/max and the median added;
* one session fanned out to N monitors: time until the last monitor sees a line.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridop.api import console as wire  # noqa: E402
from tests.console_env import ConsoleEnv, GatewayProcess  # noqa: E402

NS = "bench"
TOKEN = "bench-token"


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    import os

    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"min {ordered[0] * scale:.3f} / median {statistics.median(ordered) * scale:.3f} / "
            f"p99 {p99 * scale:.3f} / max {ordered[-1] * scale:.3f} {unit} (n={len(ordered)})")


async def tail_streams(env: ConsoleEnv, gateway: GatewayProcess, n: int) -> None:
    console = env.session(NS, "tails")
    assert console is not None
    before = rss_kib(gateway.proc.pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        headers = {"Authorization": f"Bearer {TOKEN}", wire.LINES_HEADER: "10", wire.FOLLOW_HEADER: "true"}
        started = time.perf_counter()
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        for batch in range(0, n, 100):
            sockets += await asyncio.gather(*(http.ws_connect(f"{gateway.url}/tail/{NS}/tails", headers=headers)
                                              for _ in range(min(100, n - batch))))
        opened = time.perf_counter() - started
        await asyncio.sleep(2)
        after = rss_kib(gateway.proc.pid)
        marker = f"fanout-{time.time_ns()}"

        async def wait_marker(ws: aiohttp.ClientWebSocketResponse) -> float:
            seen = ""
            while marker not in seen:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"stream closed: {msg.extra}")
                seen = seen[-len(marker):] + msg.data
            return time.perf_counter()

        waiters = [asyncio.create_task(wait_marker(ws)) for ws in sockets]
        await asyncio.sleep(0.5)
        cpu = cpu_seconds(gateway.proc.pid)
        sent = time.perf_counter()
        console.write(f"echo {marker}\r".encode())
        arrivals = await asyncio.wait_for(asyncio.gather(*waiters), 120)
        cpu = cpu_seconds(gateway.proc.pid) - cpu
        alive = sum(1 for ws in sockets if not ws.closed)
        for ws in sockets:
            await ws.close()
    per_stream = (after - before) / n
    print(f"tail -f streams: {n} opened in {opened:.1f}s, {alive} alive; gateway RSS {before / 1024:.1f} MiB -> "
          f"{after / 1024:.1f} MiB = {per_stream:.1f} KiB per stream; one line reached all {n} in "
          f"{(max(arrivals) - sent) * 1000:.0f} ms (median {(statistics.median(arrivals) - sent) * 1000:.0f} ms), "
          f"gateway CPU {cpu * 1e6 / n:.0f} µs per stream for that line (this client and the emulated API share a core with it)")


async def echo_latency(env: ConsoleEnv, gateway: GatewayProcess, rounds: int) -> None:
    # Two sessions, two terminals: each path sees only its own echoes. The terminal echoes each
    # keystroke at once (cat in canonical mode prints nothing until a newline).
    env.session(NS, "echo-direct", console=["/bin/cat"])
    env.session(NS, "echo", console=["/bin/cat"])
    async with aiohttp.ClientSession() as http:
        direct = await http.ws_connect(f"{env.front.url}/api/v1/namespaces/{NS}/pods/echo-direct/attach?stdin=true&stdout=true&tty=true",
                                       protocols=["v5.channel.k8s.io"])
        through = await http.ws_connect(f"{gateway.url}/interact/{NS}/echo", headers={"Authorization": f"Bearer {TOKEN}"},
                                        protocols=[wire.SUBPROTOCOL])

        async def one(ws: aiohttp.ClientWebSocketResponse, framed: bool) -> float:
            start = time.perf_counter()
            await ws.send_bytes(b"\x00a" if framed else b"a")
            while True:
                msg = await ws.receive()
                data = msg.data[1:] if framed else msg.data
                if msg.type == aiohttp.WSMsgType.BINARY and b"a" in data:
                    return time.perf_counter() - start

        for ws, framed in ((direct, True), (through, False)):  # warm up both paths
            for _ in range(20):
                await one(ws, framed)
        a, b = [], []
        for _ in range(rounds // 50):  # interleaved A B A B in blocks of 50
            a += [await one(direct, True) for _ in range(50)]
            b += [await one(through, False) for _ in range(50)]
        await direct.close()
        await through.close()
    print(f"echo direct to the upstream attach: {summary(a)}")
    print(f"echo through the gateway:          {summary(b)}")
    print(f"added by the gateway (median):     {(statistics.median(b) - statistics.median(a)) * 1000:.3f} ms")


async def fan_out(env: ConsoleEnv, gateway: GatewayProcess, monitors: int, lines: int) -> None:
    env.session(NS, "fan")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        writer = await http.ws_connect(f"{gateway.url}/interact/{NS}/fan", headers=headers, protocols=[wire.SUBPROTOCOL])
        watchers = await asyncio.gather(*(http.ws_connect(f"{gateway.url}/interact/{NS}/fan?mode=monitor", headers=headers,
                                                          protocols=[wire.SUBPROTOCOL]) for _ in range(monitors)))
        drain = asyncio.create_task(_drain(writer))
        latencies = []
        for i in range(lines):
            marker = f"mark-{i}-{time.time_ns()}"

            async def wait(ws: aiohttp.ClientWebSocketResponse, marker: str = marker) -> None:
                seen = ""
                while marker + "\r\n" not in seen:
                    msg = await ws.receive()
                    seen = seen[-200:] + msg.data.decode(errors="replace")

            waits = [asyncio.create_task(wait(ws)) for ws in watchers]
            start = time.perf_counter()
            await writer.send_bytes(f"echo {marker}\r".encode())
            await asyncio.wait_for(asyncio.gather(*waits), 30)
            latencies.append(time.perf_counter() - start)
        drain.cancel()
        for ws in (writer, *watchers):
            await ws.close()
    print(f"fan-out to {monitors} monitors, a line typed until the last monitor has it: {summary(latencies)}")


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--echoes", type=int, default=300)
    parser.add_argument("--monitors", type=int, default=100)
    parser.add_argument("--lines", type=int, default=20)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it
    env = ConsoleEnv().start()
    env.front.tokens[TOKEN] = {"username": "bench", "groups": []}
    env.front.allowed |= {("bench", verb, NS, "*") for verb in ("get", "create")}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gridop-bench-console-"))
    gateway = GatewayProcess(env.write_kubeconfig(tmp / "kubeconfig"), tmp / "gateway.log", watch_namespaces=[NS],
                             gateway_max_connections_per_user=args.streams + args.monitors + 10, log_level="WARNING")
    try:
        print(f"gridop gateway pid {gateway.proc.pid}, default options (but the per-user cap); RSS idle "
              f"{rss_kib(gateway.proc.pid) / 1024:.1f} MiB")
        asyncio.run(echo_latency(env, gateway, args.echoes))
        asyncio.run(fan_out(env, gateway, args.monitors, args.lines))
        asyncio.run(tail_streams(env, gateway, args.streams))
    finally:
        gateway.stop()
        env.stop()


if __name__ == "__main__":
    main()
