"""What the data plane's hot path packs and parses by hand must match the general forms."""

from __future__ import annotations

import base64
import json

import hiredis
import pytest

from gridop.tasks.codec import PayloadError, decode, decode_text, encode
from gridop.tasks.connection import Head
from gridop.tasks.store import _claimed, _handed


@pytest.mark.parametrize("rest", [(), (1,), (1.5, b"\x00\r\n", "é" * 300, -7), tuple(range(50))])
def test_a_packed_head_and_its_arguments_are_the_command_hiredis_packs(rest: tuple) -> None:
    head = Head("EVALSHA", "f" * 40, 3, "gridop:{s}:meta", "gridop:{s}:q", "gridop:{s}:t")
    assert head.pack(rest) == hiredis.pack_command(head.args + rest)


@pytest.mark.parametrize("value", [{}, {"a": [1, 2.5, "é", None, True]}, "x" * 5000, [{"n": i} for i in range(100)]])
def test_payloads_are_base64_of_compact_json(value: object) -> None:
    payload = encode(value)
    assert payload == base64.b64encode(json.dumps(value, separators=(",", ":")).encode())
    assert decode(payload) == decode(payload.decode()) == value
    assert decode_text(payload) == json.dumps(value, separators=(",", ":"))


def test_what_cannot_be_a_payload_says_why() -> None:
    with pytest.raises(PayloadError, match="result is not JSON-serialisable: Out of range float"):
        encode({"x": float("nan")}, what="result")
    with pytest.raises(PayloadError, match="not JSON serializable"):
        encode(object())
    for garbled in (b"!!!", b"e30", base64.b64encode(b"\xff{}")):
        with pytest.raises(ValueError):
            decode(garbled)


def test_a_hand_off_parses_as_the_claim_it_is() -> None:
    item = b"host-1-ab:42\n1700000000.25\n5:5:2:1699999999.5:1699999999.75\ne30="
    claim, claimed, run, payload = item.split(b"\n", 3)
    assert _handed(item) == _claimed([claim, claimed, b"1", run, payload])[0]
    assert _handed(item).attempt == 2 and _handed(item).index == 5
