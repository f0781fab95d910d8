"""Local alerts end to end, with no cloud: a sensor publishes over MQTT (paho, a device
account), the gateway composition (MqttServer → Pipeline → Buffer, AlertService observing the
pipeline) raises an overheat alert, and an operator sees it with the Debian `mosquitto_sub`
binary on ``alerts/#`` and a PagerDuty-style webhook receiver on 127.0.0.1 gets it.  The
alert service then crashes (no shutdown) and the gateway restarts on the same port and files;
the alert neither fires again nor is lost: it resolves once, with hysteresis (87 °C does not
clear it, 80 °C does).

Without `mosquitto_sub` the test skips locally and FAILS under CI=true."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.alerts import AlertService, AlertSettings, WebhookTarget
from gateway.alerts.testing import WebhookReceiver, wait_until
from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.buffer import Buffer, BufferSettings
from gateway.mqtt import MqttServer, MqttSettings
from gateway.pipeline import Pipeline

HOST = "127.0.0.1"
PASSWORDS = {"oven-1": "pw-oven", "ops": "pw-ops"}
RULES = """
version: 1
windows:
  - {id: w1s, kind: tumbling, size: 1s, lateness: 200ms, idle_timeout: 300ms}
rules:
  - id: overheat
    window: w1s
    match: {measurement: temperature}
    condition: "max > 90"
    clear: "max < 85"
    severity: critical
    message: "{device_id} max {max:.1f} °C > 90 in window {start}"
