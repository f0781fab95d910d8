"""The connection state machine at its transport seam: a fake transport, a fake clock and a
gated ingest that the test releases, so ordering and timing are exact."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.testing import FakeClock
from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.errors import BufferBusy
from gateway.ingest import Origin, Outcome
from gateway.mqtt.broker import Broker
from gateway.mqtt.connection import MqttConnection
from gateway.mqtt.router import Message
from gateway.mqtt.settings import MqttSettings
from gateway.testing import RecordingIngest

ANON = MqttSettings(allow_anonymous=True)


# -- client-side packet builders (independent of gateway.mqtt.codec) ---------------------------

def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def frame(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray((first,))
    while True:
        d, n = n & 0x7F, n >> 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out) + body


def connect(client_id: str = "c1", *, clean: bool = True, keepalive: int = 60,
            username: str | None = None, password: bytes | None = None,
            will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    flags = 0x02 if clean else 0
    tail = b""
    if will:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
        tail += s(will[0]) + s(will[1])
    if username is not None:
        flags |= 0x80
        tail += s(username)
    if password is not None:
        flags |= 0x40
        tail += s(password)
    return frame(0x10, s("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
                 + s(client_id) + tail)


def publish(topic: str, payload: bytes, qos: int = 0, pid: int = 0, *, retain: bool = False,
            dup: bool = False) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    return frame(first, s(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload)


def subscribe(pid: int, *filters: tuple[str, int]) -> bytes:
    return frame(0x82, pid.to_bytes(2, "big") + b"".join(s(f) + bytes((q,)) for f, q in filters))


def packets(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        first = data[pos]
        i, length, shift = pos + 1, 0, 0
        while True:
            d = data[i]
            i += 1
            length |= (d & 0x7F) << shift
            shift += 7
            if d < 0x80:
                break
        out.append((first >> 4, first & 0x0F, data[i:i + length]))
        pos = i + length
    return out


# -- fakes ----------------------------------------------------------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.paused = False
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
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def take(self) -> list[tuple[int, int, bytes]]:
        got = packets(bytes(self.out))
        self.out.clear()
        return got


class GatedIngest:
    """ingest() waits until the test resolves its gate with an Outcome or an exception."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Origin, bool]] = []
        self.gates: list[asyncio.Future[Any]] = []

    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        gate = asyncio.get_running_loop().create_future()
        self.calls.append((payload, origin, durable))
        self.gates.append(gate)
        result = await gate
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def make_broker(settings: MqttSettings = ANON, ingest: Any = None,
                clock: FakeClock | None = None) -> Broker:
    broker = Broker(settings, ingest=ingest or RecordingIngest(), auth=None,
                    clock=clock or FakeClock())
    broker.loop = asyncio.get_running_loop()
    return broker


def open_conn(broker: Broker, *first: bytes) -> tuple[MqttConnection, FakeTransport]:
    conn = MqttConnection(broker)
    transport = FakeTransport()
    transport.conn = conn
    conn.connection_made(transport)
    for data in first:
        conn.data_received(data)
    return conn, transport


# -- tests --------------------------------------------------------------------------------

async def test_connect_and_anonymous_refused_by_default() -> None:
    broker = Broker(MqttSettings(), ingest=RecordingIngest(), auth=None, clock=FakeClock())
    broker.loop = asyncio.get_running_loop()
    conn, t = open_conn(broker, connect())
    assert t.take() == [(2, 0, b"\x00\x05")]
    assert t.closed
    assert broker.counters.auth_failures == {"anonymous_refused": 1}


async def test_puback_only_after_ingest_returns() -> None:
    ingest = GatedIngest()
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker, connect())
    assert t.take() == [(2, 0, b"\x00\x00")]
    conn.data_received(publish("factory/p/l1/d1", b"72.5", qos=1, pid=7))
    await settle()
    payload, origin, durable = ingest.calls[0]
    assert (payload, durable) == (b"72.5", True)
    assert origin == Origin(protocol="mqtt", peer="127.0.0.1:40000", device_hint="d1",
                            topic="factory/p/l1/d1", username=None)
    assert t.take() == []  # not committed yet: no PUBACK
    ingest.gates[0].set_result(Outcome(accepted=1))
    await settle()
    assert t.take() == [(4, 0, b"\x00\x07")]
    assert broker.counters.readings_acked == 1
    assert broker.retained.get("factory/p/l1/d1") is not None  # last reading retained


