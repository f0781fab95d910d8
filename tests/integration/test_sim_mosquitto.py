"""1,000 simulated devices against a real Mosquitto on 127.0.0.1, checked against the ledger.

A paho subscriber on ``factory/#`` (QoS 1) records what the broker delivered.  The checks:
every reading the ledger says was acknowledged was delivered at least once on its device's
topic, and the multiset of delivered (topic, payload) pairs equals the multiset sent —
duplicates and malformed payloads included (a broker passes them through).  What was sent is
recomputed byte for byte with `firmware_sim.device.generate` from the run's start time.

The broker is the session fixture ``mosquitto`` (tests/integration/conftest.py) when it is
defined and up; otherwise this module starts its own ``mosquitto`` on a free port.  Under
CI=true a missing broker fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import parse_config
from edge.config.sim import SimConfig
from firmware_sim.device import expand_fleet, generate
from firmware_sim.fleet import Fleet
from firmware_sim.ledger import Ledger

DEVICES = 1000
DURATION_S = 4.0


def _missing(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and Mosquitto is missing: {why}", pytrace=False)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def own_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A private broker, for when the shared `mosquitto` fixture is not there."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        _missing("the mosquitto binary is not installed (apt-get install mosquitto)")
    assert binary is not None
    port = _free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"max_queued_messages 100000\nlog_type error\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    _missing(f"mosquitto did not start on port {port}: {err}")
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> tuple[str, int]:
    try:
        ep = request.getfixturevalue("mosquitto")
    except pytest.FixtureLookupError:
        pass
    except pytest.skip.Exception:
        # the shared broker is not up here; a private one will do (CI fails before this)
        pass
    else:
        return str(ep.host), int(ep.port)
    return tuple(request.getfixturevalue("own_mosquitto"))  # type: ignore[return-value]


class Subscriber:
    """paho on its own thread, QoS 1 on factory/#, keeping (topic, payload) of our devices."""

    def __init__(self, host: str, port: int, prefix: str):
        self.prefix = prefix
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"sim-check-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("subscriber did not get its SUBACK")

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe("factory/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # the broker may be shared with other tests: keep only our fleet's messages
        if msg.topic.rsplit("/", 1)[-1].startswith(self.prefix):
            with self._lock:
                self.got.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.got) >= n:
                    break
            time.sleep(0.05)
        time.sleep(0.5)  # anything beyond n (it must not be) gets a chance to show up

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_every_acknowledged_reading_reaches_a_subscriber(broker: tuple[str, int],
                                                               tmp_path) -> None:
    host, port = broker
    prefix = f"it{uuid.uuid4().hex[:6]}_"
    ledger = tmp_path / "ledger.sqlite"
    cfg = parse_config({
        "seed": 11, "duration_s": DURATION_S, "connect_rate": 1000, "drain_timeout_s": 10,
        "ledger": str(ledger),
        "target": {"host": host, "port": port},
        "fleet": [
            {"name": "t", "count": DEVICES // 2, "kind": "temperature", "lines": [1, 2, 3],
             "id_template": prefix + "t{n:04d}_line{line}"},
            {"name": "p", "count": DEVICES // 2, "kind": "pressure", "lines": [1, 2, 3],
             "id_template": prefix + "p{n:04d}_line{line}"}],
        "faults": {"duplicate": {"rate": 0.01}, "malformed": {"rate": 0.01},
                   "spike": {"rate": 0.01}, "late": {"rate": 0.005, "delay_s": 1.0}},
    }, SimConfig, environ={})
    sub = Subscriber(host, port, prefix)
    try:
        async with Fleet(cfg) as fleet:
            summary = await fleet.run()
        sub.wait_for(summary["sent"], timeout=30)
    finally:
        sub.close()
    final = fleet.summary()

    assert final["connected"] == DEVICES and final["connect_failures"] == {}
    assert final["generated"] == final["acknowledged"] + final["unconfirmed"] \
        + final["failed_total"]
    # 1000 devices at 1 Hz for 4 s, plus duplicates and bursts of faults
    assert final["generated"] >= DEVICES * DURATION_S
    assert final["acknowledged"] / final["generated"] > 0.99, final
    assert final["faults"].get("duplicate", 0) > 0 and final["faults"].get("malformed", 0) > 0

    # what was sent, byte for byte: the run is deterministic given its start time
    expected = generate(cfg, final["start_ms"], DURATION_S)
    payload_of = {(e.device_id, e.measurement, e.seq): e.payload
                  for es in expected.values() for e in es}
    topic_of = {s.device_id: s.topic for s in expand_fleet(cfg)}
    with Ledger.open(ledger) as led:
        rows = list(led)
    assert len(rows) == final["generated"] == sum(len(es) for es in expected.values())
    assert all(r.sent and r.qos == 1 and r.topic == topic_of[r.device_id] for r in rows)
    assert final["retransmitted"] == 0

    received = Counter(sub.got)
    # every acknowledged QoS 1 reading was delivered at least once, on its device's topic
    missing = [r.key for r in rows if r.acked
               and received[(r.topic, payload_of[r.key])] == 0]
    assert not missing, f"acknowledged but never delivered: {missing[:10]}"
    # and what was delivered is exactly what was sent: duplicates twice, malformed included
    sent = Counter((topic_of[e.device_id], e.payload) for es in expected.values() for e in es)
    assert received == sent