"""


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install -y mosquitto-clients)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Site:
    dir: Path
    port: int
    creds: Path
    hook: WebhookReceiver


@dataclass
class Running:
    alerts: AlertService
    server: MqttServer
    buffer: Buffer


@asynccontextmanager
async def gateway(site: Site) -> AsyncIterator[Running]:
    """The gateway's composition, as `gateway.app` wires it: buffer, alert service observing
    the pipeline, MQTT ingress last, then the broker attached to the alerts."""
    async with AsyncExitStack() as stack:
        auth = stack.enter_context(Authenticator(site.creds))
        buffer = await stack.enter_async_context(
            Buffer(BufferSettings(path=str(site.dir / "buffer.sqlite3"))))
        pipeline = Pipeline(buffer)
        alerts = AlertService(
            AlertSettings(state_path=site.dir / "alerts.sqlite3",
                          rules_file=site.dir / "rules.yaml", gateway_id="gw-e2e",
                          webhooks=(WebhookTarget(site.hook.url, "pagerduty", "RK-e2e"),),
                          retry_base_s=0.05, retry_cap_s=0.5),
            buffer=buffer, auth=auth)
        await stack.enter_async_context(alerts)
        pipeline.add_observer(alerts.observe)
        server = MqttServer(MqttSettings(host=HOST, port=site.port,
                                         retained_path=str(site.dir / "retained.msgpack")),
                            ingest=pipeline, auth=auth)
        await stack.enter_async_context(server)
        alerts.attach_mqtt(server)
        stack.callback(alerts.detach_mqtt)
        yield Running(alerts, server, buffer)


class Sensor:
    """oven-1 on paho: one temperature reading every 100 ms, QoS 1, in a thread."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="oven-1",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set("oven-1", PASSWORDS["oven-1"])
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(HOST, port, 30)
        self.client.loop_start()
        assert connected.wait(10), "sensor could not connect"

    def send(self, value: float, seconds: float) -> None:
        for _ in range(round(seconds * 10)):
            body = {"device_id": "oven-1", "device_type": "temperature", "unit": "celsius",
                    "timestamp": time.time_ns() // 1_000_000, "value": value}
            info = self.client.publish("factory/plant-1/line-1/oven-1", json.dumps(body), 1)
            info.wait_for_publish(5)
            time.sleep(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Operator:
    """`mosquitto_sub` on alerts/# with an operator account; lines are `retained topic json`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.messages: list[tuple[bool, str, dict[str, Any]]] = []
        self.reader = asyncio.get_running_loop().create_task(self._read(), name="e2e-sub")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            retained, topic, payload = line.decode().rstrip("\n").split(" ", 2)
            if payload:
                self.messages.append((retained == "1", topic, json.loads(payload)))

    def transitions(self) -> list[tuple[str, int, int]]:
        """Distinct (transition, incarnation, at_ms) seen, in order."""
        seen: list[tuple[str, int, int]] = []
        for _, _, body in self.messages:
            key = (body["transition"], body["incarnation"], body["at_ms"])
            if key not in seen:
                seen.append(key)
        return seen

    async def close(self) -> str:
        self.proc.terminate()
        await self.proc.wait()
        await asyncio.wait_for(self.reader, 5)      # the rest of stdout, up to EOF
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


async def sensor_send(sensor: Sensor, value: float, seconds: float) -> None:
    await asyncio.to_thread(sensor.send, value, seconds)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    creds = tmp_path / "credentials.json"
    save_accounts(creds, {name: Account(name, "operator" if name == "ops" else "device",
                                        hash_password(pw)) for name, pw in PASSWORDS.items()})
    (tmp_path / "rules.yaml").write_text(RULES)
    async with WebhookReceiver() as hook:
        yield Site(tmp_path, free_port(), creds, hook)


async def test_alert_reaches_operators_without_cloud_and_survives_a_crash(site: Site) -> None:
    sub = require_binary("mosquitto_sub")
    topic = "alerts/critical/overheat/oven-1"
    async with gateway(site) as gw:
        operator = Operator(await asyncio.create_subprocess_exec(
            sub, "-h", HOST, "-p", str(site.port), "-u", "ops", "-P", PASSWORDS["ops"],
            "-t", "alerts/#", "-q", "1", "-F", "%r %t %p", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE))
        await wait_until(lambda: gw.server.stats()["clients_connected"] == 1, 10)
        sensor = await asyncio.to_thread(Sensor, site.port)
        await sensor_send(sensor, 95.0, 2.0)
        await wait_until(lambda: len(site.hook.bodies) == 1, 10)
        await wait_until(lambda: any(b["state"] == "firing" for _, _, b in operator.messages))
        await wait_until(lambda: gw.alerts.stats()["outbox_depth"] == 0)
        await asyncio.sleep(0.3)               # let the delivery records reach the file
        retained, seen_topic, firing = operator.messages[0]
        assert (retained, seen_topic) == (False, topic)
        assert (firing["state"], firing["dedup_key"], firing["severity"]) == (
            "firing", "overheat:oven-1", "critical")
        assert firing["message"].startswith("oven-1 max 95.0 °C > 90")
        assert site.hook.bodies[0]["event_action"] == "trigger"
        assert site.hook.bodies[0]["payload"]["source"] == "oven-1"
        assert gw.buffer.stats().rows.get("alert") == 1      # queued for the cloud too
        gw.alerts.abort()                      # the alert service dies without a shutdown
        await asyncio.to_thread(sensor.close)

    async with gateway(site) as gw:            # the gateway restarts: same port, same files
        assert gw.alerts.alert("overheat:oven-1")["state"] == "firing"  # type: ignore[index]
        await wait_until(lambda: gw.server.stats()["clients_connected"] == 1, 15)
        sensor = await asyncio.to_thread(Sensor, site.port)
        await sensor_send(sensor, 95.0, 1.0)   # still hot: no second firing
        await sensor_send(sensor, 87.0, 1.5)   # below 90 but not below 85: still firing
        assert gw.alerts.alert("overheat:oven-1") is not None
        await sensor_send(sensor, 80.0, 1.5)   # clears
        await wait_until(lambda: len(site.hook.bodies) == 2, 10)
        await wait_until(lambda: any(b["state"] == "resolved"
                                     for _, _, b in operator.messages))
        await asyncio.to_thread(sensor.close)
        # the buffer is a delivery channel of its own: it may land after MQTT and the webhook
        await wait_until(lambda: gw.buffer.stats().rows.get("alert", 0) >= 2, 10)
        assert gw.buffer.stats().rows.get("alert") == 2     # firing and resolved, once each
        err = await operator.close()

    assert [(t, i) for t, i, _ in operator.transitions()] == [("firing", 1), ("resolved", 1)], err
    live = [b["transition"] for retained, _, b in operator.messages if not retained]
    assert live == ["firing", "resolved"]
    assert [b["event_action"] for b in site.hook.bodies] == ["trigger", "resolve"]
    assert operator.messages[-1][2]["resolved_at"] is not None
