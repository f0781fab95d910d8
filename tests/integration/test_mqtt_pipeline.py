"""The broker in front of the real pipeline and SQLite buffer: what a sensor publishes is in
the buffer when its PUBACK arrives, and what the decoder refuses is dead-lettered (and still
acknowledged)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest

from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.buffer import Buffer, BufferSettings
from gateway.mqtt import MqttServer, MqttSettings
from gateway.pipeline import Pipeline

HOST = "127.0.0.1"
NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("creds") / "creds.json"
    save_accounts(path, {"d1": Account("d1", "device", hash_password("pw-d1")),
                         "ops": Account("ops", "operator", hash_password("pw-ops"))})
    return path


@dataclass
class Gateway:
    server: MqttServer
    buffer: Buffer


@pytest.fixture
async def gw(creds: Path, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with Buffer(BufferSettings(path=str(tmp_path / "buffer.sqlite"))) as buffer:
        with Authenticator(creds) as auth:
            async with MqttServer(MqttSettings(host=HOST, port=0), ingest=Pipeline(buffer),
                                  auth=auth) as server:
                yield Gateway(server, buffer)


def client(port: int, user: str, password: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-test",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    c.connect(HOST, port)
    c.loop_start()
    return c


def publish_all(port: int, items: list[tuple[str, bytes]]) -> list[Any]:
    """Publish QoS 1 as d1, waiting for each PUBACK; an operator subscription records what
    subscribers see."""
    seen: list[Any] = []
    ops = client(port, "ops", "pw-ops")
    ops.on_message = lambda c, u, m: seen.append((m.topic, m.payload))
    ops.subscribe("devices/#", 1)
    time.sleep(0.3)
    d1 = client(port, "d1", "pw-d1")
    for topic, payload in items:
        info = d1.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    time.sleep(0.3)
    for c in (d1, ops):
        c.disconnect()
        c.loop_stop()
    return seen


async def test_json_msgpack_and_bare_number_are_in_the_buffer_when_acked(gw: Gateway) -> None:
    items = [
        ("devices/d1/temperature", json.dumps({"device_id": "d1", "timestamp": NOW_MS,
                                               "value": 72.5, "unit": "celsius"}).encode()),
        ("devices/d1/temperature", msgpack.packb({"device_id": "d1", "timestamp": NOW_MS + 1,
                                                  "value": 73.0})),
        ("devices/d1/temperature", b"74.25"),  # the topic names the device
    ]
    seen = await asyncio.to_thread(publish_all, gw.server.port, items)
    rows = await gw.buffer.peek(10)
    readings = [row[3] for row in rows]
    assert sorted(r.value for r in readings) == [72.5, 73.0, 74.25]  # type: ignore[union-attr]
    assert {r.device_id for r in readings} == {"d1"}  # type: ignore[union-attr]
    assert len(seen) == 3
    assert gw.server.stats()["readings_accepted"] == 3


async def test_payload_naming_another_device_is_dead_lettered_but_acked(gw: Gateway) -> None:
    spoof = json.dumps({"device_id": "d2", "timestamp": NOW_MS, "value": 1.0}).encode()
    seen = await asyncio.to_thread(publish_all, gw.server.port,
                                   [("devices/d1/temperature", spoof),
                                    ("devices/d1/temperature", b"not a reading")])
    assert await gw.buffer.peek(10) == []
    letters = await gw.buffer.dead_letters()
    assert sorted(dl.reason for dl in letters) == ["device_mismatch", "malformed_payload"]
    assert {dl.source for dl in letters} == {"mqtt"}
    assert seen == []  # subscribers only see accepted readings
    assert gw.server.stats()["readings_rejected"] == {"device_mismatch": 1,
                                                      "malformed_payload": 1}
