"""The built-in MQTT 3.1.1 publisher's packets and parser, at the byte level."""

from __future__ import annotations

from typing import Any

from firmware_sim.device import Emission
from firmware_sim.mqtt_fast import (
    FastMqttLink,
    MqttOptions,
    _varint,
    connect_packet,
    publish_packet,
)


def test_varint() -> None:
    assert _varint(0) == b"\x00" and _varint(127) == b"\x7f"
    assert _varint(128) == b"\x80\x01" and _varint(16_383) == b"\xff\x7f"
    assert _varint(16_384) == b"\x80\x80\x01" and _varint(268_435_455) == b"\xff\xff\xff\x7f"


def test_connect_packet() -> None:
    opts = MqttOptions("h", 1, keepalive_s=60, clean_session=True, username="u", password="p")
    assert connect_packet("dev", opts) == (
        b"\x10\x15" b"\x00\x04MQTT" b"\x04" b"\xc2" b"\x00\x3c" b"\x00\x03dev" b"\x00\x01u"
        b"\x00\x01p")
    anon = MqttOptions("h", 1, keepalive_s=30, clean_session=False)
    assert connect_packet("d", anon) == b"\x10\x0d\x00\x04MQTT\x04\x00\x00\x1e\x00\x01d"


def test_publish_packets() -> None:
    topic = b"\x00\x03a/b"
    assert publish_packet(topic, b"xy", 0, 0, False) == b"\x30\x07\x00\x03a/bxy"
    assert publish_packet(topic, b"xy", 1, 258, False) == b"\x32\x09\x00\x03a/b\x01\x02xy"
    assert publish_packet(topic, b"xy", 1, 1, True)[0] == 0x3A
    big = publish_packet(topic, b"z" * 200, 1, 1, False)
    assert big[:3] == b"\x32\xcf\x01" and len(big) == 3 + 207


class _Events:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.sent: list[int] = []
        self.lost: list[str] = []

    def link_acked(self, owner: Any, e: Emission) -> None:
        self.acked.append(e.seq)

    def link_sent(self, owner: Any, e: Emission) -> None:
        self.sent.append(e.seq)

    def link_failed(self, owner: Any, e: Emission, reason: str) -> None:
        raise AssertionError(reason)

    def link_lost(self, owner: Any, reason: str) -> None:
        self.lost.append(reason)

    def link_writable(self, owner: Any) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def _feed(link: FastMqttLink, data: bytes) -> None:
    buf = link.get_buffer(-1)
    buf[:len(data)] = data
    link.buffer_updated(len(data))


def _emission(seq: int) -> Emission:
    return Emission("dev", "temperature", seq, 0, 0, 1.0, b"{}")


def test_pubacks_match_packet_ids_even_split_across_reads() -> None:
    ev = _Events()
    link = FastMqttLink("dev", "t", MqttOptions("h", 1), ev, None)
    t = _Transport()
    link.connection_made(t)  # type: ignore[arg-type]
    link.connected = True
    for seq in range(5):
        e = _emission(seq)
        e.attempts = 1
        link.send(e, 1)
    pids = [int.from_bytes(w[2 + 2 + 1:2 + 2 + 1 + 2], "big") for w in t.written]
    assert pids == [1, 2, 3, 4, 5] and link.inflight() == 5
    stream = b"".join(b"\x40\x02" + p.to_bytes(2, "big") for p in (2, 1, 5))
    # a PUBACK split over two reads, then a PINGRESP and the rest in one read
    _feed(link, stream[:5])
    _feed(link, stream[5:] + b"\xd0\x00" + b"\x40\x02\x00\x04")
    assert ev.acked == [1, 0, 4, 3]
    assert [e.seq for e in link.take_unacked()] == [2]
    # unknown or stale packet ids are ignored
    _feed(link, b"\x40\x02\x00\x09")
    assert ev.acked == [1, 0, 4, 3]


def test_qos0_is_unconfirmed_at_once_and_retransmission_sets_dup() -> None:
    ev = _Events()
    link = FastMqttLink("dev", "t", MqttOptions("h", 1), ev, None)
    t = _Transport()
    link.connection_made(t)  # type: ignore[arg-type]
    e = _emission(7)
    e.attempts = 1
    link.send(e, 0)
    assert ev.sent == [7] and t.written[-1][0] == 0x30
    e.attempts = 2
    link.send(e, 1)
    assert t.written[-1][0] == 0x3A


def test_a_garbled_length_drops_the_connection() -> None:
    ev = _Events()
    link = FastMqttLink("dev", "t", MqttOptions("h", 1), ev, None)
    t = _Transport()
    link.connection_made(t)  # type: ignore[arg-type]
    _feed(link, b"\x30\xff\xff\xff\xff\xff")
    assert t.aborted


def test_keepalive_pings_an_idle_connection_and_drops_a_silent_broker() -> None:
    ev = _Events()
    link = FastMqttLink("dev", "t", MqttOptions("h", 1, keepalive_s=10), ev, None)
    t = _Transport()
    link.connection_made(t)  # type: ignore[arg-type]
    link.connected = True
    link.housekeeping(6.0)  # idle for half the keepalive: ping
    assert t.written == [b"\xc0\x00"]
    _feed(link, b"\xd0\x00")
    link.housekeeping(12.0)
    assert t.written == [b"\xc0\x00", b"\xc0\x00"]
    link.housekeeping(23.0)  # no PINGRESP within the keepalive
    assert t.aborted
