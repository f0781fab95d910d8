"""Helpers of the sink integration tests (test_sinks_*.py); no tests of its own.

Sinks run as the operator runs them: `python -m edge.cli cloud sink <kind> --config FILE`
(= `fieldlink cloud sink ...`) in a subprocess, against the real Kafka and influxd of
tests/integration/services.py; records are produced the way ingest produces them
(`cloud.ingest.records.plan_records`: one edge.codec frame per key group, with headers).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cloud.bus import TopicSpec
from cloud.bus.kafka import KafkaBus
from cloud.ingest.records import plan_records
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Event, Reading

ROOT = Path(__file__).resolve().parents[2]
FIELDLINK = [sys.executable, "-m", "edge.cli"]
HOUR = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Topics:
    readings: str
    aggregates: str
    alerts: str
    deadletter: str

    @classmethod
    def unique(cls, partitions: int = 3) -> Topics:
        suffix = uuid.uuid4().hex[:10]
        return cls(*(f"test.sinks.{t}.{suffix}" for t in
                     ("readings", "aggregates", "alerts", "deadletter")))

    def specs(self, partitions: int = 3) -> list[TopicSpec]:
        return [TopicSpec(self.readings, partitions), TopicSpec(self.aggregates, 1),
                TopicSpec(self.alerts, 1), TopicSpec(self.deadletter, 1)]


def write_config(path: Path, topics: Topics, bootstrap: str, *, influx_url: str,
                 database: str, api: str = "v1", archive: Path | None = None,
                 roll_seconds: float = 1.0, batch_size: int = 2000, partitions: int = 3,
                 token: str | None = None, bucket: str | None = None) -> Path:
    v2 = f"""
  token: "{token}"
  org: "-"
  bucket: "{bucket}"
""" if api == "v2" else ""
    path.write_text(f"""
cloud:
  data_dir: {path.parent / "data"}
kafka:
  bootstrap_servers: [{bootstrap}]
  topics:
    readings: {{name: {topics.readings}, partitions: {partitions}}}
    aggregates: {{name: {topics.aggregates}, partitions: 1}}
    alerts: {{name: {topics.alerts}, partitions: 1}}
    deadletter: {{name: {topics.deadletter}, partitions: 1}}
influxdb:
  api: {api}
  url: {influx_url}
  database: {database}
  retention: 7d
  batch_size: {batch_size}
  flush_interval_ms: 300{v2}
archive:
  path: {archive or (path.parent / "archive")}
  roll_seconds: {roll_seconds}
ingest:
  port: 0
web:
  enabled: false
http:
  port: 0
logging:
  level: info
""")
    return path


def make_readings(batch: int, n: int, *, t0: int, gateway: int = 0,
                  measurement: str = "temperature", span_ms: int = 1000) -> list[Reading]:
    """`n` readings of 20 devices over 4 production lines of 2 facilities."""
    return [Reading(device_id=f"g{gateway}-dev-{i % 20:02d}", ts_ms=t0 + i * span_ms,
                    value=round(15 + (batch * 7 + i) % 200 / 10, 2), measurement=measurement,
                    unit="C", facility=("plant a,b", "plant_c")[i % 2], line=f"l {i % 4}",
                    zone="z=1", quality="good", battery_voltage=3.3, seq=batch * 100_000 + i,
                    received_ms=t0 + i * span_ms + 4)
            for i in range(n)]


async def produce(bootstrap: str, topics: Topics, batches: list[tuple[str, int, list[Reading],
                                                                       list[Event]]],
                  *, partitions: int = 3) -> None:
    """Create the topics and produce each (gateway, sequence, readings, events) batch."""
    async with KafkaBus([bootstrap]) as bus:
        await bus.ensure_topics(topics.specs(partitions))
        assert await bus.wait_connected(60), "kafka producer did not connect"
        producer = bus.producer()
        for gateway, sequence, readings, events in batches:
            frame = encode_batch(Batch(gateway, sequence, now_ms(), readings, events))
            header = decode_batch(frame).header
            assert header is not None
            plan = plan_records(header, frame, readings, events, key_mode="facility_line")
            for topic, records in ((topics.readings, plan.readings),
                                   (topics.aggregates, plan.aggregates),
                                   (topics.alerts, plan.alerts)):
                if records:
                    await producer.send_batch(topic, records)


async def produce_raw(bootstrap: str, topic: str, value: bytes, key: bytes = b"poison") -> None:
    async with KafkaBus([bootstrap]) as bus:
        assert await bus.wait_connected(60)
        await bus.producer().send_batch(topic, [(key, value, [("fl-gateway", b"gw-bad"),
                                                              ("fl-batch", b"gw-bad:1")])])


async def consume_all(bootstrap: str, topic: str, want: int, timeout_s: float = 60) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                group_id=f"check-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(out) < want:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out += msgs
        # anything beyond `want` would be a bug: give it a moment to show up
        for msgs in (await consumer.getmany(timeout_ms=1500)).values():
            out += msgs
    finally:
        await consumer.stop()
    return out


async def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of `topics` not yet committed by `group` (end offsets minus committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group)
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


class SinkProcess:
    """`fieldlink cloud sink <kind>` in a subprocess; its log goes to a file."""

    def __init__(self, kind: str, config: Path, group: str, log_dir: Path) -> None:
        self.kind = kind
        self.log_path = log_dir / f"{kind}-{group}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*FIELDLINK, "cloud", "sink", kind, "--config", str(config), "--group", group,
             "--http-port", "0"], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(r'"http listening".*?"port": (\d+)', self.log())
            if m:
                return f"http://127.0.0.1:{m[1]}"
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} sink exited {self.proc.returncode}:\n"
                                     f"{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{self.kind} sink did not start:\n{self.log()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.url() + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url() + "/healthz", timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def terminate(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
        return code

    def stop_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


def influxql(url: str, database: str, query: str) -> list[dict[str, Any]]:
    """The series of an InfluxQL query (v1 /query)."""
    params = urllib.parse.urlencode({"db": database, "q": query, "epoch": "ms"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    result = body["results"][0]
    assert "error" not in result, result
    return list(result.get("series") or [])


def influx_count(url: str, database: str, measurement: str, rp: str = "hot") -> int:
    try:
        series = influxql(url, database,
                          f'SELECT count("value") FROM "{rp}"."{measurement}"')
    except (urllib.error.URLError, AssertionError):
        return 0
    return int(series[0]["values"][0][1]) if series else 0


def _post(url: str, data: bytes, want: int) -> None:
    """POST, retried on 5xx: the shared test server is busy with other suites at times."""
    for attempt in range(5):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"),
                                        timeout=30) as resp:
                assert resp.status == want, resp.status
                return
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == 4:
                raise
            time.sleep(1 + attempt)


def influx_setup(url: str, database: str, statements: list[str]) -> None:
    for q in [f'CREATE DATABASE "{database}"', *statements]:
        _post(f"{url}/query", urllib.parse.urlencode({"q": q}).encode(), 200)


def influx_write(url: str, database: str, rp: str, lines: list[str]) -> None:
    params = urllib.parse.urlencode({"db": database, "rp": rp, "precision": "ms"})
    _post(f"{url}/write?{params}", "\n".join(lines).encode(), 204)
