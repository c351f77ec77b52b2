"""The console gateway, for real: the `gridop gateway` process, real websocket clients, and a
Kubernetes side whose consoles are real programs on real pseudo-terminals (tests/console_upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pathlib
import signal
import socket
import time
from collections.abc import Iterator

import aiohttp
import pytest

from gridop.api import console as wire
from gridop.client.console import ConsoleClient, ConsoleError
from gridop.kube import resources
from tests.console_env import ConsoleEnv, GatewayProcess, bearer
from tests.waiting import eventually

NS = "grid"
OTHER_NS = "lab"


@pytest.fixture(scope="module")
def env() -> Iterator[ConsoleEnv]:
    env = ConsoleEnv().start()
    front = env.front
    front.tokens.update({
        "alice-k8s": {"username": "alice", "uid": "u-alice", "groups": ["devs", "system:authenticated"]},
        "bob-k8s": {"username": "bob", "uid": "u-bob", "groups": ["system:authenticated"]},
        "eve-k8s": {"username": "eve", "uid": "u-eve", "groups": ["system:authenticated"]},
        "many-k8s": {"username": "many", "uid": "u-many", "groups": []},
    })
    front.allowed.update({
        ("alice", "create", NS, "*"), ("alice", "get", NS, "*"),
        ("bob", "get", NS, "*"),  # bob may watch (monitor, tail) but not type
        ("many", "get", NS, "*"),
    })
    yield env
    env.stop()


@pytest.fixture(scope="module")
def gateway(env: ConsoleEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gateway")
    proc = GatewayProcess(
        env.write_kubeconfig(tmp / "kubeconfig"), tmp / "gateway.log",
        watch_namespaces=[NS, OTHER_NS], gateway_default_namespace=NS,
        gateway_buffer_bytes=64 * 1024, gateway_max_connections_per_user=4,
        gateway_allowed_origins=["https://console.example"], gateway_activity_interval_seconds=1,
        gateway_recording_dir=str(tmp / "recordings"),
    )
    yield proc
    assert proc.stop() == 0, "the gateway did not exit cleanly on SIGTERM"


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as session:
        yield session


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: str, timeout: float = 10) -> str:
    """Console output (text or binary frames) until `needle` shows up (linear in the output)."""
    chunks: list[str] = []
    window = ""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                text = msg.data.decode(errors="replace")
            elif msg.type == aiohttp.WSMsgType.TEXT:
                text = msg.data
            else:
                raise AssertionError(f"stream ended ({msg.type}, {ws.close_code} {msg.extra!r}) before {needle!r}; "
                                     f"last output: {window[-200:]!r}")
            chunks.append(text)
            window = window[-len(needle):] + text
            if needle in window:
                return "".join(chunks)


async def refused(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """Status and JSON body of a refused upgrade (it must be a real HTTP answer, not a websocket close)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url, headers=headers or {})
    status = info.value.status
    # aiohttp drops the body of a refused upgrade; ask again as a plain upgrade request to read it.
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **(headers or {})}
    async with http.get(url.replace("ws://", "http://"), headers=upgrade) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"].startswith("application/json")
        return status, await resp.json()


# -- tail ----------------------------------------------------------------------------------------------


