"""Gateway status records through the real bus, the InfluxDB sink process and influxd (1.8),
read back with the fleet page's own query and reader.

The records are produced to the aggregates topic as ingest produces events (one frame per
record, keyed by the gateway id, ingest's headers); a resent record is stored once, a record
that cannot be written is dead-lettered and the others still flow."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import services
from test_sinks_support import (
    SinkProcess,
    Topics,
    consume_all,
    influxql,
    lag,
    now_ms,
    wait_for,
    write_config,
)

from cloud.bus.kafka import KafkaBus
from cloud.web.fleet import status_record
from cloud.web.queries import status_query
from edge.codec import Batch, encode_batch
from edge.model import Event
from gateway.buffer.results import BufferStats
from gateway.statusreport import build_status_event
from gateway.uplink.stats import UplinkStats


def _buffer_stats(rows: int, age_ms: int) -> BufferStats:
    return BufferStats(
        rows={"raw": rows}, claimed_rows=0, claims_in_flight=0, db_bytes=0, wal_bytes=0,
        used_bytes=0, est_bytes_by_class={"raw": rows * 50}, max_bytes=10**9,
        oldest_unsent_age_ms=age_ms, seen_keys=0, dead_letter_rows=0, appended={},
        duplicates={}, acked={}, dropped={"evicted": {"raw": 3}}, refused={},
        dead_letters={"bad_json": 2}, dead_letters_dropped={}, counters={})


def _record(gateway: str, seq: int, event: Event) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    frame = encode_batch(Batch(gateway, seq, event.ts_ms, [], [event]))
    return (gateway.encode(), frame,
            [("fl-format", b"1"), ("fl-gateway", gateway.encode()),
             ("fl-batch", f"{gateway}:{seq}".encode()), ("fl-part", b"1/1"),
             ("fl-count", b"1")])


def _fleet_rows(url: str, database: str, since_ms: int) -> dict[str, dict[str, Any]]:
    """The dashboard's status query, run as the dashboard runs it (bound parameters)."""
    q, params = status_query(since_ms)
    query = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ms",
                                    "params": json.dumps(params)})
    with urllib.request.urlopen(f"{url}/query?{query}", timeout=30) as resp:
        result = json.loads(resp.read())["results"][0]
    assert "error" not in result, result
    return {s["tags"]["gateway"]: dict(zip(s["columns"], s["values"][0]))
            for s in result.get("series") or []}


async def test_status_records_reach_influxdb_and_the_fleet_reader(
        kafka: services.Kafka, influxdb: services.InfluxDB, tmp_path: Path) -> None:
    topics = Topics.unique()
    database = f"fl_status_{uuid.uuid4().hex[:8]}"
    t = now_ms() - 60_000
    ok = build_status_event(t, gateway_id="gw-a", config_version="0123456789ab",
                            buffer=_buffer_stats(1500, 42_000),
                            uplink=UplinkStats(circuit_open=True,
                                               uplink_down_since_ms=t - 5000))
    newer = build_status_event(t + 30_000, gateway_id="gw-a", config_version="0123456789ab",
                               buffer=_buffer_stats(10, 1000), uplink=UplinkStats())
    other = build_status_event(t, gateway_id="gw-b", config_version="ffffffffffff",
                               buffer=None, uplink=UplinkStats())
    bad = Event("gateway_status", b"x" * 16, t, "gw-c",
                {"backlog_rows": "lots", "firmware_version": "0.1.0"})
    records = [_record("gw-a", 1, ok), _record("gw-a", 1, ok),      # a resend
               _record("gw-a", 2, newer), _record("gw-b", 1, other), _record("gw-c", 1, bad)]
    async with KafkaBus([kafka.bootstrap_servers]) as bus:
        await bus.ensure_topics(topics.specs(3))
        assert await bus.wait_connected(60), "kafka producer did not connect"
        await bus.producer().send_batch(topics.aggregates, records)

    cfg = write_config(tmp_path / "cloud.yaml", topics, kafka.bootstrap_servers,
                       influx_url=influxdb.url, database=database)
    group = f"status-{uuid.uuid4().hex[:8]}"
    sink = SinkProcess("influxdb", cfg, group, tmp_path)
    try:
        async def drained() -> bool:
            return await lag(kafka.bootstrap_servers, group,
                             [topics.readings, topics.aggregates, topics.alerts]) == 0
        await wait_for(drained, 120, "zero lag")
        assert sink.metric("fieldlink_sink_items_total", kind="gateway_status") >= 3
        assert sink.terminate() == 0, sink.log()[-3000:]
    finally:
        sink.stop_quietly()

    series = influxql(influxdb.url, database, 'SELECT * FROM "gateway_status" GROUP BY *')
    points = {s["tags"]["gateway"]: len(s["values"]) for s in series}
    assert points == {"gw-a": 2, "gw-b": 1}           # the resend is one point; gw-c refused

    rows = _fleet_rows(influxdb.url, database, t - 3_600_000)
    a = status_record(rows["gw-a"])
    assert a is not None and a.ts_ms == t + 30_000    # the newest record
    assert (a.backlog_rows, a.backlog_bytes, a.backlog_age_ms) == (10, 500, 1000)
    assert a.drops == {"evicted": 3} and a.deadletters == {"bad_json": 2}
    assert (a.firmware_version, a.config_version, a.uplink_state) == \
        (ok.body["firmware_version"], "0123456789ab", "up")
    b = status_record(rows["gw-b"])
    assert b is not None and b.backlog_rows is None and b.backlog_age_ms is None
    assert b.config_version == "ffffffffffff"

    dead = await consume_all(kafka.bootstrap_servers, topics.deadletter, want=1)
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["fl-gateway"] == b"gw-c" and headers["fl-stage"] == b"point"