async def test_pubacks_leave_in_arrival_order() -> None:
    ingest = GatedIngest()
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker, connect())
    t.take()
    conn.data_received(publish("devices/d1/t", b"1", 1, 1) + publish("devices/d1/t", b"2", 1, 2)
                       + publish("devices/d1/t", b"3", 0))
    await settle()
    assert [c[2] for c in ingest.calls] == [True, True, False]  # QoS 0 is not durable
    ingest.gates[1].set_result(Outcome(accepted=1))  # the second commits first
    await settle()
    assert t.take() == []
    ingest.gates[0].set_result(Outcome(accepted=1))
    ingest.gates[2].set_result(Outcome(accepted=1))
    await settle()
    assert t.take() == [(4, 0, b"\x00\x01"), (4, 0, b"\x00\x02")]


async def test_rejected_payload_is_still_acknowledged_and_counted() -> None:
    ingest = RecordingIngest(reject={b"garbage": "malformed_payload"})
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker, connect())
    t.take()
    conn.data_received(publish("devices/d1/t", b"garbage", 1, 3))
    await settle()
    assert t.take() == [(4, 0, b"\x00\x03")]
    assert broker.counters.readings_rejected == {"malformed_payload": 1}
    assert broker.retained.get("devices/d1/t") is None  # not routed nor retained


async def test_retriable_ingest_error_closes_without_ack() -> None:
    ingest = GatedIngest()
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker, connect(will=("devices/c1/status", b"gone", 0, False)))
    t.take()
    got: list[Message] = []
    broker.subscribe_internal("devices/+/status", got.append)
    conn.data_received(publish("devices/d1/t", b"1", 1, 1))
    await settle()
    ingest.gates[0].set_exception(BufferBusy("buffer busy"))
    await settle()
    assert t.take() == [] and t.closed
    assert broker.counters.ingest_unavailable == 1
    assert [m.payload for m in got] == [b"gone"]  # abnormal end: the will is published


async def test_qos2_exactly_once_into_ingest() -> None:
    ingest = RecordingIngest()
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker, connect())
    t.take()
    conn.data_received(publish("devices/d1/t", b"x", 2, 5))
    await settle()
    assert t.take() == [(5, 0, b"\x00\x05")]  # PUBREC after the commit
    conn.data_received(publish("devices/d1/t", b"x", 2, 5, dup=True))  # redelivery
    await settle()
    assert t.take() == [(5, 0, b"\x00\x05")]
    assert len(ingest.calls) == 1
    conn.data_received(frame(0x62, b"\x00\x05"))  # PUBREL
    assert t.take() == [(7, 0, b"\x00\x05")]  # PUBCOMP


async def test_acl_refusal_is_acked_counted_not_ingested() -> None:
    ingest = RecordingIngest()
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker, connect())
    t.take()
    conn.data_received(publish("alerts/fake", b"x", 1, 1))
    await settle()
    assert t.take() == [(4, 0, b"\x00\x01")]
    assert ingest.calls == []
    assert broker.counters.acl_refused_publish == 1


async def test_keepalive_timeout_publishes_will() -> None:
    clock = FakeClock()
    broker = make_broker(clock=clock)
    got: list[Message] = []
    broker.subscribe_internal("devices/#", got.append)
    conn, t = open_conn(broker, connect(keepalive=10, will=("devices/c1/status", b"lost", 1,
                                                            True)))
    clock.advance(14.9)
    broker.sweep()
    assert not t.closed  # 1.5 × keepalive not reached
    conn.data_received(frame(0xC0, b""))  # PINGREQ keeps it alive
    assert t.take()[-1] == (13, 0, b"")
    clock.advance(15.1)
    broker.sweep()
    assert t.closed
    await settle()
    assert broker.counters.timeouts == {"keepalive": 1}
    assert [m.payload for m in got] == [b"lost"]
    assert broker.retained.get("devices/c1/status") is not None  # will retain honoured


async def test_clean_disconnect_discards_will() -> None:
    broker = make_broker()
    got: list[Message] = []
    broker.subscribe_internal("#", got.append)
    conn, t = open_conn(broker, connect(will=("devices/c1/status", b"lost", 0, False)))
    conn.data_received(frame(0xE0, b""))
    await settle()
    assert t.closed and got == []
    assert broker.counters.disconnects_clean == 1


async def test_connect_timeout() -> None:
    clock = FakeClock()
    broker = make_broker(clock=clock)
    _, t = open_conn(broker)
    clock.advance(11)
    broker.sweep()
    assert t.closed and broker.counters.timeouts == {"connect": 1}


