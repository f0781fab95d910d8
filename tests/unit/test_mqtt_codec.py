from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ProtocolViolation
from gateway.mqtt import codec


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def connect_body(client_id: str = "c1", *, flags: int = 0x02, keepalive: int = 60,
                 name: bytes = b"MQTT", level: int = 4, tail: bytes = b"") -> bytes:
    return s(name) + bytes((level, flags)) + keepalive.to_bytes(2, "big") + s(client_id) + tail


def test_connect_minimal() -> None:
    c = codec.parse_connect(connect_body())
    assert (c.level, c.clean_session, c.keepalive, c.client_id) == (4, True, 60, "c1")
    assert c.will is None and c.username is None and c.password is None


def test_connect_full() -> None:
    flags = 0x02 | 0x04 | (1 << 3) | 0x20 | 0x40 | 0x80
    body = connect_body(flags=flags, tail=s("w/t") + s(b"bye") + s("user") + s(b"\x00pw"))
    c = codec.parse_connect(body)
    assert c.will == codec.Will("w/t", b"bye", 1, True)
    assert (c.username, c.password) == ("user", b"\x00pw")


def test_connect_mqtt31_accepted() -> None:
    assert codec.parse_connect(connect_body(name=b"MQIsdp", level=3)).level == 3


def test_connect_unknown_level_is_answered_not_raised() -> None:
    assert codec.parse_connect(connect_body(level=5)).level == 5


@pytest.mark.parametrize("body,reason", [
    (connect_body(name=b"HTTP"), "protocol_violation"),
    (connect_body(flags=0x03), "protocol_violation"),  # reserved bit
    (connect_body(flags=0x02 | 0x08), "protocol_violation"),  # will QoS without will
    (connect_body(flags=0x02 | 0x04 | 0x18), "protocol_violation"),  # will QoS 3
    (connect_body(flags=0x02 | 0x40), "protocol_violation"),  # password without username
    (connect_body()[:-1], "malformed_packet"),
    (connect_body(tail=b"x"), "malformed_packet"),
    (s("MQTT") + bytes((4, 2, 0, 60)) + s(b"\xff\xfe"), "bad_utf8"),
    (s("MQTT") + bytes((4, 2, 0, 60)) + s("a\x00b"), "bad_utf8"),
])
def test_connect_violations(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolViolation) as err:
        codec.parse_connect(body)
    assert err.value.reason == reason


def test_subscribe_and_unsubscribe() -> None:
    pid, reqs = codec.parse_subscribe(b"\x00\x07" + s("a/#") + b"\x01" + s("b") + b"\x02")
    assert pid == 7 and reqs == [("a/#", 1), ("b", 2)]
    pid, flts = codec.parse_unsubscribe(b"\x00\x08" + s("a/#") + s("b"))
    assert pid == 8 and flts == ["a/#", "b"]


@pytest.mark.parametrize("body", [
    b"\x00\x00" + s("a") + b"\x00",  # packet id 0
    b"\x00\x01",  # no filter
    b"\x00\x01" + s("a") + b"\x03",  # QoS 3
    b"\x00\x01" + s("a"),  # missing QoS byte
])
def test_subscribe_violations(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        codec.parse_subscribe(body)


def test_encoders() -> None:
    assert codec.connack(True, 0) == b"\x20\x02\x01\x00"
    assert codec.connack(True, 5) == b"\x20\x02\x00\x05"  # never session-present on refusal
    assert codec.puback(258) == b"\x40\x02\x01\x02"
    assert codec.pubrec(1) == b"\x50\x02\x00\x01"
    assert codec.pubcomp(1) == b"\x70\x02\x00\x01"
    assert codec.suback(1, [0, 1, 0x80]) == b"\x90\x05\x00\x01\x00\x01\x80"
    assert codec.unsuback(9) == b"\xb0\x02\x00\x09"
    assert codec.publish(b"a/b", b"xy", 1, True, 5) == b"\x33\x09\x00\x03a/b\x00\x05xy"
    assert codec.publish(b"a", b"", 0, False) == b"\x30\x03\x00\x01a"
    assert codec.publish(b"a", b"", 1, False, 1, dup=True)[0] == 0x3A


@given(st.integers(min_value=0, max_value=268_435_455))
def test_remaining_length_round_trip(n: int) -> None:
    enc = codec.encode_remaining_length(n)
    assert 1 <= len(enc) <= 4
    value, shift = 0, 0
    for byte in enc:
        value |= (byte & 0x7F) << shift
        shift += 7
    assert value == n
    assert all(b & 0x80 for b in enc[:-1]) and not enc[-1] & 0x80
