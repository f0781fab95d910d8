"""The shared consumer loop and the InfluxDB sink, on the embedded bus with a fake InfluxDB.

The fake sits at the InfluxClient seam (`write(gzipped body) -> WriteResponse`) and answers
like influxd 1.8 (field type conflicts as partial writes, 503 while "down"); the integration
tests run the same paths against the real server."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest

from cloud.bus import TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.errors import ConsumerFenced, SinkMisconfigured
from cloud.ingest.records import plan_records
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.influx.client import InfluxTarget, WriteResponse
from cloud.sinks.influx.sink import InfluxSink
from cloud.sinks.metrics import SinkMetrics
from cloud.sinks.service import SinkService, SinkSettings
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Reading
from edge.windows.result import WindowResult

T = 1_705_322_400_000
TOPICS = ("readings", "aggregates", "alerts")
DL = "deadletter"


class FakeInflux:
    """Points by (measurement+tags, timestamp); `conflicts`: measurements whose points are
    refused as a field type conflict; `down`: answer 503."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str], str] = {}
        self.writes = 0
        self.conflicts: set[str] = set()
        self.down = False
        self.beyond_retention_before: int | None = None
        self.refuse_credentials = False
        self.server_version = "1.8.10"

    async def __aenter__(self) -> FakeInflux:
        return self

    async def aclose(self) -> None:
        return None

    async def ensure_retention(self) -> str:
        return "fake/hot: exists"

    async def ping(self) -> str:
        return self.server_version

    async def write(self, body: bytes) -> WriteResponse:
        self.writes += 1
        if self.refuse_credentials:
            return WriteResponse(401, "authorization failed")
        if self.down:
            return WriteResponse(503, "unavailable", retry_after_s=0.01)
        dropped = []
        for line in gzip.decompress(body).decode().split("\n"):
            series, ts = line.rsplit(" ", 1)
            measurement = series.split(",", 1)[0]
            if measurement in self.conflicts:
                dropped.append(f'field type conflict: input field "value" on measurement '
                               f'"{measurement}" is type float, already exists as type integer')
                continue
            if self.beyond_retention_before is not None and \
                    int(ts) < self.beyond_retention_before:
                dropped.append("points beyond retention policy")
                continue
            self.points[(series.split(" ", 1)[0], ts)] = line
        if dropped:
            return WriteResponse(400, f"partial write: {dropped[0]} dropped={len(dropped)}")
        return WriteResponse(204)

    def count(self, measurement: str) -> int:
        return sum(1 for series, _ in self.points if series.split(",", 1)[0] == measurement)


def _readings(batch: int, n: int = 50, measurement: str = "temperature") -> list[Reading]:
    return [Reading(device_id=f"dev-{i % 5}", ts_ms=T + batch * 10_000 + i * 100,
                    value=20.0 + i, measurement=measurement, unit="C", facility="f",
                    line=str(i % 2), seq=batch * 1000 + i) for i in range(n)]


async def _produce(bus: EmbeddedBus, topic: str, readings: list[Reading], events: Any = (),
                   sequence: int = 0) -> None:
    frame = encode_batch(Batch("gw-1", sequence, T, readings, list(events)))
    header = decode_batch(frame).header
    assert header is not None
    plan = plan_records(header, frame, readings, list(events))
    for t, records in (("readings", plan.readings), ("aggregates", plan.aggregates),
                       ("alerts", plan.alerts)):
        if records:
            await bus.producer().send_batch(topic if t == "readings" else t, records)


def _service(bus: EmbeddedBus, fake: FakeInflux, **kw: Any) -> SinkService:
    metrics = SinkMetrics("influxdb")
    dls = DeadLetters(bus.producer(), DL, "sink-influxdb", metrics)
    target = InfluxTarget(api="v1", url="http://fake", database="fake",
                          retention_policy="hot")
    sink = InfluxSink(target, dls, metrics, client=fake,  # type: ignore[arg-type]
                      batch_size=kw.pop("batch_size", 64),
                      flush_interval_s=kw.pop("flush_interval_s", 0.05))
    settings = SinkSettings(group_id="influx", topics=TOPICS, deadletter_topic=DL,
                            topic_specs=(), http_enabled=False, poll_ms=50, max_records=5,
                            **kw)
    return SinkService(sink, bus, settings, metrics=metrics, deadletters=dls)