@pytest.mark.parametrize("data,reason", [
    (b"\x00\x00", "protocol_violation"),  # not CONNECT first
    (b"\x10\xff\xff\xff\xff\x01", "malformed_packet"),  # 5-byte remaining length
    (b"\x10\xff\xff\xff\x7f", "oversize_frame"),  # refused from the header alone
    (b"GET / HTTP/1.1\r\n\r\n", "protocol_violation"),
])
async def test_garbage_before_connect(data: bytes, reason: str) -> None:
    broker = make_broker()
    _, t = open_conn(broker, data)
    assert t.closed
    assert broker.counters.protocol_errors == {reason: 1}


@pytest.mark.parametrize("data,reason", [
    (b"\x00\x00", "unknown_packet_type"),
    (b"\xf0\x00", "unknown_packet_type"),
    (b"\x20\x02\x00\x00", "protocol_violation"),  # CONNACK from a client
    (b"\x80\x03\x00\x01\x00", "malformed_packet"),  # SUBSCRIBE with flags 0
    (b"\x36\x05\x00\x01a\x00\x01", "malformed_packet"),  # QoS 3
    (b"\x38\x03\x00\x01a", "malformed_packet"),  # DUP on QoS 0
    (b"\x32\x05\x00\x01a\x00\x00", "protocol_violation"),  # packet id 0
    (b"\x30\x03\x00\x01+", "protocol_violation"),  # wildcard in a topic name
    (b"\x30\x04\x00\x02\xc3\x28", "bad_utf8"),
    (b"\x30\x01\x00", "malformed_packet"),
    (b"\x30\x04\x00\x09ab", "malformed_packet"),  # topic length beyond the packet
])
async def test_violations_after_connect(data: bytes, reason: str) -> None:
    broker = make_broker()
    conn, t = open_conn(broker, connect())
    conn.data_received(data)
    assert t.closed, reason
    assert broker.counters.protocol_errors == {reason: 1}


async def test_oversize_publish_frame_dropped_before_buffering() -> None:
    broker = make_broker(settings=replace(ANON, max_packet_bytes=1024))
    conn, t = open_conn(broker, connect())
    conn.data_received(b"\x30\x81\x08")  # announces 1025 bytes; nothing else needed
    assert t.closed and broker.counters.protocol_errors == {"oversize_frame": 1}


async def test_byte_by_byte_delivery_parses_the_same() -> None:
    ingest = RecordingIngest()
    broker = make_broker(ingest=ingest)
    conn, t = open_conn(broker)
    stream = connect() + publish("devices/d1/t", b"1" * 300, 1, 1) + frame(0xC0, b"")
    for i in range(len(stream)):
        conn.data_received(stream[i:i + 1])
    await settle()
    assert [p[0] for p in t.take()] == [2, 13, 4]  # PINGRESP need not wait for a commit
    assert ingest.calls[0][0] == b"1" * 300


async def test_back_pressure_pauses_reading() -> None:
    ingest = GatedIngest()
    broker = make_broker(settings=replace(ANON, max_inflight_in=4), ingest=ingest)
    conn, t = open_conn(broker, connect())
    conn.data_received(b"".join(publish("devices/d1/t", b"x", 1, i) for i in range(1, 5)))
    assert t.paused
    await settle()
    for gate in ingest.gates:
        gate.set_result(Outcome(accepted=1))
    await settle()
    assert not t.paused


async def test_keepalive_over_cap_refused() -> None:
    broker = make_broker(settings=replace(ANON, keepalive_cap_s=300))
    _, t = open_conn(broker, connect(keepalive=301))
    assert t.take() == [(2, 0, b"\x00\x02")]
    _, t = open_conn(broker, connect(keepalive=0))
    assert t.take() == [(2, 0, b"\x00\x02")]
    assert broker.counters.auth_failures == {"keepalive_over_cap": 2}


async def test_session_takeover_closes_old_without_will() -> None:
    broker = make_broker()
    got: list[Message] = []
    broker.subscribe_internal("#", got.append)
    _, old = open_conn(broker, connect("same", will=("devices/same/s", b"w", 0, False)))
    _, new = open_conn(broker, connect("same"))
    await settle()
    assert old.closed and not new.closed
    assert got == [] and broker.counters.sessions_taken_over == 1
    assert broker.sessions["same"].conn is not None


async def test_persistent_session_gets_missed_qos1_on_reconnect() -> None:
    broker = make_broker()
    sub, t = open_conn(broker, connect("dash", clean=False), subscribe(1, ("factory/#", 1)))
    assert [p[0] for p in t.take()] == [2, 9]
    sub.data_received(frame(0xE0, b""))
    await settle()
    broker.publish("factory/a/b/c", b"while-away", qos=1)
    _, t2 = open_conn(broker, connect("dash", clean=False))
    got = t2.take()
    assert got[0] == (2, 0, b"\x01\x00")  # session present
    assert got[1][0] == 3 and got[1][2].endswith(b"while-away")


