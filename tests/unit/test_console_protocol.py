"""Console requests, the Kubernetes channel codec, browser token subprotocols and the recording format."""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib

import pytest

from gridop.api import console as wire
from gridop.gateway import channels
from gridop.gateway.recording import Recording, header, recording_path
from gridop.gateway.requests import BadRequest, bearer_token, offered_protocols, parse_request


def parse(endpoint: str = "tail", namespace: str | None = "grid", target: str = "sim", query: dict | None = None, **headers: str):
    return parse_request(endpoint, namespace, target, query or {}, {k.replace("_", "-"): v for k, v in headers.items()})


def test_tail_defaults_and_headers() -> None:
    req = parse()
    assert (req.lines, req.follow, req.tenant) == (wire.DEFAULT_TAIL_LINES, False, None)
    req = parse(Cray_Console_Lines="0", Cray_Console_Follow="True", Cray_Tenant_Name="acme")
    assert (req.lines, req.follow, req.tenant) == (0, True, "acme")
    assert parse(query={"lines": "7", "follow": "on"}).lines == 7  # browsers: query parameters
    assert parse(Cray_Tenant_Name="").tenant is None  # the seed: empty means no tenant


@pytest.mark.parametrize("value", sorted(wire.TRUE_VALUES))
def test_every_documented_truthy_value(value: str) -> None:
    assert parse(Cray_Console_Follow=value.upper()).follow is True


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"Cray_Console_Lines": "ten"}, "header Cray-Console-Lines: 'ten' is not a non-negative integer"),
    ({"Cray_Console_Lines": "-5"}, "header Cray-Console-Lines: '-5' is not a non-negative integer"),
    ({"Cray_Console_Lines": "1.5"}, "header Cray-Console-Lines: '1.5' is not a non-negative integer"),
    ({"Cray_Console_Lines": "100001"}, "header Cray-Console-Lines: 100001 is more than the maximum of 100000"),
    ({"Cray_Console_Follow": "maybe"}, "header Cray-Console-Follow: 'maybe' is not a boolean"),
    ({"Cray_Tenant_Name": "a b"}, "header Cray-Tenant-Name: 'a b' is not a valid tenant name"),
    ({"query": {"mode": "monitor"}}, "unknown query parameter(s) mode for /tail"),
])
def test_malformed_tail_requests(kwargs: dict, message: str) -> None:
    query = kwargs.pop("query", None)
    with pytest.raises(BadRequest) as info:
        parse(query=query, **kwargs)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("endpoint", "namespace", "target", "query", "message"), [
    ("interact", "grid", "sim", {"mode": "admin"}, "query mode='admin' is not one of interactive, monitor"),
    ("interact", "grid", "sim", {"lines": "3"}, "unknown query parameter(s) lines for /interact"),
    ("interact", "grid", "Sim", {}, "session 'Sim' in the path is not a valid session name"),
    ("interact", "grid", "a" * 64, {}, "session"),
    ("interact", "Grid_", "sim", {}, "namespace 'Grid_' in the path is not a valid namespace name"),
    ("interact", None, "-bad", {}, "'-bad' in the path is neither a session name nor a node name"),
    ("console", "grid", "sim", {}, "unknown endpoint 'console'"),
])
def test_malformed_paths_and_queries(endpoint: str, namespace: str | None, target: str, query: dict, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(endpoint, namespace, target, query, {})
    assert str(info.value).startswith(message)


def test_single_segment_accepts_sessions_and_node_names() -> None:
    assert parse("interact", None, "x1000c0s0b0n0").namespace is None
    assert parse("interact", None, "node-1.example.com").target == "node-1.example.com"
    assert parse("interact", "grid", "sim", {"mode": "monitor"}).mode == "monitor"


def test_bearer_token_from_header_or_browser_subprotocol() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}, []) == "abc"
    assert bearer_token({"Authorization": "bearer  abc "}, []) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}, [wire.bearer_protocol("t")]) is None  # a wrong scheme is not ignored
    protocols = offered_protocols({"Sec-WebSocket-Protocol": f"{wire.SUBPROTOCOL}, {wire.bearer_protocol('tok.en-_~')}"})
    assert protocols[0] == wire.SUBPROTOCOL and bearer_token({}, protocols) == "tok.en-_~"
    assert bearer_token({}, ["base64url.bearer.authorization.k8s.io.!!!"]) is None
    assert bearer_token({}, []) is None


@pytest.mark.parametrize("token", ["a", "ab", "abc", "eyJhbGciOiJFUzI1NiJ9.e30.sig"])
def test_bearer_protocol_round_trip(token: str) -> None:
    protocol = wire.bearer_protocol(token)
    assert "=" not in protocol and wire.token_from_protocol(protocol) == token


# -- the channel codec ------------------------------------------------------------------------------------


def test_channel_frames() -> None:
    assert channels.stdin(b"ls\r") == b"\x00ls\r"
    assert channels.decode(b"\x01hello") == channels.Frame(1, b"hello")
    assert channels.decode(b"\x02") == channels.Frame(2, b"")
    assert json.loads(channels.resize(132, 43)[1:]) == {"Width": 132, "Height": 43} and channels.resize(1, 1)[0] == 4
    with pytest.raises(channels.ChannelError):
        channels.decode(b"")
    with pytest.raises(channels.ChannelError):
        channels.encode(256)


def test_close_stdin_only_in_v5() -> None:
    assert channels.close_stdin(channels.V5) == b"\xff\x00"
    assert channels.close_stdin(channels.V4) is None
    assert channels.PROTOCOLS == ("v5.channel.k8s.io", "v4.channel.k8s.io")


def test_status_channel_messages() -> None:
    assert channels.status_message(channels.parse_status(b'{"metadata":{},"status":"Success"}')) == "console ended"
    failure = {"status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
               "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    assert channels.status_message(channels.parse_status(json.dumps(failure).encode())) == "console exited with code 3"
    assert channels.status_message(channels.parse_status(b"container not found")) == "container not found"  # v1 plain text


# -- recordings ---------------------------------------------------------------------------------------------


async def test_recording_is_asciicast_v2_output_and_resizes_only(tmp_path: pathlib.Path) -> None:
    now = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
    path = recording_path(tmp_path, "grid", "sim", "alice@example.com", "c1", now)
    assert path == tmp_path / "grid" / "sim" / "20261122T120000Z-alice@example.com-c1.cast"
    rec = await Recording.open(path, header(width=80, height=24, user="alice", session="sim", namespace="grid", tenant=None, now=now))
    rec.resize(120, 40)  # before any output: the header's size
    rec.output("héllo".encode()[:2])  # a split UTF-8 sequence is joined, not mangled
    rec.output("héllo".encode()[2:])
    await asyncio.sleep(0.01)
    rec.resize(100, 30)
    await rec.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"version": 2, "width": 120, "height": 40, "timestamp": int(now.timestamp()),
                        "title": "grid/sim (alice)", "user": "alice", "session": "sim", "namespace": "grid", "tenant": None}
    assert [event[1:] for event in lines[1:]] == [["o", "h"], ["o", "éllo"], ["r", "100x30"]]
    assert lines[1][0] <= lines[2][0] <= lines[3][0]


async def test_recording_refuses_to_overwrite(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.cast"
    path.write_text("")
    with pytest.raises(FileExistsError):
        await Recording.open(path, {})
