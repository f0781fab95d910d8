"""Hostile bytes into the MQTT broker's parsers (hypothesis).

* The packet-body parsers of `gateway.mqtt.codec` raise `ProtocolViolation` and nothing else
  for any bytes.
* `MqttConnection.data_received` (behind a fake transport, as in test_mqtt_connection.py) is
  fed streams mixing valid packets and random bytes, cut into arbitrary chunks:
  - it never raises;
  - a counted violation always closes the connection;
  - whatever the gateway writes back is a sequence of well-formed server packets;
  - the chunking does not change what is counted, nor (unless a violation closed the
    connection) what is ingested and answered;
  - what it holds for an incomplete packet stays bounded by the packet cap.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from edge.testing import FakeClock
from gateway.errors import ProtocolViolation
from gateway.mqtt import codec
from gateway.mqtt.broker import Broker
from gateway.mqtt.connection import MqttConnection
from gateway.mqtt.settings import MqttSettings
from gateway.testing import RecordingIngest

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_PACKET = 2048
#: packet types a server may send: CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK,
#: UNSUBACK, PINGRESP
SERVER_TYPES = {2, 3, 4, 5, 6, 7, 9, 11, 13}


def s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + codec.encode_remaining_length(len(body)) + body


CONNECT = frame(0x10, s(b"MQTT") + bytes((4, 0x02, 0, 60)) + s(b"fuzz"))


@given(st.binary(max_size=200))
@FUZZ
def test_body_parsers_raise_only_protocol_violations(body: bytes) -> None:
    for parse in (codec.parse_connect, codec.parse_subscribe, codec.parse_unsubscribe,
                  codec.parse_packet_id, codec.decode_text):
        try:
            parse(body)
        except ProtocolViolation:
            pass


# --------------------------------------------------------------------------- connection


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.conn: MqttConnection | None = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.conn is not None
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int) -> None:
        pass


def server_packets(data: bytes) -> list[tuple[int, bytes]]:
    """Split what the gateway wrote; AssertionError if it is not well-formed MQTT."""
    out, pos = [], 0
    while pos < len(data):
        first = data[pos]
        i, length, shift = pos + 1, 0, 0
        while True:
            assert i < len(data), f"truncated header in {data!r}"
            d = data[i]
            i += 1
            length |= (d & 0x7F) << shift
            shift += 7
            if d < 0x80:
                break
            assert shift <= 21
        assert i + length <= len(data), f"truncated packet in {data!r}"
        assert first >> 4 in SERVER_TYPES, f"server sent packet type {first >> 4}"
        out.append((first, data[i:i + length]))
        pos = i + length
    return out


topics = st.sampled_from([b"factory/l1/t/dev1", b"devices/d2/x", b"a/b", b"", b"+/x", b"#",
                          b"$SYS/x", b"\xff\xfe", b"a\x00b", b"factory/l1/t/dev1/extra"])
valid_packet = st.one_of(
    st.builds(lambda t, p, pid: frame(0x32, s(t) + pid.to_bytes(2, "big") + p), topics,
              st.binary(max_size=40), st.integers(0, 3)),
    st.builds(lambda t, p: frame(0x30, s(t) + p), topics, st.binary(max_size=40)),
    st.builds(lambda t, pid: frame(0x82, pid.to_bytes(2, "big") + s(t) + b"\x01"), topics,
              st.integers(0, 3)),
    st.builds(lambda pid: frame(0xA2, pid.to_bytes(2, "big") + s(b"a/b")), st.integers(0, 3)),
    st.just(b"\xc0\x00"),  # PINGREQ
    st.just(b"\x40\x02\x00\x01"),  # PUBACK from a client (for an id it never got)
)
element = st.one_of(valid_packet, valid_packet, st.binary(min_size=1, max_size=30),
                    st.builds(lambda n: b"\x32" + codec.encode_remaining_length(n),
                              st.integers(MAX_PACKET - 10, 10**6)))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = [CONNECT] if draw(st.integers(0, 9)) else []  # mostly past the CONNECT
    parts += draw(st.lists(element, max_size=12))
    data = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    return data, cuts


async def _feed(chunks: list[bytes]) -> tuple[bytes, list[bytes], dict[str, int], bool, int]:
    ingest = RecordingIngest()
    broker = Broker(MqttSettings(allow_anonymous=True, max_packet_bytes=MAX_PACKET),
                    ingest=ingest, auth=None, clock=FakeClock())
    broker.loop = asyncio.get_running_loop()
    conn = MqttConnection(broker)
    transport = FakeTransport()
    transport.conn = conn
    conn.connection_made(transport)
    held = 0
    for chunk in chunks:
        if transport.closed:
            break
        conn.data_received(chunk)
        held = max(held, len(conn.buf))
        for _ in range(10):
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    errors = dict(broker.counters.protocol_errors)
    closed = transport.closed
    if not closed:
        transport.close()
        await asyncio.sleep(0)
    return bytes(transport.out), [c[0] for c in ingest.calls], errors, closed, held


@FUZZ
@given(streams())
def test_connection_survives_any_stream_and_chunking_changes_nothing(
        stream: tuple[bytes, list[int]]) -> None:
    data, cuts = stream
    note(f"data={data!r} cuts={cuts}")
    if not data:
        return
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    whole = asyncio.run(_feed([data]))
    cut = asyncio.run(_feed(chunks))
    for out, _, errors, closed, held in (whole, cut):
        server_packets(out)
        # an invalid SUBSCRIBE filter is answered (SUBACK 0x80) and counted, not a disconnect
        fatal = {k: v for k, v in errors.items() if k != "bad_topic_filter"}
        if fatal:
            assert closed, f"violation {fatal} counted but the connection stayed open"
            assert sum(fatal.values()) == 1, f"one connection, one violation: {fatal}"
        assert held <= MAX_PACKET + max(len(c) for c in chunks) + 8
    # the same bytes in other chunks: the same counts; and, unless a violation closed the
    # connection, the same answers and ingests (a violation closes the connection at once,
    # so a PUBLISH before it may or may not have been acknowledged yet — its sender
    # redelivers it, and a reading already committed is recognised as a duplicate)
    assert whole[2] == cut[2]
    if not any(k != "bad_topic_filter" for k in whole[2]):
        assert whole[0] == cut[0]
        assert whole[1] == cut[1]
    else:
        assert cut[1][:len(whole[1])] == whole[1] or whole[1][:len(cut[1])] == cut[1]
