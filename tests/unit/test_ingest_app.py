"""`fieldlink cloud ingest` as a process: embedded bus, a signed batch, clean SIGTERM exit."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

from cloud.bus.embedded import EmbeddedBus
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Reading
from edge.signing import sign_request

SECRET = "secret-of-gw-1-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, port: int, key: str = "facility_line") -> Path:
    path = tmp_path / "cloud.yaml"
    path.write_text(f"""
cloud:
  data_dir: {tmp_path / 'data'}
ingest:
  port: {port}
  gateways:
    gw-1: {SECRET}
kafka:
  bootstrap_servers: []
  key: {key}
  topics:
    readings: {{name: r, partitions: 2}}
influxdb: {{enabled: false}}
web: {{enabled: false}}
http: {{enabled: false}}
logging: {{level: info, json: true}}
""")
    return path


async def test_serves_a_batch_then_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    cfg = _config(tmp_path, port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "cloud", "ingest", "--config", str(cfg),
        stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "ingest did not become healthy"
                await asyncio.sleep(0.1)
            rs = [Reading("dev-1", 1_705_322_445_000 + i, float(i), line="1", seq=i)
                  for i in range(10)]
            frame = encode_batch(Batch("gw-1", 1, 1_705_322_445_000, rs))
            headers = sign_request(SECRET, "gw-1", frame, time.time_ns() // 1_000_000)
            headers["Content-Type"] = "application/vnd.fieldlink.batch"
            async with http.post(url + "/v1/batches", data=frame, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    logs = [json.loads(line) for line in (await proc.stderr.read()).decode().splitlines()
            if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "ingest stopping" in messages and "ingest stopped" in messages
    assert not [e for e in logs if e["level"] in ("error", "critical")]
    # what it acknowledged is in the embedded bus for the sinks of other processes
    async with EmbeddedBus(tmp_path / "data" / "bus.sqlite3") as bus, \
            bus.consumer("check", ["r"]) as consumer:
        records = await consumer.getmany(timeout_ms=2000)
    assert [r for rec in records for r in decode_batch(rec.value).readings] == rs


def test_invalid_config_exits_1(tmp_path: Path) -> None:
    from cloud.ingest.app import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  port: not-a-port\n")
    assert main(["--config", str(bad)]) == 1


def test_every_record_key_mode_of_the_config_reaches_the_settings(tmp_path: Path) -> None:
    from cloud.ingest.records import KEY_MODES
    from cloud.ingest.settings import IngestSettings
    from edge.config.cloud import load_cloud_config

    for mode in KEY_MODES:
        cfg = load_cloud_config(_config(tmp_path, 8700, key=mode))
        assert IngestSettings.from_config(cfg).key_mode == mode
