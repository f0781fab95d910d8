"""The InfluxDB sink process against the real Kafka and influxd (1.8): v1 and v2 APIs.

Read back with InfluxQL (v1) and Flux (v2, influxdb-client); poison records (undecodable
bytes, points in a field type conflict) land in the dead-letter topic and the rest flows;
two processes in one consumer group share a three-partition topic."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import services
from test_sinks_support import (
    HOUR,
    SinkProcess,
    Topics,
    consume_all,
    influx_count,
    influx_setup,
    influx_write,
    influxql,
    lag,
    make_readings,
    now_ms,
    produce,
    produce_raw,
    wait_for,
    write_config,
)

from cloud.bus import partition_for
from edge.codec import decode_batch
from edge.model import Event, Reading
from edge.rules.alerts import Alert, AlertTransition
from edge.windows.result import WindowResult

#: (gateway, sequence, readings, events)
Batch_ = tuple[str, int, list[Reading], list[Event]]


def _events(t0: int) -> list[Event]:
    window = WindowResult(window="w1m", kind="tumbling", size_ms=60_000, slide_ms=60_000,
                          fingerprint="fp", key="g0-dev-01", measurement="temperature",
                          start_ms=t0, end_ms=t0 + 60_000,
                          aggregates={"count": 60, "min": 15.0, "max": 25.0, "mean": 20.0,
                                      "p95": 24.5},
                          unit="C", tags={"facility": "plant a,b", "line": "l 1"})
    alert = Alert(rule_id="overheat", kind="threshold", subject="g0-dev-01", incarnation=1,
                  severity="critical", message='temp "high"', values={"value": 81.0},
                  fired_at_ms=t0 + 5000)
    return [window.to_event(), AlertTransition("firing", t0 + 5000, alert.body()).to_event()]


def _flux_count(url: str, token: str, bucket: str, measurement: str) -> int:
    from influxdb_client import InfluxDBClient

    flux = (f'from(bucket: "{bucket}") |> range(start: -7d) '
            f'|> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "value") '
            '|> group() |> count()')
    with InfluxDBClient(url=url, token=token, org="-", timeout=30_000) as client:
        tables = client.query_api().query(flux)
    return sum(int(rec.get_value()) for table in tables for rec in table.records)


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_influxdb_sink_stores_every_item_once_and_dead_letters_poison(
        kafka: services.Kafka, influxdb: services.InfluxDB, tmp_path: Path, api: str) -> None:
    topics = Topics.unique()
    database = f"fl_sink_{api}_{uuid.uuid4().hex[:8]}"
    t0 = now_ms() - 3 * HOUR
    # a pressure field stored as an integer: the sink's float values then conflict
    influx_setup(influxdb.url, database, [
        f'CREATE RETENTION POLICY "hot" ON "{database}" DURATION 7d REPLICATION 1 DEFAULT'])
    influx_write(influxdb.url, database, "hot", [f"pressure,device_id=seed value=1i {t0}"])
    batches: list[Batch_] = [("gw-0", b, make_readings(b, 500, t0=t0 + b * 500_000), [])
                             for b in range(4)]
    batches.append(("gw-1", 0, make_readings(9, 40, t0=t0 + 10, measurement="pressure"),
                    _events(t0)))
    await produce(kafka.bootstrap_servers, topics, batches)
    await produce_raw(kafka.bootstrap_servers, topics.readings, b"FLNK\x01 not a frame")
    bucket = f"{database}/hot"
    cfg = write_config(tmp_path / "cloud.yaml", topics, kafka.bootstrap_servers,
                       influx_url=influxdb.url, database=database, api=api,
                       token=influxdb.token, bucket=bucket)
    group = f"influx-{uuid.uuid4().hex[:8]}"
    sink = SinkProcess("influxdb", cfg, group, tmp_path)
    try:
        await wait_for(lambda: influx_count(influxdb.url, database, "temperature") == 2000,
                       120, "2000 temperature points")
        await wait_for(_zero_lag(kafka.bootstrap_servers, group, topics), 60, "zero lag")
        status, health = sink.health()
        assert status == 200, health
        assert sink.metric("fieldlink_sink_items_total", kind="reading") == 2000
        assert sink.metric("fieldlink_sink_items_total", kind="aggregate") == 1
        assert sink.metric("fieldlink_sink_items_total", kind="alert") == 1
        assert sink.metric("fieldlink_sink_deadletters_total", reason="field_type_conflict") \
            == 40
        assert sink.terminate() == 0, sink.log()[-3000:]
    finally:
        sink.stop_quietly()

    if api == "v1":
        assert influx_count(influxdb.url, database, "pressure") == 1  # only the seed
        per_device = influxql(influxdb.url, database,
                              'SELECT count("value") FROM "hot"."temperature" GROUP BY '
                              '"device_id"')
        assert len(per_device) == 20
        assert {int(s["values"][0][1]) for s in per_device} == {100}
        # escaped tags come back as they were
        tags = influxql(influxdb.url, database, f'SHOW TAG VALUES ON "{database}" FROM "temperature" '
                        'WITH KEY IN ("facility", "line", "zone")')
        values = {tuple(v) for v in tags[0]["values"]}
        assert values == {("facility", "plant a,b"), ("facility", "plant_c"), ("line", "l 0"),
                          ("line", "l 1"), ("line", "l 2"), ("line", "l 3"), ("zone", "z=1")}
        window = influxql(influxdb.url, database, 'SELECT * FROM "hot"."window_temperature"')
        row = dict(zip(window[0]["columns"], window[0]["values"][0]))
        assert row["count"] == 60 and row["p95"] == 24.5 and row["window"] == "w1m"
        alerts = influxql(influxdb.url, database, 'SELECT * FROM "hot"."alerts"')
        row = dict(zip(alerts[0]["columns"], alerts[0]["values"][0]))
        assert row["message"] == 'temp "high"' and row["transition"] == "firing"
        assert json.loads(row["values"]) == {"value": 81.0}
    else:
        flux = await asyncio.to_thread(_flux_count, influxdb.url, influxdb.token, bucket,
                                       "temperature")
        assert flux == 2000
        assert await asyncio.to_thread(_flux_count, influxdb.url, influxdb.token, bucket,
                                       "pressure") == 1

    dead = await consume_all(kafka.bootstrap_servers, topics.deadletter, want=2)
    frames = [d for d in dead if dict(d.headers)["fl-stage"] == b"frame"]
    points = [d for d in dead if dict(d.headers)["fl-stage"] == b"point"]
    assert len(frames) == 1 and len(frames) + len(points) == len(dead)
    assert frames[0].value == b"FLNK\x01 not a frame"
    assert dict(frames[0].headers)["fl-source"] == b"sink-influxdb"
    refused = [r for d in points for r in decode_batch(d.value).readings]
    assert len(refused) == 40 and {r.measurement for r in refused} == {"pressure"}
    for d in points:
        headers = dict(d.headers)
        assert headers["fl-reason"] == b"field_type_conflict"
        assert b"field type conflict" in headers["fl-detail"]


def _zero_lag(bootstrap: str, group: str, topics: Topics):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await lag(bootstrap, group, [topics.readings, topics.aggregates,
                                            topics.alerts]) == 0
    return check


async def test_two_sink_processes_share_a_three_partition_topic(
        kafka: services.Kafka, influxdb: services.InfluxDB, tmp_path: Path) -> None:
    topics = Topics.unique()
    database = f"fl_sink_scale_{uuid.uuid4().hex[:8]}"
    t0 = now_ms() - 2 * HOUR
    batches: list[Batch_] = [("gw-0", b, make_readings(b, 1000, t0=t0 + b * 1_000_000), [])
                             for b in range(12)]
    keys = {f"{r.facility}/{r.line}".encode() for r in batches[0][2]}
    assert {partition_for(k, 3) for k in keys} == {0, 1, 2}, "every partition gets readings"
    cfg = write_config(tmp_path / "cloud.yaml", topics, kafka.bootstrap_servers,
                       influx_url=influxdb.url, database=database)
    group = f"influx-scale-{uuid.uuid4().hex[:8]}"
    await produce(kafka.bootstrap_servers, topics, [])  # topics exist before both join
    a = SinkProcess("influxdb", cfg, group, tmp_path)
    b = SinkProcess("influxdb", cfg, group, tmp_path)
    try:
        for proc in (a, b):
            await wait_for(lambda p=proc: p.health()[0] == 200, 90, f"{proc.log_path} healthy")
        # both joined: wait for the group to settle with a member each before producing
        await wait_for(lambda: "Setting newly assigned partitions" in a.log() and
                       "Setting newly assigned partitions" in b.log(), 60, "both assigned")
        await produce(kafka.bootstrap_servers, topics, batches)
        await wait_for(lambda: influx_count(influxdb.url, database, "temperature") == 12_000,
                       180, "12000 points")
        await wait_for(_zero_lag(kafka.bootstrap_servers, group, topics), 60, "zero lag")
        consumed = [p.metric("fieldlink_sink_records_total", topic=topics.readings)
                    for p in (a, b)]
        assert all(n > 0 for n in consumed), consumed  # both took a share
        assert sum(p.metric("fieldlink_sink_items_total", kind="reading")
                   for p in (a, b)) >= 12_000
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        a.stop_quietly()
        b.stop_quietly()
    assert influx_count(influxdb.url, database, "temperature") == 12_000
