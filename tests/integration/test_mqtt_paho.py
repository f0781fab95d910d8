"""The gateway broker against paho-mqtt (a real MQTT 3.1.1 client) over 127.0.0.1 sockets,
TCP and WebSocket.  paho runs in threads; the broker on the test's event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.mqtt import Message, MqttServer, MqttSettings, WebSocketListener
from gateway.testing import RecordingIngest

HOST = "127.0.0.1"
PASSWORDS = {"d1": "pw-d1", "d2": "pw-d2", "ops": "pw-ops"}


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("creds") / "mqtt-credentials.json"
    save_accounts(path, {
        name: Account(name, "operator" if name == "ops" else "device", hash_password(pw))
        for name, pw in PASSWORDS.items()})
    return path


@dataclass
class Gateway:
    server: MqttServer
    ingest: RecordingIngest

    @property
    def port(self) -> int:
        return self.server.port


def settings(**kw: Any) -> MqttSettings:
    base = MqttSettings(host=HOST, port=0, websocket=WebSocketListener(host=HOST, port=0))
    return replace(base, **kw)


@pytest.fixture
async def gw(creds: Path) -> AsyncIterator[Gateway]:
    ingest = RecordingIngest()
    with Authenticator(creds) as auth:
        async with MqttServer(settings(), ingest=ingest, auth=auth) as server:
            yield Gateway(server, ingest)


@dataclass
class Client:
    """A paho client with its callbacks recorded (thread-safe enough for assertions)."""

    paho: mqtt.Client
    connack: Any = None
    connected: threading.Event = field(default_factory=threading.Event)
    messages: list[Any] = field(default_factory=list)
    subacks: dict[int, list[Any]] = field(default_factory=dict)
    published: dict[int, float] = field(default_factory=dict)

    def wait_messages(self, n: int, timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)

    def subscribe(self, flt: str, qos: int = 1) -> Any:
        _, mid = self.paho.subscribe(flt, qos)
        assert mid is not None
        deadline = time.monotonic() + 5
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.subacks[mid][0]

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def connect(port: int, client_id: str, user: str | None = None, *, password: str | None = None,
            clean: bool = True, will: tuple[str, bytes, int, bool] | None = None,
            keepalive: int = 60, transport: str = "tcp",
            configure: Callable[[mqtt.Client], None] | None = None) -> Client:
    """Connect (blocking, call from a thread) and wait for the CONNACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean, protocol=mqtt.MQTTv311,
                         transport=transport)  # type: ignore[arg-type]
    rec = Client(client)
    if user is not None:
        client.username_pw_set(user, PASSWORDS.get(user) if password is None else password)
    if will:
        client.will_set(*will)
    if configure:
        configure(client)

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        rec.connack = reason
        rec.connected.set()

    client.on_connect = on_connect
    client.on_message = lambda c, u, m: rec.messages.append(m)
    client.on_subscribe = lambda c, u, mid, codes, p: rec.subacks.__setitem__(mid, codes)
    client.on_publish = lambda c, u, mid, rc, p: rec.published.__setitem__(
        mid, time.monotonic())
    client.connect(HOST, port, keepalive)
    client.loop_start()
    assert rec.connected.wait(10), "no CONNACK"
    if rec.connack.is_failure:
        client.loop_stop()
    return rec


def publish(client: Client, topic: str, payload: bytes, qos: int = 1,
            retain: bool = False) -> float:
    """Publish and wait for the broker's acknowledgement; returns the seconds it took."""
    t0 = time.monotonic()
    info = client.paho.publish(topic, payload, qos, retain)
    info.wait_for_publish(10)
    assert info.is_published()
    return time.monotonic() - t0


