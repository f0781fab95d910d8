"""Click pipeline end to end: collector -> real Kafka -> window job -> real InfluxDB + archive.

The job runs as `fieldlink cloud clicks job` in a subprocess (stopped with SIGTERM), with the
production window (1 minute) and grace (15 minutes): events stamped 30 minutes ago become
final as soon as an event of now moves stream time past their window's end + grace.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest
import yaml

from cloud.bus.kafka import KafkaBus
from cloud.clicks.collector import ClickCollector, CollectorSettings

KEY = "wk_pipeline_test_key"
M = 60_000
REPO = Path(__file__).resolve().parents[2]


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def event(event_type: str, ts_ms: int, user: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "session_id": f"sess_{user}",
            "event_type": event_type, "timestamp": iso(ts_ms),
            "properties": {"email": "someone@example.com", "product_id": "prod_1"},
            "context": {"ip": "10.1.2.3", "locale": "en_US"}}


class Pipeline:
    def __init__(self, tmp: Path, kafka: Any, influxdb: Any) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.bootstrap = kafka.bootstrap_servers
        self.topic = f"web_events_{self.id}"
        self.database = f"clicks_{self.id}"
        self.influx_url = influxdb.url
        self.data_dir = tmp / "data"
        self.config = tmp / "secondary.yaml"
        self.config.write_text(yaml.safe_dump({
            "cloud": {"data_dir": str(self.data_dir)},
            "kafka": {"bootstrap_servers": [kafka.bootstrap_servers], "compression": "none"},
            "influxdb": {"url": influxdb.url, "database": self.database, "retention": "1d"},
            "clicks": {"write_keys": {"shop": KEY}, "port": 0, "job_port": 0,
                       "topic": {"name": self.topic, "partitions": 3},
                       "deadletter_topic": {"name": f"{self.topic}.dl", "partitions": 1},
                       "group": f"clicks-{self.id}", "provisional_every_s": 0.5,
                       "checkpoint_every_s": 0.5},
            "logging": {"level": "info"},
        }))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "job.log"

    def start_job(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.clicks.app", "job", "-c", str(self.config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))

    def stop_job(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    async def query(self, q: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(
                f"{self.influx_url}/query", params={"db": self.database, "q": q,
                                                    "epoch": "ms"}) as resp:
            body = await resp.json()
        series = body["results"][0].get("series") or []
        return [dict(zip(s["columns"], row)) for s in series for row in s["values"]]

    async def wait_points(self, where: str, n: int, within_s: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within_s
        while True:
            rows = await self.query(f"SELECT * FROM web_events_1m WHERE {where}")
            if len(rows) >= n:
                return rows
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"the job exited {self.proc.returncode}:\n{self.log.read_text()}")
            assert time.monotonic() < deadline, f"{where}: {rows}\n{self.log.read_text()[-3000:]}"
            await asyncio.sleep(0.5)


@pytest.fixture
async def pipeline(tmp_path: Path, kafka: Any, influxdb: Any) -> AsyncIterator[
        tuple[Pipeline, ClickCollector]]:
    p = Pipeline(tmp_path, kafka, influxdb)
    settings = CollectorSettings(write_keys={"shop": KEY}, ids_path=tmp_path / "ids.sqlite3",
                                 topic=p.topic, partitions=3, deadletter_topic=f"{p.topic}.dl")
    async with KafkaBus([kafka.bootstrap_servers], compression=None) as bus:
        assert await bus.wait_connected(30)
        async with ClickCollector(settings, bus) as collector:
            assert await collector.wait_ready(30)
            try:
                yield p, collector
            finally:
                if p.proc is not None:
                    p.proc.kill()
                    p.proc.wait()
                async with aiohttp.ClientSession() as s:
                    await s.post(f"{p.influx_url}/query",
                                 params={"q": f'DROP DATABASE "{p.database}"'})


async def send(collector: ClickCollector, events: list[dict[str, Any]]) -> dict[str, Any]:
    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    async with aiohttp.ClientSession() as s, s.post(
            collector.url + "/v1/batch", json={"batch": events},
            headers={"Authorization": auth}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_windows_reach_influxdb_and_the_archive(pipeline: Any) -> None:
    p, collector = pipeline
    now = int(time.time() * 1000)
    old = now - 30 * M
    start = old - old % M
    batch = [event("click", start + i * 1000, f"u{i % 4}") for i in range(10)]
    batch += [event("add_to_cart", start + 30_000, "u1"), event("add_to_cart", start + 31_000,
                                                                "u2")]
    assert (await send(collector, batch))["accepted"] == 12
    p.start_job()
    # the open window of now shows up provisionally (final=false) ...
    assert (await send(collector, [event("view", now, "u9")]))["accepted"] == 1
    rows = await p.wait_points(f"time = {now - now % M}ms", 1)
    assert rows[0]["event_type"] == "view" and rows[0]["final"] is False
    # ... and stream time = now closed the minute 30 minutes ago: final points
    rows = await p.wait_points(f"time = {start}ms AND final = true", 2)
    got = {r["event_type"]: (r["events"], r["users"], r["sessions"]) for r in rows}
    assert got == {"click": (10, 4, 4), "add_to_cart": (2, 2, 2)}
    # an event for that minute now is later than the grace: counted, not merged
    assert (await send(collector, [event("click", start + 5, "u7")]))["accepted"] == 1
    await asyncio.sleep(3)
    rows = await p.query(f"SELECT events FROM web_events_1m WHERE time = {start}ms AND "
                         "event_type = 'click'")
    assert rows[0]["events"] == 10
    assert p.stop_job() == 0  # SIGTERM: checkpoint, commit, exit 0
    log = p.log.read_text()
    assert "click window job stopping" in log
    archive = list((p.data_dir / "archive" / "web_events_1m").rglob("*.parquet"))
    assert [f.name for f in archive] == [f"minute-{start}.parquet"]
    table = pq.read_table(str(archive[0]))
    assert sorted(zip(table.column("event_type").to_pylist(),
                      table.column("events").to_pylist())) == [("add_to_cart", 2), ("click", 10)]
    # PII never reached the topic
    async with KafkaBus([p.bootstrap], compression=None) as bus:
        async with bus.consumer(f"check-{p.id}", [p.topic]) as c:
            records: list[Any] = []
            async with asyncio.timeout(30):
                while len(records) < 14:
                    records += await c.getmany(timeout_ms=500)
    events = [json.loads(r.value) for r in records]
    assert all("email" not in e["properties"] for e in events)
    assert {e["context"]["ip"] for e in events} == {"10.1.2.0"}
    assert b"someone@example.com" not in b"".join(r.value for r in records)


async def test_restart_resumes_without_counting_twice(pipeline: Any) -> None:
    p, collector = pipeline
    now = int(time.time() * 1000)
    old = now - 40 * M
    start = old - old % M
    await send(collector, [event("click", start + i, f"u{i}") for i in range(5)])
    p.start_job()
    await p.wait_points(f"time = {start}ms", 1)  # provisional: the job has consumed them
    assert p.stop_job() == 0
    await send(collector, [event("click", start + 100 + i, f"v{i}") for i in range(5)])
    p.start_job()
    await send(collector, [event("view", now, "u9")])
    rows = await p.wait_points(f"time = {start}ms AND final = true", 1)
    assert rows[0]["events"] == 10 and rows[0]["users"] == 10
    assert p.stop_job() == 0


async def test_collector_process_serves_and_stops_on_sigterm(tmp_path: Path, kafka: Any,
                                                            influxdb: Any) -> None:
    p = Pipeline(tmp_path, kafka, influxdb)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = yaml.safe_load(p.config.read_text())
    cfg["clicks"]["port"] = port
    p.config.write_text(yaml.safe_dump(cfg))
    proc = spawn([sys.executable, "-m", "cloud.clicks.app", "collector", "-c", str(p.config)],
                 p.log)
    try:
        url = f"http://127.0.0.1:{port}"
        auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            while True:
                assert proc.poll() is None, p.log.read_text()
                try:
                    async with s.post(url + "/v1/batch", json=[event("click", int(
                            time.time() * 1000), "u1")], headers={"Authorization": auth}) as r:
                        if r.status == 200:
                            assert (await r.json())["accepted"] == 1
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, p.log.read_text()[-3000:]
                await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "click collector stopping" in p.log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
