"""Operators acknowledge alerts: over MQTT (a real paho client on the gateway's broker, the
operator ACL) and over HTTP (GatewayHttp with the alert routes, HTTP Basic operator auth)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest

from edge.rules import parse_rules
from edge.testing import FakeClock
from gateway.alerts import AlertService, AlertSettings
from gateway.alerts.testing import RecordingBroker, feed, wait_until
from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.http import GatewayHttp
from gateway.mqtt import MqttServer, MqttSettings
from gateway.testing import RecordingIngest

HOST = "127.0.0.1"
PASSWORDS = {"oven-1": "pw-device", "ops": "pw-ops"}
T0 = 1_705_322_400_000
RULES = parse_rules({
    "version": 1,
    "windows": [{"id": "w1s", "kind": "tumbling", "size": "1s", "lateness": "100ms",
                 "idle_timeout": "200ms"}],
    "rules": [{"id": "overheat", "window": "w1s", "match": {"measurement": "temperature"},
               "condition": "max > 90", "clear": "max < 85", "severity": "critical",
               "message": "{device_id} max {max:.1f}"}],
})
KEY = "overheat:oven-1"


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("creds") / "creds.json"
    save_accounts(path, {name: Account(name, "operator" if name == "ops" else "device",
                                       hash_password(pw)) for name, pw in PASSWORDS.items()})
    return path


@dataclass
class Gw:
    svc: AlertService
    server: MqttServer
    http: GatewayHttp
    clock: FakeClock


@pytest.fixture
async def gw(creds: Path, tmp_path: Path) -> AsyncIterator[Gw]:
    clock = FakeClock(wall_ms=T0)
    with Authenticator(creds) as auth:
        async with MqttServer(MqttSettings(host=HOST, port=0), ingest=RecordingIngest(),
                              auth=auth) as server:
            svc = AlertService(AlertSettings(state_path=tmp_path / "a.sqlite3", tick_s=None),
                               mqtt=server, auth=auth, clock=clock, ruleset=RULES)
            http = GatewayHttp(HOST, 0)
            http.add_routes(svc.routes())
            async with svc, http:
                await feed(svc, clock, 1.5, {"oven-1": 95.0})
                assert svc.alert(KEY) is not None
                yield Gw(svc, server, http, clock)


def paho_publish(port: int, user: str, topic: str, payload: bytes, retain: bool = False
                 ) -> None:
    """Connect, publish at QoS 1, wait for the PUBACK, disconnect (blocking: a thread)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-acker",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(user, PASSWORDS[user])
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(HOST, port, 30)
    client.loop_start()
    try:
        assert connected.wait(10)
        info = client.publish(topic, payload, 1, retain)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_ack_over_mqtt_from_an_operator(gw: Gw) -> None:
    states: list[Any] = []
    gw.server.subscribe_internal("alerts/critical/#", lambda m: states.append(
        json.loads(m.payload)))
    await asyncio.to_thread(paho_publish, gw.server.port, "ops", f"alerts/ack/{KEY}",
                            b'{"by": "alice"}')
    await wait_until(lambda: bool(states))
    assert (states[0]["state"], states[0]["acked_by"]) == ("acknowledged", "alice")
    assert gw.svc.alert(KEY)["acked_by"] == "alice"  # type: ignore[index]
    assert gw.svc.stats()["acks"] == {"mqtt": 1}
    # a second acknowledgement changes nothing and is counted as refused
    await asyncio.to_thread(paho_publish, gw.server.port, "ops", f"alerts/ack/{KEY}", b"")
    await wait_until(lambda: gw.svc.stats()["acks"].get("mqtt_refused") == 1)
    assert len(states) == 1


async def test_a_device_cannot_ack_over_mqtt(gw: Gw) -> None:
    await asyncio.to_thread(paho_publish, gw.server.port, "oven-1", f"alerts/ack/{KEY}",
                            b'{"by": "me"}')
    await asyncio.sleep(0.2)
    assert gw.svc.alert(KEY)["state"] == "firing"  # type: ignore[index]
    assert gw.server.stats()["acl_refused_publish"] >= 1


async def test_ack_payload_variants_and_retained_acks_are_cleared(tmp_path: Path) -> None:
    clock = FakeClock(wall_ms=T0)
    broker = RecordingBroker()
    svc = AlertService(AlertSettings(state_path=tmp_path / "a.sqlite3", tick_s=None),
                       mqtt=broker, clock=clock, ruleset=RULES)
    async with svc:
        await feed(svc, clock, 1.5, {"oven-1": 95.0})
        await broker.inject(f"alerts/ack/{KEY}", b"not json", retain=True)
        alert = svc.alert(KEY)
        assert alert is not None and alert["acked_by"] == "mqtt-operator"
        assert svc.stats()["acks"] == {"mqtt": 1, "mqtt_invalid": 1}
        assert broker.published[-1].topic == f"alerts/ack/{KEY}"
        assert broker.published[-1].payload == b"" and broker.published[-1].retain
        await broker.inject("alerts/ack/nope:x", b"")
        assert svc.stats()["acks"]["mqtt_refused"] == 1


def basic(user: str, password: str | None = None) -> aiohttp.BasicAuth:
    return aiohttp.BasicAuth(user, PASSWORDS.get(user, "") if password is None else password)


async def test_ack_over_http(gw: Gw) -> None:
    url = f"{gw.http.url}/alerts/{KEY}/ack"
    async with aiohttp.ClientSession() as s:
        async with s.post(url) as r:
            assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
        async with s.post(url, auth=basic("ops", "wrong")) as r:
            assert r.status == 401
        async with s.post(url, auth=basic("oven-1")) as r:
            assert r.status == 403
        async with s.post(f"{gw.http.url}/alerts/overheat:nobody/ack", auth=basic("ops")) as r:
            assert r.status == 404
        async with s.post(url, auth=basic("ops")) as r:
            assert r.status == 200
            body = await r.json()
            assert (body["acknowledged"]["state"], body["acknowledged"]["acked_by"]) == (
                "acknowledged", "ops")
        async with s.post(url, auth=basic("ops")) as r:
            assert r.status == 409 and (await r.json())["alert"]["state"] == "acknowledged"
        async with s.get(f"{gw.http.url}/alerts?recent=5", auth=basic("ops")) as r:
            assert r.status == 200
            listing = await r.json()
        async with s.get(f"{gw.http.url}/alerts") as r:
            assert r.status == 401
    assert [a["dedup_key"] for a in listing["active"]] == [KEY]
    assert [t["transition"] for t in listing["recent"]] == ["acknowledged", "firing"]
    assert listing["recent"][0]["deliveries"]["mqtt"]["status"] in ("pending", "delivered")
    assert listing["stats"]["acks"]["http"] == 1


async def test_http_routes_refuse_everyone_without_a_credentials_file(tmp_path: Path) -> None:
    clock = FakeClock(wall_ms=T0)
    svc = AlertService(AlertSettings(state_path=tmp_path / "a.sqlite3", tick_s=None),
                       clock=clock, ruleset=RULES)
    http = GatewayHttp(HOST, 0)
    http.add_routes(svc.routes())
    async with svc, http, aiohttp.ClientSession() as s:
        async with s.get(f"{http.url}/alerts", auth=basic("ops")) as r:
            assert r.status == 403
