"""The gateway's status page in headless Chromium, on a real running gateway.

The gateway is `gateway.app.Gateway` as `fieldlink gateway run` builds it (buffer, pipeline,
alert service, an uplink to a cloud that is down, MQTT broker, HTTP server), with the status
routes mounted at the end of `_start_optional`.  A paho sensor with a device account
publishes over MQTT — ten readings a second, then an overheat, then a payload that is not
JSON — and an operator looks at /status with HTTP Basic credentials: connected sensors,
readings per second, buffer fill and oldest unsent reading, the uplink down, the firing
alert and the last dead letter's reason.  Without credentials, or with a device account,
the page is refused.  Screenshot: tests/artifacts/status-page.png.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from browser import open_browser, require_chromium, screenshot

from edge.config.gateway import load_gateway_config
from gateway.app import Gateway
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.status import status_routes

HOST = "127.0.0.1"
PASSWORDS = {"oven-1": "pw-oven-1", "ops": "pw-ops-status"}
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
    message: "{device_id} max {max:.1f} C > 90"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class SiteGateway(Gateway):
    """The gateway with the status page mounted the way the composition root is asked to:
    after the optional components (alerts, uplink) exist, before the HTTP server starts."""

    async def _start_optional(self) -> None:
        await super()._start_optional()
        assert self.http is not None
        self.http.add_routes(status_routes(self))


class Sensor:
    """oven-1 on paho (device account): ten readings a second from a thread."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="oven-1",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set("oven-1", PASSWORDS["oven-1"])
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(HOST, port, 30)
        self.client.loop_start()
        assert connected.wait(10), "sensor could not connect"
        self.value = 21.5
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, name="status-test-sensor")
        self.thread.start()

    def publish(self, payload: bytes) -> None:
        self.client.publish("factory/plant-1/line-1/oven-1", payload, 1).wait_for_publish(5)

    def _feed(self) -> None:
        """A reading of `self.value` every 100 ms until `close`."""
        while not self.stop.wait(0.1):
            self.publish(json.dumps({
                "device_id": "oven-1", "device_type": "temperature", "unit": "celsius",
                "timestamp": time.time_ns() // 1_000_000, "value": self.value,
                "battery_voltage": 3.6}).encode())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, str]]:
    creds = tmp_path / "creds.json"
    save_accounts(creds, {
        "oven-1": Account("oven-1", "device", hash_password(PASSWORDS["oven-1"])),
        "ops": Account("ops", "operator", hash_password(PASSWORDS["ops"]))})
    (tmp_path / "rules.yaml").write_text(RULES)
    http_port, mqtt_port = free_port(), free_port()
    cfg_path = tmp_path / "gateway.yaml"
    cfg_path.write_text(f"""
gateway: {{id: gw-site-7, data_dir: {tmp_path / 'data'}}}
mqtt: {{host: {HOST}, port: {mqtt_port}, credentials_file: {creds}}}
coap: {{enabled: false}}
buffer: {{commit_interval_ms: 5, max_bytes: 64MiB}}
uplink: {{url: "http://{HOST}:{free_port()}", gateway_secret: "0123456789abcdef-status"}}
alerts: {{rules_file: {tmp_path / 'rules.yaml'}}}
http: {{host: {HOST}, port: {http_port}}}
""")
    async with SiteGateway(load_gateway_config(cfg_path)) as gw:
        yield gw, f"http://{HOST}:{http_port}"


async def wait_text(page: Any, selector: str, predicate: Any, within_s: float = 20.0) -> str:
    text = ""
    for _ in range(int(within_s / 0.2)):
        text = await page.locator(selector).inner_text()
        if predicate(text):
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{selector}: {text!r} never matched")


async def test_status_page_in_a_real_browser(gateway: tuple[Gateway, str]) -> None:
    require_chromium()
    gw, url = gateway
    sensor = await asyncio.to_thread(Sensor, gw.mqtt.port)
    try:
        async with open_browser() as anonymous:
            # a navigation answered 401 without credentials to offer fails in headless
            # Chromium (ERR_INVALID_AUTH_CREDENTIALS): ask through the context instead
            for path in ("/status", "/status.json"):
                answer = await anonymous.request.get(url + path)
                assert answer.status == 401, path
                assert "Basic" in answer.headers["www-authenticate"]
                assert "oven-1" not in await answer.text()
        async with open_browser(http_credentials={"username": "oven-1",
                                                  "password": PASSWORDS["oven-1"]}) as device:
            answer = await device.request.get(url + "/status.json")
            assert answer.status == 403
        async with open_browser(http_credentials={"username": "ops",
                                                  "password": PASSWORDS["ops"]}) as ops:
            page = await ops.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            resp = await page.goto(url + "/status")
            assert resp is not None and resp.status == 200
            assert await page.locator("#gw").inner_text() == "gw-site-7"
            await wait_text(page, "#sensors", lambda t: t == "1 connected")
            rate = await wait_text(page, "#rate", lambda t: t.replace(".", "").isdigit()
                                   and float(t) > 0)
            assert 2 <= float(rate) <= 30  # ~10 a second
            fill = await wait_text(page, "#fill", lambda t: t.endswith("% full"))
            assert 0 < float(fill.split()[0]) < 100
            # nothing leaves: the cloud is down, so the oldest unsent reading ages
            await wait_text(page, "#buffer-detail",
                            lambda t: "oldest unsent" in t and "oldest unsent —" not in t)
            await wait_text(page, "#uplink", lambda t: t in ("down", "circuit open"))
            sensor.value = 95.0  # overheat: fires when its 1 s window closes
            alert = await wait_text(page, "#alerts", lambda t: "oven-1 max 95.0 C" in t)
            assert "critical" in alert and "firing since" in alert
            await asyncio.to_thread(sensor.publish, b"{not json")
            dead = await wait_text(page, "#deadletters", lambda t: "mqtt" in t and
                                   "none" not in t)
            body = await page.evaluate("fetch('status.json').then(r => r.json())")
            [letter] = body["dead_letters"]["recent"]
            assert letter["reason"] in dead and letter["source"] == "mqtt"
            assert body["readings"]["total"] >= 60 and body["buffer"]["rows"]["raw"] >= 60
            assert body["alerts"]["firing"] == 1
            await screenshot(page, "status-page")
            assert not errors, errors
    finally:
        await asyncio.to_thread(sensor.close)