async def test_tail_sends_the_last_lines_then_follows(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    console = env.session(NS, "tailme")
    assert console is not None
    console.write(b"for i in 1 2 3 4 5; do echo line-$i; done\r")
    await eventually(lambda: b"line-5\r\n" in console.log, what="the console printed its lines")
    headers = {**bearer("alice-k8s"), wire.LINES_HEADER: "3", wire.FOLLOW_HEADER: "true"}
    async with http.ws_connect(f"{gateway.url}/tail/{NS}/tailme", headers=headers) as ws:
        first = await read_until(ws, "$ ")
        assert "line-5" in first and "line-4" in first and "line-1" not in first
        console.write(b"echo later\r")
        assert "later" in await read_until(ws, "later\r\n")


async def test_a_followed_tail_of_a_quiet_console_opens_at_once(
    env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession,
) -> None:
    """`-n 0 -f`: the API server sends nothing, not even headers, until the console prints. The
    websocket opens within a moment anyway, and the first line printed arrives on it."""
    console = env.session(NS, "quiet")
    assert console is not None
    headers = {**bearer("alice-k8s"), wire.LINES_HEADER: "0", wire.FOLLOW_HEADER: "true"}
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with http.ws_connect(f"{gateway.url}/tail/{NS}/quiet", headers=headers) as ws:
        assert loop.time() - began < 3, "the upgrade waited for the log's first byte"
        await asyncio.sleep(0.3)
        console.write(b"echo first-words\r")
        assert "first-words" in await read_until(ws, "first-words\r\n")


async def test_tail_without_follow_ends_with_a_normal_close(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    console = env.session(NS, "tailonce")
    assert console is not None
    console.write(b"echo hello-once\r")
    await eventually(lambda: b"hello-once\r\n" in console.log)
    async with http.ws_connect(f"{gateway.url}/tail/tailonce", headers={**bearer("alice-k8s"), wire.LINES_HEADER: "100"}) as ws:
        text = await read_until(ws, "hello-once")
        msg = await ws.receive(timeout=10)
        while msg.type == aiohttp.WSMsgType.TEXT:
            text += msg.data
            msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == wire.CLOSE_NORMAL
        assert msg.extra == "end of log"


# -- interact -------------------------------------------------------------------------------------------


async def test_interact_round_trip_with_resize(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "shell")
    async with http.ws_connect(f"{gateway.url}/interact/{NS}/shell", headers=bearer("alice-k8s"),
                               protocols=[wire.SUBPROTOCOL]) as ws:
        assert ws.protocol == wire.SUBPROTOCOL
        await ws.send_str(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
        for ch in "stty size\r":  # keystrokes one at a time, as a terminal sends them
            await ws.send_bytes(ch.encode())
        assert "43 132" in await read_until(ws, "43 132")
        await ws.send_bytes(b"exit 3\r")
        msg = await ws.receive(timeout=10)
        while msg.type == aiohttp.WSMsgType.BINARY:
            msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == wire.CLOSE_NORMAL and msg.extra == "console exited with code 3"


async def test_monitor_sees_output_and_its_input_is_refused(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    console = env.session(NS, "watched")
    assert console is not None
    async with http.ws_connect(f"{gateway.url}/interact/{NS}/watched", headers=bearer("alice-k8s"), protocols=[wire.SUBPROTOCOL]) as writer, \
            http.ws_connect(f"{gateway.url}/interact/{NS}/watched?mode=monitor", headers=bearer("bob-k8s"), protocols=[wire.SUBPROTOCOL]) as monitor:
        await monitor.send_bytes(b"echo from-monitor\r")
        notice = await monitor.receive(timeout=10)
        assert notice.type == aiohttp.WSMsgType.TEXT
        assert json.loads(notice.data) == {"type": "notice", "message": "monitor mode: input is not forwarded to the console"}
        await writer.send_bytes(b"echo from-writer\r")
        assert "from-writer" in await read_until(monitor, "from-writer\r\n")
        await asyncio.sleep(0.3)
        assert b"from-monitor" not in console.log, "a monitor's keystrokes reached the console"
    assert env.front.attaches >= 1


async def test_a_second_writer_is_refused_and_may_monitor(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "busy")
    url = f"{gateway.url}/interact/{NS}/busy"
    async with http.ws_connect(url, headers=bearer("alice-k8s")):
        status, body = await refused(http, url, bearer("alice-k8s"))
        assert status == 409
        assert body == {"message": "session 'busy' already has a writer (alice); connect with ?mode=monitor to watch"}
        async with http.ws_connect(url + "?mode=monitor", headers=bearer("alice-k8s")) as monitor:
            assert not monitor.closed
    # The writer left: the next one gets in.
    await eventually(lambda: _try_connect(http, url), what="a new writer is accepted after the first left")


async def _try_connect(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        ws = await http.ws_connect(url, headers=bearer("alice-k8s"))
    except aiohttp.WSServerHandshakeError:
        return False
    await ws.close()
    return True


async def test_seed_framing_text_in_text_out(env: ConsoleEnv, gateway: GatewayProcess) -> None:
    """The Cray console client, as its reference code is written: `websockets`, no subprotocol,
    text frames, each typed line sent without its newline (`aioconsole.ainput`), Enter alone as an
    empty frame."""
    import websockets

    env.session(NS, "seedling")
    headers = {"Authorization": "Bearer alice-k8s", wire.TENANT_HEADER: ""}
    async with websockets.connect(f"{gateway.url}/interact/seedling", additional_headers=headers) as websocket:
        await websocket.send("echo seed-$((6*7))")
        await websocket.send("")
        seen = ""
        async with asyncio.timeout(10):
            while "seed-42\r\n" not in seen or seen.count("$ ") < 2:
                message = await websocket.recv()
                assert isinstance(message, str), "seed clients get text frames"
                seen += message


async def test_seed_client_reads_the_error_message(env: ConsoleEnv, gateway: GatewayProcess) -> None:
    import websockets

    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(f"{gateway.url}/interact/nosuch", additional_headers={"Authorization": "Bearer alice-k8s"}):
            pass
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body.decode("utf-8")) == {"message": "session 'nosuch' not found in namespace 'grid'"}


async def test_addressing_by_node_name(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "on-x1000c0s0b0n0", node="x1000c0s0b0n0")
    async with http.ws_connect(f"{gateway.url}/interact/x1000c0s0b0n0", headers=bearer("alice-k8s")) as ws:
        await ws.send_str("echo node-$((1+1))\r")
        assert "node-2" in await read_until(ws, "node-2")


async def test_session_token_opens_its_own_session_only(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "mine", user="carol", tenant="acme")
    env.session(NS, "theirs", user="carol", tenant="acme")
    token = env.session_token(NS, "mine", user="carol", tenant="acme")
    headers = {**bearer(token), wire.TENANT_HEADER: "acme"}
    async with http.ws_connect(f"{gateway.url}/interact/{NS}/mine", headers=headers) as ws:
        await ws.send_str("echo jwt-ok\r")
        await read_until(ws, "jwt-ok\r\n")
    status, body = await refused(http, f"{gateway.url}/interact/{NS}/theirs", headers)
    assert (status, body) == (403, {"message": f"this session token is for session {NS}/mine, not {NS}/theirs"})


async def test_browser_token_in_subprotocol_and_origin_check(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "browser")
    url = f"{gateway.url}/interact/{NS}/browser"
    protocols = [wire.SUBPROTOCOL, wire.bearer_protocol("alice-k8s")]
    async with http.ws_connect(url, protocols=protocols, headers={"Origin": "https://console.example"}) as ws:
        assert ws.protocol == wire.SUBPROTOCOL, "the token protocol is never echoed back"
        await ws.send_bytes(b"echo browser-ok\r")
        await read_until(ws, "browser-ok\r\n")
    status, body = await refused(http, url, {"Origin": "https://evil.example", "Sec-WebSocket-Protocol": ", ".join(protocols)})
    assert status == 403 and body["message"].startswith("origin 'https://evil.example' is not allowed")


async def test_every_refusal_is_an_http_status_with_a_json_message(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "guarded", tenant="acme")
    env.session(NS, "starting", phase="Starting", pod=None)
    base = f"{gateway.url}"
    cases = [
        (f"{base}/interact/{NS}/guarded", {}, 401, "missing bearer token"),
        (f"{base}/interact/{NS}/guarded", bearer("garbage"), 401, "invalid token: invalid bearer token"),
        (f"{base}/interact/{NS}/guarded", {"Authorization": "Basic YWxpY2U6cHc="}, 401, "missing bearer token"),
        (f"{base}/tail/{NS}/guarded", {**bearer("alice-k8s"), wire.LINES_HEADER: "ten"}, 400, "header Cray-Console-Lines: 'ten' is not a non-negative integer"),
        (f"{base}/tail/{NS}/guarded", {**bearer("alice-k8s"), wire.LINES_HEADER: "-1"}, 400, "header Cray-Console-Lines: '-1' is not a non-negative integer"),
        (f"{base}/tail/{NS}/guarded", {**bearer("alice-k8s"), wire.FOLLOW_HEADER: "maybe"}, 400, "header Cray-Console-Follow: 'maybe' is not a boolean"),
        (f"{base}/interact/{NS}/guarded?mode=admin", bearer("alice-k8s"), 400, "query mode='admin' is not one of interactive, monitor"),
        (f"{base}/interact/{NS}/Bad_Name", bearer("alice-k8s"), 400, "session 'Bad_Name' in the path is not a valid session name"),
        (f"{base}/interact/{NS}/guarded", bearer("eve-k8s"), 403, "user 'eve' may not create gridsessions/console 'guarded'"),
        (f"{base}/interact/{NS}/no-such-session", bearer("eve-k8s"), 403, "user 'eve' may not create"),  # 403 before 404
        (f"{base}/interact/{NS}/guarded", bearer("bob-k8s"), 403, "user 'bob' may not create"),  # monitor-only user typing
        (f"{base}/interact/{NS}/guarded", bearer("alice-k8s"), 403, "session 'guarded' belongs to a tenant: send the Cray-Tenant-Name header"),
        (f"{base}/interact/{NS}/guarded", {**bearer("alice-k8s"), wire.TENANT_HEADER: "globex"}, 403, "tenant 'globex' does not own session 'guarded'"),
        (f"{base}/interact/{NS}/no-such-session", bearer("alice-k8s"), 404, "session 'no-such-session' not found in namespace 'grid'"),
        (f"{base}/interact/{NS}/starting", bearer("alice-k8s"), 409, "session 'starting' is Starting: its console opens when it is Running"),
    ]
    for url, headers, want_status, want_message in cases:
        status, body = await refused(http, url, headers)
        assert (status, list(body)) == (want_status, ["message"]), (url, headers, status, body)
        assert body["message"].startswith(want_message), (url, headers, body)
    metrics = gateway.metrics()
    for status in ("400", "401", "403", "404", "409"):
        assert f'gridop_console_denials_total{{endpoint="interact",status="{status}"}}' in metrics or \
            f'gridop_console_denials_total{{endpoint="tail",status="{status}"}}' in metrics


async def test_plain_http_get_is_refused_after_the_token_check(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(f"http://127.0.0.1:{gateway.port}/tail/{NS}/anything") as resp:
        assert resp.status == 401
    async with http.get(f"http://127.0.0.1:{gateway.port}/tail/{NS}/anything", headers=bearer("alice-k8s")) as resp:
        assert resp.status == 400
        assert (await resp.json())["message"].startswith("this endpoint speaks websocket only")


async def test_every_answer_is_json_and_malformed_requests_log_one_line(
    env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession,
) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    logged_before = len(gateway.log_path.read_text())
    async with http.get(f"{base}/nosuch/path") as resp:
        assert resp.status == 404 and (await resp.json())["message"].startswith("no such endpoint '/nosuch/path'")
    async with http.post(f"{base}/tail/{NS}/x") as resp:
        assert resp.status == 405 and "use GET" in (await resp.json())["message"]
    # The console service's own path prefix is served too (no ingress needed to strip it).
    env.session(NS, "prefixed")
    async with http.ws_connect(f"{gateway.url}/apis/console-operator/console-operator/tail/{NS}/prefixed",
                               headers={**bearer("alice-k8s"), wire.LINES_HEADER: "5"}) as ws:
        await read_until(ws, "$ ")
    # A long token in a header is read (up to 64 KiB of headers); more is a 431 in JSON; a line
    # past what the HTTP layer parses at all is its bare 400, and one INFO line, no traceback.
    async with http.get(f"{base}/tail/{NS}/x", headers={"Authorization": "Bearer " + "a" * 16_000}) as resp:
        assert resp.status == 401
    async with http.get(f"{base}/tail/{NS}/x", headers={"X-Big": "b" * 100_000}) as resp:
        assert resp.status == 431 and "the gateway reads at most 65536" in (await resp.json())["message"]
    async with http.get(f"{base}/tail/{NS}/x", headers={"X-Huge": "h" * 300_000}) as resp:
        assert resp.status == 400
    log = await eventually(lambda: _new_log(gateway, logged_before, "refused a malformed request"))
    assert "Traceback" not in log and '"level": "error"' not in log


async def _new_log(gateway: GatewayProcess, since: int, needle: str) -> str | None:
    text = gateway.log_path.read_text()[since:]
    return text if needle in text else None


async def test_too_many_connections_for_one_user(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "crowded")
    url = f"{gateway.url}/interact/{NS}/crowded?mode=monitor"
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            await stack.enter_async_context(http.ws_connect(url, headers=bearer("many-k8s")))
        status, body = await refused(http, url, bearer("many-k8s"))
        assert (status, body) == (429, {"message": "user 'many' already has 4 console connections open (the limit)"})


async def test_review_outage_fails_closed(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "outage")
    env.front.reviews_down = True
    try:
        status, body = await refused(http, f"{gateway.url}/interact/{NS}/outage", bearer("never-seen-token"))
        assert status == 503 and body["message"].startswith("cannot review the token (TokenReview failed")
    finally:
        env.front.reviews_down = False


# -- lifetimes ---------------------------------------------------------------------------------------------


async def test_token_expiry_closes_the_stream_with_a_policy_code(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "shortlived", user="dave")
    token = env.session_token(NS, "shortlived", user="dave", lifetime=2)
    async with http.ws_connect(f"{gateway.url}/tail/{NS}/shortlived", headers={**bearer(token), wire.FOLLOW_HEADER: "yes"}) as ws:
        async with asyncio.timeout(8):
            msg = await ws.receive()
            while msg.type == aiohttp.WSMsgType.TEXT:
                msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (ws.close_code, msg.extra) == (wire.CLOSE_POLICY, "token expired; reconnect with a fresh token")


async def test_stopping_the_session_closes_its_streams(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "stopper")
    async with http.ws_connect(f"{gateway.url}/tail/{NS}/stopper", headers={**bearer("alice-k8s"), wire.FOLLOW_HEADER: "1"}) as tail, \
            http.ws_connect(f"{gateway.url}/interact/{NS}/stopper", headers=bearer("alice-k8s")) as interact:
        await asyncio.sleep(0.3)
        env.set_status(NS, "stopper", {"phase": "Stopping"})

        async def closing(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
            # Each stream read on its own, as a client does: a close handshake left unanswered
            # while the other stream is read would be aborted by the gateway (code 1006).
            async with asyncio.timeout(10):
                msg = await ws.receive()
                while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    msg = await ws.receive()
            return msg

        for ws, msg in zip((tail, interact), await asyncio.gather(closing(tail), closing(interact)), strict=False):
            assert (ws.close_code, msg.extra) == (wire.CLOSE_POLICY, "session stopping")


def _raw_upgrade(port: int, path: str, token: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads (a stalled viewer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def test_a_slow_viewer_is_dropped_while_a_fast_one_keeps_up(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "firehose")
    url = f"{gateway.url}/interact/{NS}/firehose"
    async with http.ws_connect(url, headers=bearer("alice-k8s"), protocols=[wire.SUBPROTOCOL]) as writer, \
            http.ws_connect(url + "?mode=monitor", headers=bearer("bob-k8s"), protocols=[wire.SUBPROTOCOL]) as fast:
        slow = await asyncio.to_thread(_raw_upgrade, gateway.port, f"/interact/{NS}/firehose?mode=monitor", "bob-k8s")
        dropped = 'gridop_console_closes_total{endpoint="interact",reason="slow"}'
        try:
            # The stalled viewer's kernel buffers absorb a few MB first: push 1 MB rounds until it is dropped.
            for round_ in range(16):
                marker = f"round-{round_}-done"
                writer_reader = asyncio.create_task(read_until(writer, marker, timeout=60))
                await writer.send_bytes(f"head -c 1000000 /dev/zero | tr '\\0' x; echo; echo round-{round_}-do''ne\r".encode())
                seen = await read_until(fast, marker, timeout=60)
                await writer_reader
                assert seen.count("x") >= 1_000_000, f"the fast viewer missed output ({seen.count('x')} of 1000000)"
                assert not fast.closed
                if dropped in gateway.metrics():
                    break
            else:
                raise AssertionError("the stalled viewer was never dropped")
        finally:
            slow.close()


# -- audit, activity, recording --------------------------------------------------------------------------------


async def test_connections_are_audited_and_input_refreshes_activity(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "audited")
    async with http.ws_connect(f"{gateway.url}/interact/{NS}/audited", headers=bearer("alice-k8s"), protocols=[wire.SUBPROTOCOL]) as ws:
        await ws.send_str(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
        await ws.send_bytes(b"echo audit-me\r")
        await read_until(ws, "audit-me\r\n")

    def stamped() -> str | None:
        gs = env.get(resources.GRIDSESSIONS, NS, "audited") or {}
        return (gs["metadata"].get("annotations") or {}).get("gridop.io/last-active")

    assert await eventually(stamped, what="the session's last-active annotation")

    def reasons() -> list[str]:
        return [e["reason"] for e in env.events(NS) if e["involvedObject"]["name"] == "audited"]

    await eventually(lambda: {"ConsoleOpened", "ConsoleClosed"} <= set(reasons()), what="open and close events")
    closed = next(e for e in env.events(NS) if e["involvedObject"]["name"] == "audited" and e["reason"] == "ConsoleClosed")
    assert closed["message"].startswith("alice closed interact (interactive) after")
    assert closed["source"]["component"] == "gridop-gateway"

    record = await eventually(lambda: next((r for r in gateway.log_records()
                                            if r.get("event") == "console.close" and r.get("session") == "audited"), None))
    assert record["user"] == "alice" and record["endpoint"] == "interact" and record["mode"] == "interactive"
    assert record["bytes_in"] == len(b"echo audit-me\r") and record["bytes_out"] > 0
    assert record["close_code"] == 1000 and record["duration_seconds"] >= 0 and "start" in record
    assert "alice-k8s" not in gateway.log_path.read_text(), "a token leaked into the log"

    # Recording: asciicast v2, the first resize in the header, output only.
    recordings = list((gateway.log_path.parent / "recordings" / NS / "audited").glob("*.cast"))
    assert len(recordings) == 1 and record["recording"] == str(recordings[0])
    lines = [json.loads(line) for line in recordings[0].read_text().splitlines()]
    assert lines[0]["version"] == 2 and (lines[0]["width"], lines[0]["height"]) == (100, 30)
    assert lines[0]["user"] == "alice" and lines[0]["session"] == "audited"
    assert {event[1] for event in lines[1:]} == {"o"}
    assert "audit-me" in "".join(event[2] for event in lines[1:])


async def test_v4_channel_protocol_fallback(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    from tests.console_upstream import V4

    env.session(NS, "oldapi")
    env.front.protocols = [V4]
    try:
        async with http.ws_connect(f"{gateway.url}/interact/{NS}/oldapi", headers=bearer("alice-k8s")) as ws:
            await ws.send_str("echo v4-ok\r")
            await read_until(ws, "v4-ok\r\n")
        assert env.front.negotiated[-1] == V4
    finally:
        env.front.protocols = ["v5.channel.k8s.io", V4]


async def test_console_client_tail_and_errors(env: ConsoleEnv, gateway: GatewayProcess) -> None:
    console = env.session(OTHER_NS, "sdk")
    env.front.allowed.add(("alice", "get", OTHER_NS, "sdk"))
    assert console is not None
    console.write(b"echo one; echo two\r")
    await eventually(lambda: b"two\r\n" in console.log)
    client = ConsoleClient(gateway.url, token="alice-k8s", namespace=OTHER_NS)
    lines = [line async for line in client.tail("sdk", lines=3)]
    assert lines == ["one\r\n", "two\r\n", "$ "]
    with pytest.raises(ConsoleError) as info:
        await client.open("sdk")  # alice may only `get` here: no typing
    assert info.value.status == 403 and "may not create" in info.value.message
    with pytest.raises(ConsoleError) as info:
        [line async for line in ConsoleClient(gateway.url, namespace=OTHER_NS).tail("sdk")]
    assert info.value.status == 401


# -- gridctl console ---------------------------------------------------------------------------------------


async def _gridctl(*args: str, stdin: bytes | None = None, until: bytes | None = None, then: bytes | None = None) -> tuple[int, str, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridop.cli.gridctl", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = b""
    if stdin is not None:
        proc.stdin.write(stdin)
        await proc.stdin.drain()
    if until is not None:
        async with asyncio.timeout(20):
            while until not in out:
                chunk = await proc.stdout.read(4096)
                assert chunk, f"gridctl ended before printing {until!r}: {out[-300:]!r}"
                out += chunk
        if then is not None:
            proc.stdin.write(then)
            await proc.stdin.drain()
    rest, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, (out + rest).decode(errors="replace"), err.decode(errors="replace")


async def test_gridctl_console_tail_interact_and_errors(env: ConsoleEnv, gateway: GatewayProcess) -> None:
    console = env.session(NS, "cli")
    assert console is not None
    console.write(b"echo cli-line\r")
    await eventually(lambda: b"cli-line\r\n" in console.log)
    common = ["--gateway-url", gateway.url, "--token", "alice-k8s"]
    code, out, err = await _gridctl("-n", NS, "console", "tail", "cli", *common, "-n", "2")
    assert (code, err) == (0, "") and out.endswith("cli-line\r\n$ ")

    code, out, err = await _gridctl("-n", NS, "console", "interact", "cli", *common,
                                    stdin=b"echo typed-$((2+3))\r", until=b"typed-5", then=b"\x1d")
    assert code == 0 and "typed-5" in out and "[detached]" in err

    # Piped input (`echo ... | gridctl console interact`): at its end, the console's answer comes
    # back, then gridctl leaves (the console stays open for others).
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridop.cli.gridctl", "-n", NS, "console", "interact", "cli", *common,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    piped_out, piped_err = await asyncio.wait_for(proc.communicate(b"echo piped-$((3*3))\r"), 20)
    assert proc.returncode == 0 and b"piped-9" in piped_out and b"[end of input]" in piped_err, (piped_out, piped_err)

    code, out, err = await _gridctl("-n", NS, "console", "interact", "cli", "--gateway-url", gateway.url, "--token", "eve-k8s")
    assert code == 1 and out == ""
    assert err == "Error: user 'eve' may not create gridsessions/console 'cli' in namespace 'grid'\n"

    code, out, err = await _gridctl("-n", NS, "console", "tail", "Bad_Name", *common)
    assert code == 2 and err.startswith("Error: session_id 'Bad_Name' is not a valid session name") and "Traceback" not in err

    code, out, err = await _gridctl("-n", NS, "console", "tail", "cli", "--gateway-url", "ws://127.0.0.1:1", "--token", "x")
    assert code == 1 and err.startswith("Error: cannot reach the console gateway at ws://127.0.0.1:1") and "Traceback" not in err


async def test_gridctl_console_replay_plays_a_recording(env: ConsoleEnv, gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    env.session(NS, "replayed")
    async with http.ws_connect(f"{gateway.url}/interact/{NS}/replayed", headers=bearer("alice-k8s"), protocols=[wire.SUBPROTOCOL]) as ws:
        await ws.send_bytes(b"echo replay-$((7*6))\r")
        await read_until(ws, "replay-42\r\n")
    casts = await eventually(lambda: list((gateway.log_path.parent / "recordings" / NS / "replayed").glob("*.cast")))
    await eventually(lambda: "replay-42" in casts[0].read_text(), what="the recording is flushed on close")
    code, out, err = await _gridctl("console", "replay", str(casts[0]), "--speed", "100")
    assert (code, err) == (0, "") and "replay-42" in out
    code, out, err = await _gridctl("console", "replay", str(gateway.log_path))
    assert code == 2 and err.startswith("Error: ") and "not an asciicast v2 recording" in err


async def test_an_idle_connection_is_closed(env: ConsoleEnv, tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession) -> None:
    tmp = tmp_path_factory.mktemp("idle-gateway")
    idle = await asyncio.to_thread(GatewayProcess, env.write_kubeconfig(tmp / "kubeconfig"), tmp / "gateway.log",
                                   watch_namespaces=[NS], gateway_idle_timeout_seconds=1)
    try:
        env.session(NS, "sleepy")
        async with http.ws_connect(f"{idle.url}/interact/{NS}/sleepy", headers=bearer("alice-k8s")) as ws:
            async with asyncio.timeout(10):
                msg = await ws.receive()
                while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    msg = await ws.receive()
            assert (ws.close_code, msg.extra) == (wire.CLOSE_POLICY, "idle for 1s")
    finally:
        assert await asyncio.to_thread(idle.stop) == 0


async def test_gridctl_console_as_the_readme_runs_it_with_a_kind_kubeconfig(
    env: ConsoleEnv, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """kind's kubeconfig authenticates with a client certificate: no bearer token. gridctl then uses
    the session's own token Secret, and the tenant from the session: the README's command works as
    written, with only GRIDOP_GATEWAY_URL set (the port-forward)."""
    import base64
    import os
    import sys

    import yaml

    console = env.session(NS, "kindly", user="carol", tenant="acme")
    assert console is not None
    console.write(b"echo kind-ok\r")
    await eventually(lambda: b"kind-ok\r\n" in console.log)
    token = env.session_token(NS, "kindly", user="carol", tenant="acme")
    await env.arun(env.api.create(resources.SECRETS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kindly-token"},
        "data": {"token": base64.b64encode(token.encode()).decode()}}, NS))
    kubeconfig = tmp_path_factory.mktemp("kind") / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kind-gridop",
        "clusters": [{"name": "kind-gridop", "cluster": {"server": env.front.url}}],
        "users": [{"name": "kind-gridop", "user": {}}],  # a client certificate, over TLS, on a real kind
        "contexts": [{"name": "kind-gridop", "context": {"cluster": "kind-gridop", "user": "kind-gridop", "namespace": NS}}],
    }))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRIDOP_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridop.cli.gridctl", "console", "tail", "kindly", "-n", "2",
        env={**environ, "KUBECONFIG": str(kubeconfig), "GRIDOP_GATEWAY_URL": gateway.url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, err.decode()) == (0, "")
    assert out.decode().endswith("kind-ok\r\n$ ")


async def test_an_execd_console_ends_when_its_last_viewer_leaves(
    env: ConsoleEnv, tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession,
) -> None:
    """With a console command, each console open execs a process in the pod; when the last viewer
    leaves, the gateway closes its stdin, so it ends instead of piling up in the pod."""
    tmp = tmp_path_factory.mktemp("exec-gateway")
    execs = await asyncio.to_thread(GatewayProcess, env.write_kubeconfig(tmp / "kubeconfig"), tmp / "gateway.log",
                                    watch_namespaces=[NS], gateway_console_command=["/bin/sh"])
    try:
        env.session(NS, "execd")
        before = len(env.front.execs)
        for round_ in range(2):
            async with http.ws_connect(f"{execs.url}/interact/{NS}/execd", headers=bearer("alice-k8s"),
                                       protocols=[wire.SUBPROTOCOL]) as ws:
                await ws.send_bytes(f"echo exec-{round_}\r".encode())
                await read_until(ws, f"exec-{round_}\r\n")
        started = env.front.execs[before:]
        assert len(started) == 2, "each open execs a process of its own"
        for console in started:
            await eventually(lambda c=console: c.exited.is_set(), timeout=10, what="the exec'd shell ended")
    finally:
        assert await asyncio.to_thread(execs.stop) == 0


async def test_replicas_share_one_writer_and_a_lost_replicas_writer_lapses(
    env: ConsoleEnv, tmp_path: pathlib.Path, http: aiohttp.ClientSession,
) -> None:
    """Two gateway processes: the second refuses a writer the first holds; a replica that stops
    (SIGTERM) closes its consoles with 1001 and frees the writer at once; one killed outright holds
    it no longer than the writer lease (3 s here)."""
    env.session(NS, "shared")

    def replica(i: int) -> GatewayProcess:
        return GatewayProcess(env.write_kubeconfig(tmp_path / f"kubeconfig-{i}"), tmp_path / f"gateway-{i}.log",
                              watch_namespaces=[NS, OTHER_NS], gateway_default_namespace=NS,
                              gateway_writer_lease_seconds=3)

    async def writer_on(gw: GatewayProcess) -> aiohttp.ClientWebSocketResponse | None:
        try:
            return await http.ws_connect(f"{gw.url}/interact/{NS}/shared", headers=bearer("alice-k8s"))
        except aiohttp.WSServerHandshakeError:
            return None

    replicas = [await asyncio.to_thread(replica, i) for i in range(2)]
    try:
        first, second = replicas
        writer = await http.ws_connect(f"{first.url}/interact/{NS}/shared", headers=bearer("alice-k8s"))
        status, body = await refused(http, f"{second.url}/interact/{NS}/shared", bearer("alice-k8s"))
        assert status == 409 and body["message"] == (
            "session 'shared' already has a writer (alice, on another gateway replica); connect with ?mode=monitor to watch")
        async with http.ws_connect(f"{second.url}/interact/{NS}/shared?mode=monitor", headers=bearer("bob-k8s")):
            pass  # watching is for anyone, on any replica

        # SIGTERM: the console is closed with "going away", and the writer may come back at once.
        first.proc.send_signal(signal.SIGTERM)
        msg = await writer.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and writer.close_code == wire.CLOSE_GOING_AWAY
        moved = await eventually(lambda: writer_on(second), timeout=3, interval=0.1, what="the writer on the other replica")
        assert await asyncio.to_thread(first.proc.wait, 20) == 0

        # SIGKILL: nobody releases the writer lock; it lapses after the writer lease.
        third = await asyncio.to_thread(replica, 2)
        replicas.append(third)
        second.proc.kill()
        killed = time.monotonic()
        back = await eventually(lambda: writer_on(third), timeout=15, interval=0.2, what="the writer back after the kill")
        lapsed = time.monotonic() - killed
        assert lapsed <= 3 + 3, f"the dead replica's writer held the session for {lapsed:.1f}s"
        print(f"writer back {lapsed:.1f}s after the kill")
        await back.close()
        await moved.close()
    finally:
        for gw in replicas:
            if gw.proc.poll() is None:
                gw.proc.kill()
            gw.proc.wait(10)


async def test_a_followed_tail_rides_out_a_gateway_restart_without_repeating_lines(
    env: ConsoleEnv, tmp_path: pathlib.Path,
) -> None:
    """The gateway behind the client's URL goes away (1001) and comes back (a rolling update
    behind a Service): ConsoleClient's followed tail reconnects, and shows each line once."""
    console = env.session(NS, "rolling")
    assert console is not None
    console.write(b"for i in 1 2 3; do echo before-$i; done\r")
    await eventually(lambda: b"before-3\r\n" in console.log)
    kubeconfig = env.write_kubeconfig(tmp_path / "kubeconfig")
    first = await asyncio.to_thread(GatewayProcess, kubeconfig, tmp_path / "gateway-1.log", watch_namespaces=[NS])
    client = ConsoleClient(first.url, token="alice-k8s", namespace=NS)
    seen: list[str] = []

    async def follow() -> None:
        async for line in client.tail("rolling", lines=4, follow=True):
            seen.append(line)

    tailing = asyncio.create_task(follow())
    try:
        await eventually(lambda: "before-3\r\n" in seen, what="the tail's first lines")
        assert await asyncio.to_thread(first.stop) == 0  # SIGTERM: 1001 to every console
        second = await asyncio.to_thread(GatewayProcess, kubeconfig, tmp_path / "gateway-2.log", port=first.port,
                                         watch_namespaces=[NS])
        try:
            console.write(b"echo after\r")
            await eventually(lambda: "after\r\n" in seen, timeout=20, what="a line written after the restart")
            assert not tailing.done()
            lines = [line for line in seen if line.startswith(("before-", "after"))]
            assert lines == ["before-1\r\n", "before-2\r\n", "before-3\r\n", "after\r\n"], seen
        finally:
            tailing.cancel()
            await asyncio.gather(tailing, return_exceptions=True)
            assert await asyncio.to_thread(second.stop) == 0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()


async def test_an_interactive_console_rides_out_a_gateway_restart(env: ConsoleEnv, tmp_path: pathlib.Path) -> None:
    """The replica behind the client's URL stops (1001) and another comes up: ConsoleClient.interact
    (and `gridctl console interact` with it) reconnects, and a line typed meanwhile reaches the
    console once it is back."""
    console = env.session(NS, "rolling-shell")
    assert console is not None
    kubeconfig = env.write_kubeconfig(tmp_path / "kubeconfig")
    first = await asyncio.to_thread(GatewayProcess, kubeconfig, tmp_path / "gateway-1.log", watch_namespaces=[NS])
    client = ConsoleClient(first.url, token="alice-k8s", namespace=NS)
    typed_r, typed_w = os.pipe()
    shown = io.BytesIO()
    session = asyncio.create_task(client.interact("rolling-shell", stdin_fd=typed_r, stdout=shown))
    second = None
    try:
        os.write(typed_w, b"echo one-$((40+2))\r")
        await eventually(lambda: b"one-42" in shown.getvalue(), what="the first line's answer")
        assert await asyncio.to_thread(first.stop) == 0  # SIGTERM: 1001
        os.write(typed_w, b"echo two-$((40+3))\r")  # typed while no replica serves
        second = await asyncio.to_thread(GatewayProcess, kubeconfig, tmp_path / "gateway-2.log", port=first.port,
                                         watch_namespaces=[NS])
        await eventually(lambda: b"two-43" in shown.getvalue(), timeout=20, what="the line typed during the restart")
        assert not session.done()
        assert console.log.count(b"echo two-$((40+3))") == 1  # sent once
        os.close(typed_w)
        typed_w = -1
        assert await asyncio.wait_for(session, timeout=10) == "end of input"
    finally:
        if typed_w >= 0:
            os.close(typed_w)
        os.close(typed_r)
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        for gw in (first, second):
            if gw is not None and gw.proc.poll() is None:
                gw.stop()