async def test_qos_0_1_2_reach_ingest_with_the_device_identity(gw: Gateway) -> None:
    def run() -> None:
        d1 = connect(gw.port, "d1-client", "d1")
        for qos in (0, 1, 2):
            publish(d1, "factory/plant/line1/d1", f'{{"value": {qos}}}'.encode(), qos)
        d1.close()

    await asyncio.to_thread(run)
    await asyncio.sleep(0.1)
    assert [c[0] for c in gw.ingest.calls] == [b'{"value": 0}', b'{"value": 1}', b'{"value": 2}']
    assert [c[2] for c in gw.ingest.calls] == [False, True, True]  # durable = QoS > 0
    origin = gw.ingest.calls[1][1]
    assert (origin.protocol, origin.device_hint, origin.username, origin.topic) == (
        "mqtt", "d1", "d1", "factory/plant/line1/d1")


async def test_puback_arrives_only_after_ingest_returned(gw: Gateway) -> None:
    gw.ingest.delay = 0.2

    def run() -> tuple[float, float]:
        d1 = connect(gw.port, "d1-client", "d1")
        qos1 = publish(d1, "devices/d1/temperature", b"21.5", 1)
        qos2 = publish(d1, "devices/d1/temperature", b"21.6", 2)
        d1.close()
        return qos1, qos2

    qos1, qos2 = await asyncio.to_thread(run)
    assert qos1 >= 0.2 and qos2 >= 0.2
    assert gw.ingest.committed == [b"21.5", b"21.6"]


async def test_late_subscriber_gets_the_last_reading_retained(gw: Gateway) -> None:
    def run() -> list[Any]:
        d1 = connect(gw.port, "d1-client", "d1")
        publish(d1, "factory/plant/line1/d1", b"1.0")
        publish(d1, "factory/plant/line1/d1", b"2.0")  # not flagged retain by the sensor
        d1.close()
        ops = connect(gw.port, "dash", "ops")
        assert ops.subscribe("factory/#") == 1
        got = ops.wait_messages(1)
        ops.close()
        return got

    got = await asyncio.to_thread(run)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        ("factory/plant/line1/d1", b"2.0", True)]


async def test_wildcard_subscriptions(gw: Gateway) -> None:
    def run() -> list[str]:
        ops = connect(gw.port, "dash", "ops")
        ops.subscribe("factory/+/line1/#")
        ops.subscribe("devices/+/temperature")
        d1 = connect(gw.port, "d1-client", "d1")
        for topic in ("factory/p/line1/d1", "factory/p/line2/d1", "devices/d1/temperature",
                      "devices/d1/humidity", "factory/d1/line1/x"):
            publish(d1, topic, b"1")
        ops.wait_messages(3)
        time.sleep(0.2)  # nothing else may arrive
        d1.close()
        ops.close()
        return sorted(m.topic for m in ops.messages)

    assert await asyncio.to_thread(run) == [
        "devices/d1/temperature", "factory/d1/line1/x", "factory/p/line1/d1"]


async def test_last_will_on_abrupt_disconnect_only(gw: Gateway) -> None:
    def run() -> list[Any]:
        ops = connect(gw.port, "dash", "ops")
        ops.subscribe("devices/+/status")
        polite = connect(gw.port, "d1-client", "d1", will=("devices/d1/status", b"gone", 1,
                                                            False))
        polite.close()  # DISCONNECT: the will is discarded
        rude = connect(gw.port, "d2-client", "d2", will=("devices/d2/status", b"lost", 1,
                                                          False))
        rude.paho.loop_stop()
        sock = rude.paho.socket()
        assert isinstance(sock, socket.socket)
        sock.close()  # no DISCONNECT
        got = ops.wait_messages(1)
        time.sleep(0.2)
        ops.close()
        return got

    got = await asyncio.to_thread(run)
    assert [(m.topic, m.payload) for m in got] == [("devices/d2/status", b"lost")]
    assert gw.server.stats()["wills_published"] == 1


async def test_keepalive_timeout_closes_and_publishes_will(gw: Gateway) -> None:
    def run() -> tuple[float, list[Any]]:
        ops = connect(gw.port, "dash", "ops")
        ops.subscribe("devices/+/status")
        silent = connect(gw.port, "d2-client", "d2", keepalive=1,
                         will=("devices/d2/status", b"timeout", 0, False))
        silent.paho.loop_stop()  # stops paho's PINGREQs: the client goes silent
        t0 = time.monotonic()
        got = ops.wait_messages(1, timeout=6)
        elapsed = time.monotonic() - t0
        ops.close()
        return elapsed, got

    elapsed, got = await asyncio.to_thread(run)
    assert [m.payload for m in got] == [b"timeout"]
    assert 1.4 <= elapsed <= 3.5  # 1.5 × keepalive, swept once a second
    assert gw.server.stats()["timeouts"] == {"keepalive": 1}


