"""The gateway process as an operator runs it: `fieldlink gateway run --config FILE`.

The gateway's promise: a QoS 1 PUBACK is sent only after the reading is committed.  Proof:
publish with paho, SIGKILL the process right after PUBACKs arrive, reopen the buffer and find
every acknowledged reading in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.buffer import Buffer, BufferSettings

ROOT = Path(__file__).resolve().parents[2]
FIELDLINK = [sys.executable, "-m", "edge.cli"]
DEVICE = "sensor_0001_line1"
PASSWORD = "s3cret-device-pw"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway_files(tmp_path: Path) -> dict:
    creds = tmp_path / "creds.json"
    subprocess.run([*FIELDLINK, "gateway", "devices", "--file", str(creds), "add", DEVICE,
                    "--password-stdin"], input=PASSWORD + "\n", text=True, check=True,
                   capture_output=True, cwd=ROOT)
    ports = {"mqtt": free_port(), "http": free_port(), "coap": free_port(socket.SOCK_DGRAM)}
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"""
gateway:
  id: gw-test
  data_dir: {tmp_path / "data"}
mqtt:
  host: 127.0.0.1
  port: {ports["mqtt"]}
  credentials_file: {creds}
coap:
  host: 127.0.0.1
  port: {ports["coap"]}
buffer:
  commit_interval_ms: 5
uplink:
  enabled: false
alerts:
  rules_file: {ROOT / "config" / "rules.yaml"}
http:
  host: 127.0.0.1
  port: {ports["http"]}
""")
    return {"config": cfg, "ports": ports, "data": tmp_path / "data"}


def start_gateway(files: dict) -> subprocess.Popen:
    proc = subprocess.Popen([*FIELDLINK, "gateway", "run", "--config", str(files["config"])],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}: {proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", files["ports"]["mqtt"]), 0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("gateway did not start listening within 30 s")


def message(seq: int) -> bytes:
    return json.dumps({"device_id": DEVICE, "device_type": "temperature",
                       "timestamp": 1705322445000 + seq * 1000, "value": 20 + seq / 100,
                       "unit": "celsius", "seq": seq,
                       "location": {"facility": "factory_a", "line": 1, "zone": "assembly"}}
                      ).encode()


async def buffered_seqs(data_dir: Path) -> set[int]:
    settings = BufferSettings(path=str(data_dir / "buffer.sqlite3"))
    async with Buffer(settings) as buf:
        rows = await buf.peek(1_000_000)
    return {rec.seq for _, _, _, rec in rows if getattr(rec, "device_id", None) == DEVICE}


def test_sigkill_after_puback_loses_nothing(gateway_files: dict) -> None:
    proc = start_gateway(gateway_files)
    acked: set[int] = set()
    mid_to_seq: dict[int, int] = {}
    early: set[int] = set()  # PUBACKs that beat `publish()` returning their mid
    lock = threading.Lock()
    enough = threading.Event()

    def ack(seq: int) -> None:
        acked.add(seq)
        if len(acked) >= 300:
            enough.set()

    def on_publish(client, userdata, mid, reason_code=None, properties=None):
        with lock:
            seq = mid_to_seq.get(mid)
            if seq is None:
                early.add(mid)
            else:
                ack(seq)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="seqpub",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(DEVICE, PASSWORD)
    client.on_publish = on_publish
    client.max_inflight_messages_set(50)
    client.connect("127.0.0.1", gateway_files["ports"]["mqtt"])
    client.loop_start()
    try:
        for seq in range(2000):
            # not under `lock`: paho runs on_publish holding its own lock, which publish()
            # takes too
            info = client.publish(f"factory/line1/temp/{DEVICE}", message(seq), qos=1)
            with lock:
                if info.mid in early:
                    early.discard(info.mid)
                    ack(seq)
                else:
                    mid_to_seq[info.mid] = seq
            if enough.is_set():
                break
            time.sleep(0.001)
        assert enough.wait(30), f"only {len(acked)} PUBACKs arrived"
        os.kill(proc.pid, signal.SIGKILL)  # the power cut, right after the PUBACKs
        proc.wait(10)
    finally:
        client.loop_stop()
        if proc.poll() is None:
            proc.kill()
    with lock:
        acked_now = set(acked)
    stored = asyncio.run(buffered_seqs(gateway_files["data"]))
    missing = acked_now - stored
    assert not missing, f"{len(missing)} acknowledged readings lost: {sorted(missing)[:10]}"

    # A restart opens the same buffer and serves health and metrics.
    proc = start_gateway(gateway_files)
    try:
        base = f"http://127.0.0.1:{gateway_files['ports']['http']}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import paho.mqtt.publish as publish

        publish.single(f"factory/line1/temp/{DEVICE}", message(99_999), qos=1,
                       hostname="127.0.0.1", port=gateway_files["ports"]["mqtt"],
                       auth={"username": DEVICE, "password": PASSWORD},
                       protocol=mqtt.MQTTv311)
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "fieldlink_gateway_buffer_rows" in text
        assert "fieldlink_gateway_pipeline_payloads_total" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_config_names_file_key_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("buffer:\n  max_bytes: -5\n")
    proc = subprocess.run([*FIELDLINK, "gateway", "run", "--config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "buffer.max_bytes" in proc.stderr


def test_systemd_ready_watchdog_and_stopping(gateway_files: dict, tmp_path: Path) -> None:
    """Under systemd (Type=notify, WatchdogSec) the gateway says READY once listening, pings
    the watchdog while healthy, and says STOPPING on SIGTERM."""
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([*FIELDLINK, "gateway", "run", "--config",
                             str(gateway_files["config"])], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen.count("WATCHDOG=1") < 2:
            seen += sock.recv(4096).decode().splitlines()
        assert "READY=1" in seen
        assert seen.index("READY=1") < seen.index("WATCHDOG=1")
        # the listener is bound by the time READY was sent
        with socket.create_connection(("127.0.0.1", gateway_files["ports"]["mqtt"]), 2):
            pass
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().splitlines()
        assert proc.wait(20) == 0
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