async def test_subscribe_acl_and_retained_after_suback() -> None:
    broker = make_broker()
    broker.publish("alerts/line1", b"firing", retain=True)
    broker.publish("factory/a/b/d1", b"1", retain=True, qos=0)
    conn, t = open_conn(broker, connect(), subscribe(3, ("alerts/#", 1), ("factory/#", 1),
                                                     ("bad/#/x", 0)))
    got = t.take()
    assert got[1] == (9, 0, b"\x00\x03\x80\x01\x80")
    assert got[2][0] == 3 and got[2][1] & 0x01  # retained copy carries RETAIN=1
    assert got[2][2].endswith(b"1")
    assert broker.counters.acl_refused_subscribe == 1


async def test_internal_publish_reaches_subscribers_and_stats() -> None:
    broker = make_broker()
    conn, t = open_conn(broker, connect(), subscribe(1, ("factory/+/+/+", 1)))
    t.take()
    assert broker.publish("factory/a/b/c", "hello", qos=1) == 1
    pkt = t.take()[0]
    assert pkt[0] == 3 and pkt[1] == 0x02 and pkt[2].endswith(b"hello")
    conn.data_received(frame(0x40, pkt[2][15:17]))  # PUBACK of the delivered message
    stats = broker.stats()
    assert stats["clients_connected"] == 1 and stats["subscriptions"] == 1
    assert stats["messages_out"] == 1 and stats["internal_published"] == 1
    with pytest.raises(ValueError):
        broker.publish("a/+", b"x")


async def test_operator_publish_reaches_internal_subscriber_not_ingest() -> None:
    ingest = RecordingIngest()
    broker = make_broker(ingest=ingest)
    acks: list[Message] = []

    async def on_ack(msg: Message) -> None:
        acks.append(msg)

    broker.subscribe_internal("alerts/ack/#", on_ack)
    conn, t = open_conn(broker, connect())
    conn.role, conn.username = "operator", "ops"  # as if authenticated as an operator
    conn.data_received(publish("alerts/ack/line1", b"ok", 1, 1))
    await settle()
    assert [(m.payload, m.username) for m in acks] == [(b"ok", "ops")] and ingest.calls == []
    assert t.take()[-1] == (4, 0, b"\x00\x01")


async def test_failing_internal_callback_is_counted_not_raised() -> None:
    broker = make_broker()
    broker.subscribe_internal("#", lambda m: 1 / 0)
    broker.publish("a", b"x")
    assert broker.counters.callback_errors == 1


async def test_broker_wide_in_flight_limit_pauses_and_resumes() -> None:
    ingest = GatedIngest()
    broker = make_broker(settings=replace(ANON, max_inflight_total=4), ingest=ingest)
    conns = [open_conn(broker, connect(f"c{i}")) for i in range(6)]
    for i, (conn, _) in enumerate(conns):
        conn.data_received(publish(f"devices/d{i}/t", b"x", 1, 1))
    # the 5th and 6th PUBLISH took the broker over its limit: their sockets stop being read
    assert [t.paused for _, t in conns] == [False] * 4 + [True] * 2
    assert broker.counters.overload_pauses == 2
    await settle()
    for gate in ingest.gates[:4]:
        gate.set_result(Outcome(accepted=1))
    await settle()
    assert [t.paused for _, t in conns] == [False] * 6


async def test_publish_pipelined_behind_a_slow_connect_waits_for_auth(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    save_accounts(path, {"d1": Account("d1", "device", hash_password("pw"))})
    ingest = RecordingIngest()
    with Authenticator(path) as auth:
        broker = Broker(MqttSettings(), ingest=ingest, auth=auth, clock=FakeClock())
        broker.loop = asyncio.get_running_loop()
        conn, t = open_conn(broker, connect(username="d1", password=b"pw")
                            + publish("devices/d1/t", b"1", 1, 1))
        assert t.paused and t.take() == []  # argon2 runs in a worker thread meanwhile
        for _ in range(500):
            if ingest.calls:
                break
            await asyncio.sleep(0.01)
        await settle()
        assert t.take() == [(2, 0, b"\x00\x00"), (4, 0, b"\x00\x01")]
        assert not t.paused
        assert ingest.calls[0][1].username == "d1"
        _, bad = open_conn(broker, connect("c2", username="d1", password=b"nope"))
        for _ in range(500):
            if bad.closed:
                break
            await asyncio.sleep(0.01)
        assert bad.take() == [(2, 0, b"\x00\x04")]
        assert broker.counters.auth_failures == {"bad_password": 1}