async def test_auth_failures(gw: Gateway) -> None:
    def run() -> list[str]:
        out = []
        for user, pw in ((None, None), ("d1", "wrong"), ("nobody", "x")):
            c = connect(gw.port, "x", user, password=pw)
            assert c.connack.is_failure
            out.append(str(c.connack))
        return out

    reasons = await asyncio.to_thread(run)
    assert reasons == ["Not authorized", "Bad user name or password",
                       "Bad user name or password"]
    assert gw.server.stats()["auth_failures"] == {
        "anonymous_refused": 1, "bad_password": 1, "unknown_user": 1}


async def test_exact_connack_codes_on_the_wire(gw: Gateway) -> None:
    """CONNACK 5 for anonymous, 4 for a wrong password (raw bytes, no client library)."""

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    async def try_connect(body_tail: bytes, flags: int) -> bytes:
        reader, writer = await asyncio.open_connection(HOST, gw.port)
        body = s(b"MQTT") + bytes((4, flags, 0, 60)) + s(b"raw") + body_tail
        writer.write(bytes((0x10, len(body))) + body)
        reply = await asyncio.wait_for(reader.read(4), 5)
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # then closed
        writer.close()
        return reply

    assert await try_connect(b"", 0x02) == b"\x20\x02\x00\x05"
    assert await try_connect(s(b"d1") + s(b"nope"), 0xC2) == b"\x20\x02\x00\x04"


async def test_acl_refused_publish_is_acked_but_not_ingested_nor_delivered(gw: Gateway) -> None:
    def run() -> list[Any]:
        ops = connect(gw.port, "dash", "ops")
        ops.subscribe("factory/#")
        d1 = connect(gw.port, "d1-client", "d1")
        publish(d1, "factory/plant/line1/d2", b"spoof", 1)  # PUBACK (documented choice)
        publish(d1, "factory/plant/line1/d1", b"mine", 1)
        got = ops.wait_messages(1)
        time.sleep(0.2)
        d1.close()
        ops.close()
        return got

    got = await asyncio.to_thread(run)
    assert [m.payload for m in got] == [b"mine"]
    assert [c[0] for c in gw.ingest.calls] == [b"mine"]
    assert gw.server.stats()["acl_refused_publish"] == 1


async def test_only_operators_subscribe_to_alerts(gw: Gateway) -> None:
    gw.server.publish("alerts/line1/overheat", b'{"state": "firing"}', retain=True)

    def run() -> tuple[Any, Any, list[Any]]:
        d1 = connect(gw.port, "d1-client", "d1")
        device_code = d1.subscribe("alerts/#")
        d1.close()
        ops = connect(gw.port, "dash", "ops")
        ops_code = ops.subscribe("alerts/#")
        got = ops.wait_messages(1)
        ops.close()
        return device_code, ops_code, got

    device_code, ops_code, got = await asyncio.to_thread(run)
    assert device_code.is_failure  # SUBACK 0x80
    assert ops_code == 1
    assert [(m.topic, m.retain) for m in got] == [("alerts/line1/overheat", True)]
    assert gw.server.stats()["acl_refused_subscribe"] == 1


async def test_operator_alert_ack_reaches_internal_subscriber(gw: Gateway) -> None:
    acks: list[Message] = []
    gw.server.subscribe_internal("alerts/ack/#", acks.append)

    def run() -> None:
        ops = connect(gw.port, "dash", "ops")
        publish(ops, "alerts/ack/line1/overheat", b'{"by": "ops"}', 1)
        ops.close()

    await asyncio.to_thread(run)
    assert [(m.topic, m.payload, m.username) for m in acks] == [
        ("alerts/ack/line1/overheat", b'{"by": "ops"}', "ops")]
    assert gw.ingest.calls == []  # operator traffic is never a reading


