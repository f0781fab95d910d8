"""Sink throughput: points/s into InfluxDB and readings/s into Parquet per consumer process,
and the archive's bytes per reading.

    .venv/bin/python tests/bench/sinks.py [--gateways 20] [--batches 25] [--skip influxdb]

Setup: the real Kafka and influxd of tests/integration/services.py (started if not running),
fresh topics (readings: 6 partitions) and a fresh database.  `--gateways` x `--batches`
frames of 1000 readings (500,000 by default) are produced first, exactly as ingest produces
them (`cloud.ingest.records.plan_records`; each gateway serves one production line, so a
batch is one record): 50 devices per gateway at 1 Hz, temperature random walk at 0.01 degC,
battery stepping down by 0.01 V, seq per device, 0-4 ms timestamp jitter, the last 2 hours.

Then each sink runs ALONE as its own process (`python -m edge.cli cloud sink <kind>`, the
command operators run, default settings) and drains the topic: timed from its "sink
consuming" log line until, having consumed every record (its /metrics), it was sent SIGTERM
and exited — so the last flush / Parquet roll and the final commit are inside the time.  Its
group's lag is checked to be 0 afterwards (everything stored AND committed):

influx_points_per_s          readings / wall seconds, InfluxDB sink (batch_size 5000, gzip,
                             v1 /write, the influxd shares the machine)
influx_points_per_cpu_s      readings / CPU seconds of the sink process
parquet_readings_per_s       readings / wall seconds, Parquet sink (the default roll_seconds
                             300: everything is rolled by the shutdown)
parquet_readings_per_cpu_s   readings / CPU seconds of the sink process
parquet_bytes_per_reading    archive bytes / readings, files as the sink wrote them
parquet_bytes_per_reading_compacted    after `archive compact` (one daily file per directory)
compact_readings_per_s       readings / wall seconds of `archive compact` over the whole
                             archive (reads, recomputes every idempotency key, de-duplicates,
                             sorts, writes): the price of not storing the key
*_rss_mb                     resident memory of the sink process at the end

Checks: InfluxDB holds exactly the readings (count), the archive too (DuckDB count and
distinct idempotency keys, `cloud.archive.query.KEY_SQL`).  Compare
parquet_bytes_per_reading with the 2.45 B/reading anchor (sorted sensor data, zstd).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _services import ensure, stop_started  # noqa: E402

from cloud.bus import TopicSpec  # noqa: E402
from cloud.bus.kafka import KafkaBus  # noqa: E402
from cloud.ingest.records import plan_records  # noqa: E402
from edge.codec import Batch, decode_batch, encode_batch  # noqa: E402
from edge.model import Reading  # noqa: E402

DEVICES = 50
BATCH = 1000
ANCHOR_BYTES_PER_READING = 2.45


@dataclass
class _Device:
    id: str
    phase: int
    centi: int
    battery: int
    seq: int


def gateway_frames(g: int, batches: int, t0: int) -> list[bytes]:
    rng = random.Random(1000 + g)
    devices = [_Device(f"gw{g:02d}_sensor_{d:03d}", rng.randint(0, 999),
                       rng.randint(2000, 2600), rng.randint(370, 480), rng.randint(0, 100_000))
               for d in range(DEVICES)]
    frames = []
    second = 0
    line = str(g % 5 + 1)
    for b in range(batches):
        rows = []
        for _ in range(BATCH // DEVICES):
            for dev in devices:
                ts = t0 + 1000 * second + dev.phase + rng.randint(0, 4)
                dev.centi += round(rng.gauss(0, 2))
                if rng.random() < 0.02:
                    dev.battery -= 1
                dev.seq += 1
                rows.append(Reading(
                    device_id=dev.id, ts_ms=ts, value=dev.centi / 100,
                    measurement="temperature", unit="celsius", facility=f"plant_{g % 4}",
                    line=line, zone=f"zone_{line}", quality="good",
                    battery_voltage=dev.battery / 100, seq=dev.seq,
                    received_ms=ts + rng.randint(1, 5)))
            second += 1
        rows.sort(key=lambda r: r.received_ms)
        frames.append(encode_batch(Batch(f"gw-{g:02d}", b + 1, rows[-1].received_ms, rows)))
    return frames


async def produce(bootstrap: str, topics: dict[str, str],
                  frames: list[bytes]) -> tuple[float, int]:
    t = time.perf_counter()
    async with KafkaBus([bootstrap]) as bus:
        await bus.ensure_topics([TopicSpec(topics["readings"], 6)] + [
            TopicSpec(topics[k], 1) for k in ("aggregates", "alerts", "deadletter")])
        assert await bus.wait_connected(60)
        producer = bus.producer()
        records = []
        for frame in frames:
            batch = decode_batch(frame)
            assert batch.header is not None
            records += plan_records(batch.header, frame, batch.readings, [],
                                    unchanged=True).readings
        for start in range(0, len(records), 200):
            await producer.send_batch(topics["readings"], records[start:start + 200])
    return time.perf_counter() - t, len(records)


class Lag:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def __aenter__(self) -> Lag:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def of(self, group: str, topic: str) -> int:
        from aiokafka import TopicPartition

        await self.consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p)
               for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
        ends = await self.consumer.end_offsets(tps)
        committed = await self.admin.list_consumer_group_offsets(group)
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _records_consumed(port: int, topic: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("fieldlink_sink_records_total{") and f'topic="{topic}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def drain(kind: str, cfg: Path, group: str, topic: str, records: int, work: Path,
                bootstrap: str) -> dict[str, float]:
    """Run the sink until it consumed every record, then SIGTERM: it rolls/flushes what it
    holds, commits and exits.  Timed from "sink consuming" to the exit."""
    log = work / f"{kind}.log"
    proc = _spawn([sys.executable, "-m", "edge.cli", "cloud", "sink", kind, "--config",
                   str(cfg), "--group", group, "--http-port", "0"], log)
    ps = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while '"sink consuming"' not in (text := log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} sink did not start:\n{text[-2000:]}")
            await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        cpu0 = sum(ps.cpu_times()[:2])
        port = int(text.split('"http listening"', 1)[1].split('"port": ', 1)[1].split(",")[0])
        while _records_consumed(port, topic) < records:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} sink died:\n{log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        cpu1 = sum(ps.cpu_times()[:2])
        rss = ps.memory_info().rss / 2**20
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                cpu1 = sum(ps.cpu_times()[:2])
            await asyncio.sleep(0.02)
        wall = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} sink exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    async with Lag(bootstrap) as lag:
        left = await lag.of(group, topic)
    if left:
        raise RuntimeError(f"{kind} sink exited with {left} records uncommitted")
    return {"wall": wall, "cpu": cpu1 - cpu0, "rss_mb": rss}


def archive_figures(archive: Path, n: int) -> dict[str, Any]:

    from cloud.archive.compact import compact
    from cloud.archive.query import KEY_SQL, query
    from cloud.archive.store import ArchiveStore

    files = list(archive.glob("**/*.parquet"))
    written = sum(p.stat().st_size for p in files)
    _, rows = query(str(archive), f"SELECT count(*), count(DISTINCT {KEY_SQL}) FROM readings")
    store = ArchiveStore(str(archive))
    started = time.perf_counter()
    compact(store, time.time_ns() // 1_000_000 + 3 * 86_400_000, 1.0)
    compact_s = time.perf_counter() - started
    compacted_files = list(archive.glob("**/*.parquet"))
    compacted = sum(p.stat().st_size for p in compacted_files)
    return {"files_written": len(files), "bytes_written": written,
            "archive_count": rows[0][0], "archive_distinct_keys": rows[0][1],
            "parquet_bytes_per_reading": round(written / n, 3),
            "parquet_bytes_per_reading_compacted": round(compacted / n, 3),
            "compact_readings_per_s": round(n / compact_s),
            "compacted_files": len(compacted_files)}


def influx_count(url: str, database: str) -> int:
    import urllib.parse
    import urllib.request

    q = urllib.parse.urlencode({"db": database, "q": 'SELECT count("value") FROM '
                                '"hot"."temperature"'})
    with urllib.request.urlopen(f"{url}/query?{q}", timeout=60) as resp:
        series = json.loads(resp.read())["results"][0].get("series") or []
    return int(series[0]["values"][0][1]) if series else 0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    kafka = ensure("kafka")
    influx = ensure("influxdb") if "influxdb" not in args.skip else None
    suffix = uuid.uuid4().hex[:8]
    topics = {k: f"bench.sinks.{k}.{suffix}" for k in
              ("readings", "aggregates", "alerts", "deadletter")}
    database = f"bench_sinks_{suffix}"
    t0 = (time.time_ns() // 1_000_000 - 2 * 3_600_000) // 1000 * 1000
    frames = [f for g in range(args.gateways) for f in gateway_frames(g, args.batches, t0)]
    n = len(frames) * BATCH
    produce_s, records = await produce(kafka.bootstrap_servers, topics, frames)
    result: dict[str, Any] = {"readings": n, "produce_s": round(produce_s, 2)}
    with tempfile.TemporaryDirectory(prefix="fieldlink-bench-sinks-") as tmp:
        work = Path(tmp)
        archive = work / "archive"
        cfg = work / "cloud.yaml"
        cfg.write_text(f"""