def _offsets(bus: EmbeddedBus, group: str | None = None) -> dict[tuple[str, int], int]:
    conn = bus.connect()
    try:
        if group is None:
            rows = conn.execute("SELECT topic, partition, next_offset FROM partitions WHERE "
                                "next_offset > 0 AND topic != ?", (DL,))
        else:
            rows = conn.execute("SELECT topic, partition, offset FROM group_offsets WHERE "
                                "group_id = ?", (group,))
        return {(t, p): o for t, p, o in rows}
    finally:
        conn.close()


async def _until(predicate: Any, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:  # polled: the conditions live in other tasks and on disk
            if predicate():
                return
            await asyncio.sleep(0.02)


async def _deadletters(bus: EmbeddedBus) -> list[Any]:
    async with bus.consumer(f"dl-{id(bus)}", [DL]) as consumer:
        return await consumer.getmany(timeout_ms=1000)


@pytest.fixture
async def bus(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with EmbeddedBus(tmp_path / "bus.sqlite3", poll_interval_s=0.005,
                           lease_ms=2000) as b:
        await b.ensure_topics([TopicSpec(t, 2) for t in TOPICS] + [TopicSpec(DL, 1)])
        yield b


def _window(start: int) -> WindowResult:
    return WindowResult(window="w10s", kind="tumbling", size_ms=10_000, slide_ms=10_000,
                        fingerprint="fp", key="dev-1", measurement="temperature",
                        start_ms=start, end_ms=start + 10_000,
                        aggregates={"count": 3, "min": 1.0, "max": 3.0, "mean": 2.0},
                        tags={"facility": "f"})


async def test_items_are_stored_bad_ones_dead_lettered_and_offsets_committed(
        bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    fake.conflicts.add("pressure")
    good = _readings(0) + _readings(1)
    await _produce(bus, "readings", good[:50], [_window(T).to_event()], sequence=0)
    await _produce(bus, "readings", good[50:], sequence=1)
    conflicting = _readings(2, 20, "pressure")
    weird = [Reading(device_id="dev-9", ts_ms=T, value=math.nan, measurement="temperature"),
             Reading(device_id="dev-9", ts_ms=T, value=1.0, measurement="bad\\", seq=1)]
    await _produce(bus, "readings", conflicting + weird, sequence=2)
    service = _service(bus, fake)
    async with service:
        await _until(lambda: _offsets(bus, "influx") == _offsets(bus))
    assert fake.count("temperature") == 100 and fake.count("window_temperature") == 1
    assert fake.count("pressure") == 0
    m = service.metrics
    assert m.value("fieldlink_sink_items_total", kind="reading") == 100
    assert m.value("fieldlink_sink_items_total", kind="aggregate") == 1
    # one dead letter per consumed record holding refused items (the batch became 3 records:
    # lines 0 and 1 of facility f, and dev-9 without facility keyed by its device)
    dead = await _deadletters(bus)
    assert len(dead) == 3
    reasons, refused = [], []
    for d in dead:
        assert d.header("fl-source") == b"sink-influxdb" and d.header("fl-stage") == b"point"
        assert d.header("fl-origin", ) is not None and d.header("fl-batch") == b"gw-1:2"
        reasons += json.loads(d.header("fl-reasons") or b"")
        batch = decode_batch(d.value)
        assert batch.gateway_id == "gw-1" and batch.sequence == 2
        refused += batch.readings
    assert sorted(set(reasons)) == ["field_type_conflict", "unrepresentable"]
    assert len(refused) == 22
    assert {r.measurement for r in refused} == {"pressure", "temperature", "bad\\"}
    assert m.value("fieldlink_sink_deadletters_total", reason="field_type_conflict") == 20
    assert m.value("fieldlink_sink_deadletters_total", reason="unrepresentable") == 2


async def test_points_beyond_retention_are_counted_not_dead_lettered(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    fake.beyond_retention_before = T + 25_000
    await _produce(bus, "readings", _readings(0) + _readings(5))
    service = _service(bus, fake)
    async with service:
        await _until(lambda: _offsets(bus, "influx") == _offsets(bus))
    assert fake.count("temperature") == 50
    assert service.metrics.value("fieldlink_sink_items_total", kind="beyond_retention") == 50
    assert await _deadletters(bus) == []


async def test_nothing_is_committed_while_influxdb_is_down(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    fake.down = True
    await _produce(bus, "readings", _readings(0))
    service = _service(bus, fake)
    async with service:
        await _until(lambda: fake.writes >= 3)
        await asyncio.sleep(0.2)
        assert _offsets(bus, "influx") == {} and fake.points == {}
        health = await service.sink.healthy()
        assert not health[0] and "503" in health[1]
        fake.down = False
        await _until(lambda: _offsets(bus, "influx") == _offsets(bus))
    assert fake.count("temperature") == 50
    assert (await service.sink.healthy())[0]


async def test_sigterm_drains_buffered_lines(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    await _produce(bus, "readings", _readings(0, 30))
    service = _service(bus, fake, batch_size=10_000, flush_interval_s=3600)
    async with service:
        await _until(lambda: service.sink.buffered == 30)
        assert fake.points == {}
    assert fake.count("temperature") == 30
    assert _offsets(bus, "influx") == _offsets(bus)


async def test_a_stop_that_cannot_flush_gives_up_without_committing(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    fake.down = True
    await _produce(bus, "readings", _readings(0, 30))
    service = _service(bus, fake, batch_size=10_000, flush_interval_s=3600,
                       shutdown_timeout_s=0.5)
    async with service:
        await _until(lambda: service.sink.buffered == 30)
    assert service.state == "stopped"
    assert _offsets(bus, "influx") == {}


async def test_refused_credentials_stop_the_sink(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    fake.refuse_credentials = True
    await _produce(bus, "readings", _readings(0, 5))
    service = _service(bus, fake)
    async with service:
        with pytest.raises(SinkMisconfigured):
            await service.wait(asyncio.Event())
    assert _offsets(bus, "influx") == {}


async def test_a_fenced_commit_re_reads_from_the_committed_offsets(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    await _produce(bus, "readings", _readings(0))
    service = _service(bus, fake)
    fenced: list[bool] = []
    async with service:
        await _until(lambda: service.loop is not None)
        assert service.loop is not None
        consumer = service.loop.consumer
        real_commit = consumer.commit

        async def commit_once_fenced(offsets: Any = None) -> None:
            if not fenced:
                fenced.append(True)
                raise ConsumerFenced("generation changed")
            await real_commit(offsets)

        consumer.commit = commit_once_fenced  # type: ignore[method-assign]
        await _until(lambda: _offsets(bus, "influx") == _offsets(bus))
    assert fenced and fake.count("temperature") == 50  # rewritten, stored once
    m = service.metrics
    assert m.value("fieldlink_sink_commit_failures_total", reason="consumer_fenced") == 1
    assert m.value("fieldlink_sink_records_total", topic="readings") > \
        sum(_offsets(bus).values())  # some records were consumed twice


async def test_lag_metrics(bus: EmbeddedBus) -> None:
    fake = FakeInflux()
    await _produce(bus, "readings", _readings(0))
    service = _service(bus, fake)
    async with service:
        await _until(lambda: _offsets(bus, "influx") == _offsets(bus))
        await _until(lambda: service.loop is not None and service.loop.caught_up)
        m = service.metrics
        for (topic, partition), offset in _offsets(bus).items():
            # the gauge is set once the commit call returned (just after the database has it)
            await _until(lambda t=topic, p=partition, o=offset: m.value(
                "fieldlink_sink_committed_offset", topic=t, partition=str(p)) == o)
            assert m.registry.get_sample_value("fieldlink_sink_lag_seconds", {
                "sink": "influxdb", "topic": topic, "partition": str(partition)}) == 0.0