async def test_persistent_session_redelivers_missed_qos1(gw: Gateway) -> None:
    def run() -> list[Any]:
        ops = connect(gw.port, "dash", "ops", clean=False)
        ops.subscribe("factory/#", 1)
        ops.close()
        d1 = connect(gw.port, "d1-client", "d1")
        publish(d1, "factory/p/l/d1", b"while-away", 1)
        d1.close()
        back = connect(gw.port, "dash", "ops", clean=False)
        assert back.connack.is_failure is False
        got = back.wait_messages(1)
        back.close()
        return got

    got = await asyncio.to_thread(run)
    assert [m.payload for m in got][:1] == [b"while-away"]


async def test_websocket_listener(gw: Gateway) -> None:
    ws_port = gw.server.ws_port
    assert ws_port

    def configure(client: mqtt.Client) -> None:
        client.ws_set_options(path="/mqtt")

    def run() -> list[Any]:
        ops = connect(ws_port, "ws-dash", "ops", transport="websockets", configure=configure)
        ops.subscribe("factory/#")
        d1 = connect(ws_port, "ws-d1", "d1", transport="websockets", configure=configure)
        publish(d1, "factory/p/l/d1", b"over-ws", 1)
        tcp = connect(gw.port, "tcp-d1", "d1")  # one topic space across listeners
        publish(tcp, "factory/p/l/d1", b"over-tcp", 1)
        got = ops.wait_messages(2)
        for c in (ops, d1, tcp):
            c.close()
        return got

    got = await asyncio.to_thread(run)
    assert [m.payload for m in got] == [b"over-ws", b"over-tcp"]
    assert [c[0] for c in gw.ingest.calls] == [b"over-ws", b"over-tcp"]


async def test_stats_count_connected_clients(gw: Gateway) -> None:
    def run() -> tuple[Client, Client]:
        return connect(gw.port, "a", "d1"), connect(gw.port, "b", "ops")

    a, b = await asyncio.to_thread(run)
    stats = gw.server.stats()
    assert stats["clients_connected"] == 2
    assert stats["clients_by_role"] == {"device": 1, "operator": 1}
    await asyncio.to_thread(a.close)
    await asyncio.to_thread(b.close)
    await asyncio.sleep(0.1)
    assert gw.server.stats()["clients_connected"] == 0


async def test_shutdown_acknowledges_what_was_committed(creds: Path) -> None:
    """Closing the server while a QoS 1 PUBLISH is committing still delivers its PUBACK."""
    ingest = RecordingIngest(delay=0.3)
    with Authenticator(creds) as auth:
        server = MqttServer(settings(websocket=None), ingest=ingest, auth=auth)
        await server.__aenter__()
        d1 = await asyncio.to_thread(connect, server.port, "d1-client", "d1")
        info = d1.paho.publish("devices/d1/t", b"last", 1)
        for _ in range(500):  # until the PUBLISH is in the pipeline
            if ingest.calls:
                break
            await asyncio.sleep(0.01)
        await server.close()
        await asyncio.to_thread(info.wait_for_publish, 3)
        assert info.is_published()
        d1.paho.loop_stop()
    assert ingest.committed == [b"last"]


async def test_retained_messages_survive_restart(creds: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "retained.msgpack")
    with Authenticator(creds) as auth:
        async with MqttServer(settings(websocket=None, retained_path=path),
                              ingest=RecordingIngest(), auth=auth) as server:
            server.publish("alerts/line1/overheat", b"firing", retain=True)
        async with MqttServer(settings(websocket=None, retained_path=path),
                              ingest=RecordingIngest(), auth=auth) as server:
            ops = await asyncio.to_thread(connect, server.port, "dash", "ops")
            await asyncio.to_thread(ops.subscribe, "alerts/#")
            got = await asyncio.to_thread(ops.wait_messages, 1)
            await asyncio.to_thread(ops.close)
    assert [m.payload for m in got] == [b"firing"]