cloud:
  data_dir: {work / 'data'}
kafka:
  bootstrap_servers: [{kafka.bootstrap_servers}]
  topics:
    readings: {{name: {topics['readings']}, partitions: 6}}
    aggregates: {{name: {topics['aggregates']}, partitions: 1}}
    alerts: {{name: {topics['alerts']}, partitions: 1}}
    deadletter: {{name: {topics['deadletter']}, partitions: 1}}
influxdb:
  url: {influx.url if influx else 'http://127.0.0.1:1'}
  database: {database}
  batch_size: 5000
archive:
  path: {archive}
ingest: {{port: 0}}
web: {{enabled: false}}
http: {{port: 0}}
logging: {{level: info}}
""")
        if influx is not None:
            r = await drain("influxdb", cfg, f"bench-influx-{suffix}", topics["readings"],
                            records, work, kafka.bootstrap_servers)
            stored = influx_count(influx.url, database)
            result.update({
                "influx_points_per_s": round(n / r["wall"]),
                "influx_points_per_cpu_s": round(n / r["cpu"]) if r["cpu"] else None,
                "influx_wall_s": round(r["wall"], 2), "influx_cpu_s": round(r["cpu"], 2),
                "influx_rss_mb": round(r["rss_mb"], 1), "influx_points_stored": stored,
                "influx_ok": stored == n})
        if "parquet" not in args.skip:
            r = await drain("parquet", cfg, f"bench-parquet-{suffix}", topics["readings"],
                            records, work, kafka.bootstrap_servers)
            result.update({
                "parquet_readings_per_s": round(n / r["wall"]),
                "parquet_readings_per_cpu_s": round(n / r["cpu"]) if r["cpu"] else None,
                "parquet_wall_s": round(r["wall"], 2), "parquet_cpu_s": round(r["cpu"], 2),
                "parquet_rss_mb": round(r["rss_mb"], 1)})
            figures = archive_figures(archive, n)
            result.update(figures)
            result["parquet_ok"] = figures["archive_count"] == figures[
                "archive_distinct_keys"] == n
            result["anchor_bytes_per_reading"] = ANCHOR_BYTES_PER_READING
    result["machine_cpus"] = os.cpu_count()
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=20)
    parser.add_argument("--batches", type=int, default=25, help="frames of 1000 per gateway")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("influxdb", "parquet"))
    args = parser.parse_args()
    try:
        result = asyncio.run(bench(args))
    finally:
        stop_started()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
