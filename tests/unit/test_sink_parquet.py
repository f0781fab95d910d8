"""cloud.sinks.parquet on the embedded bus: files per partition range, crash safety, rolling.

The bus is the real single-machine bus (cloud.bus.embedded, SQLite in tmp_path); the archive
is a local directory or memory://.  "Crashing" a sink means its consumer's commit raises,
after the files of a roll were published — the window a SIGKILL can hit (the integration
tests kill real processes)."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloud.archive.layout import day_of, parse_data_file, part_name, partition_dir
from cloud.archive.query import KEY_SQL, query
from cloud.archive.rows import parquet_bytes, readings_batch, row_keys, sort_rows
from cloud.archive.store import ArchiveStore
from cloud.bus import TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.ingest.records import plan_records
from cloud.sinks.metrics import SinkMetrics
from cloud.sinks.parquet.sink import ParquetSink
from cloud.sinks.service import SinkService, SinkSettings
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Reading

T = 1_705_363_200_000 - 60_000  # one minute before 2024-01-16 00:00 UTC
TOPIC = "readings"
DL = "deadletter"


class Crash(Exception):
    pass


def _readings(batch: int, n: int = 100) -> list[Reading]:
    return [Reading(device_id=f"dev-{i % 10}", ts_ms=T + batch * 5_000 + i * 50,
                    value=round(20 + i / 100, 2), unit="C",
                    facility=("factory_a", "factory b")[i % 2], line=str(i % 3),
                    seq=batch * 1000 + i, received_ms=T + batch * 5_000 + i * 50 + 2)
            for i in range(n)]


async def _produce(bus: EmbeddedBus, batches: range, n: int = 100) -> list[Reading]:
    out: list[Reading] = []
    for b in batches:
        rs = _readings(b, n)
        frame = encode_batch(Batch(f"gw-{b % 2}", b, T, rs))
        header = decode_batch(frame).header
        assert header is not None
        plan = plan_records(header, frame, rs, [], key_mode="facility_line")
        await bus.producer().send_batch(TOPIC, plan.readings)
        out += rs
    return out


def _settings(group: str = "archive") -> SinkSettings:
    return SinkSettings(group_id=group, topics=(TOPIC,), deadletter_topic=DL,
                        topic_specs=(TopicSpec(TOPIC, 3), TopicSpec(DL, 1)),
                        http_enabled=False, poll_ms=50, max_records=7,
                        shutdown_timeout_s=20)


def _sink(bus: EmbeddedBus, store: ArchiveStore, **kw: Any) -> tuple[SinkService, ParquetSink]:
    metrics = SinkMetrics("parquet")
    settings = _settings(kw.pop("group", "archive"))
    from cloud.sinks.deadletters import DeadLetters

    dls = DeadLetters(bus.producer(), DL, "sink-parquet", metrics)
    sink = ParquetSink(store, dls, metrics, **kw)
    return SinkService(sink, bus, settings, metrics=metrics, deadletters=dls), sink


async def _until(predicate: Any, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:  # polled: the conditions live in other tasks and on disk
            if predicate():
                return
            await asyncio.sleep(0.02)


def _end_offsets(bus: EmbeddedBus) -> dict[tuple[str, int], int]:
    conn = bus.connect()
    try:
        return {(t, p): o for t, p, o in conn.execute(
            "SELECT topic, partition, next_offset FROM partitions WHERE topic = ? AND "
            "next_offset > 0", (TOPIC,))}
    finally:
        conn.close()


def _committed(bus: EmbeddedBus, group: str = "archive") -> dict[tuple[str, int], int]:
    conn = bus.connect()
    try:
        return {(t, p): o for t, p, o in conn.execute(
            "SELECT topic, partition, offset FROM group_offsets WHERE group_id = ?", (group,))}
    finally:
        conn.close()


def _archive_keys(store: ArchiveStore) -> list[bytes]:
    keys: list[bytes] = []
    for rel_dir, name, _ in store.files():
        if name.endswith(".parquet"):
            keys += row_keys(pq.read_table(io.BytesIO(store.read_bytes(
                f"{rel_dir}/{name}")))).to_pylist()
    return keys


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArchiveStore:
    if request.param == "memory":
        return ArchiveStore(f"memory://sink-{uuid.uuid4().hex}")
    return ArchiveStore(str(tmp_path / "archive"))


@pytest.fixture
async def bus(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with EmbeddedBus(tmp_path / "bus.sqlite3", poll_interval_s=0.005,
                           lease_ms=2000) as b:
        await b.ensure_topics([TopicSpec(TOPIC, 3), TopicSpec(DL, 1)])
        yield b


async def test_every_reading_lands_once_in_its_date_and_facility(
        bus: EmbeddedBus, store: ArchiveStore) -> None:
    produced = await _produce(bus, range(30))
    service, sink = _sink(bus, store, roll_seconds=0.2)
    async with service:
        await _until(lambda: _committed(bus) == _end_offsets(bus))
    keys = _archive_keys(store)
    assert sorted(keys) == sorted(r.idempotency_key() for r in produced)
    dirs = {d for d, _, _ in store.files()}
    days = {day_of(r.ts_ms) for r in produced}
    assert len(days) == 2  # the batches cross midnight
    assert dirs == {partition_dir(d, f) for d in days for f in ("factory_a", "factory b")}
    # file names tell partition and offset range; ranges of a partition are contiguous
    ranges: dict[int, set[tuple[int, int]]] = {}
    for rel_dir, name, _ in store.files():
        f = parse_data_file(name)
        assert f is not None and f.topic == TOPIC and f.partition is not None
        assert f.first is not None and f.last is not None
        ranges.setdefault(f.partition, set()).add((f.first, f.last))
        table = pq.read_table(io.BytesIO(store.read_bytes(f"{rel_dir}/{name}")))
        pairs = list(zip(table.column("device_id").to_pylist(), table.column("ts").to_pylist()))
        assert pairs == sorted(pairs)
    for partition, spans in ranges.items():
        ordered = sorted(spans)
        assert ordered[0][0] == 0
        assert all(a[1] + 1 == b[0] for a, b in zip(ordered, ordered[1:]))
        assert ordered[-1][1] + 1 == _end_offsets(bus)[(TOPIC, partition)]
    _, rows = query(store, f"SELECT count(*), count(DISTINCT {KEY_SQL}) FROM readings")
    assert rows == [(len(produced), len(produced))]
    m = service.metrics
    assert m.value("fieldlink_sink_items_total", kind="reading") == len(produced)
    assert m.value("fieldlink_sink_parquet_files_total") == len(store.files())


async def test_a_crash_between_publish_and_commit_leaves_no_duplicates(
        bus: EmbeddedBus, store: ArchiveStore) -> None:
    produced = await _produce(bus, range(40))
    service, sink = _sink(bus, store, roll_seconds=3600)
    crashed = asyncio.Event()

    async def crash(*args: Any, **kwargs: Any) -> None:
        crashed.set()
        raise Crash("killed after the files were published")

    async with service:
        await _until(lambda: service.loop is not None and sink.buffered >= 2000)
        assert service.loop is not None
        service.loop.consumer.commit = crash  # type: ignore[method-assign]
        service._stop.set()  # drain: every buffer is rolled, then the commit "dies"
        with pytest.raises(Crash):
            await service._task  # type: ignore[misc]
    assert crashed.is_set() and _committed(bus) == {}
    published = _archive_keys(store)
    assert published and len(published) < len(produced) + 1
    uncommitted = [n for _, n, _ in store.files()]

    # the restart rolls at other boundaries (small rolls): other names, same readings
    service2, sink2 = _sink(bus, store, roll_seconds=0.05)
    async with service2:
        await _until(lambda: _committed(bus) == _end_offsets(bus))
    keys = _archive_keys(store)
    assert len(keys) == len(set(keys)) == len(produced)
    assert sorted(keys) == sorted(r.idempotency_key() for r in produced)
    assert service2.metrics.value("fieldlink_sink_parquet_orphans_deleted_total") >= \
        len(uncommitted)
    assert not set(uncommitted) & {n for _, n, _ in store.files()}


async def test_restart_after_commit_keeps_committed_files(
        bus: EmbeddedBus, store: ArchiveStore) -> None:
    first = await _produce(bus, range(10))
    service, _ = _sink(bus, store, roll_seconds=0.05)
    async with service:
        await _until(lambda: _committed(bus) == _end_offsets(bus))
    kept = {n for _, n, _ in store.files()}
    more = await _produce(bus, range(10, 20))
    service2, _ = _sink(bus, store, roll_seconds=0.05)
    async with service2:
        await _until(lambda: _committed(bus) == _end_offsets(bus))
    assert kept <= {n for _, n, _ in store.files()}
    assert service2.metrics.value("fieldlink_sink_parquet_orphans_deleted_total") == 0
    assert sorted(_archive_keys(store)) == sorted(r.idempotency_key() for r in first + more)


async def test_an_overlapping_file_of_a_lost_member_is_replaced(
        bus: EmbeddedBus, store: ArchiveStore) -> None:
    produced = await _produce(bus, range(6))
    # what a member that lost its partitions mid-roll could have left behind: the readings
    # of offset 1 of each partition, under a name the new owner never writes
    async with bus.consumer("peek", [TOPIC]) as peek:
        records: list[Any] = []
        while len(records) < sum(_end_offsets(bus).values()):
            records += await peek.getmany(timeout_ms=500)
    orphans = 0
    for r in records:
        if r.offset != 1:
            continue
        batch = decode_batch(r.value)
        for facility in {x.facility for x in batch.readings}:
            rs = [x for x in batch.readings if x.facility == facility]
            table = pa.Table.from_batches([readings_batch(rs, batch.gateway_id)])
            rel = partition_dir(day_of(rs[0].ts_ms), facility)
            store.write_atomic(f"{rel}/{part_name(TOPIC, r.partition, 1, 1)}",
                               parquet_bytes(sort_rows(table)))
            orphans += 1
    assert orphans
    service, _ = _sink(bus, store, roll_seconds=3600)

    async def taken_over_late(tp: tuple[str, int], offset: int) -> None:
        return None  # as if the files appeared after this member took the partitions over

    service.sink.partition_started = taken_over_late  # type: ignore[method-assign]
    async with service:
        await _until(lambda: service.loop is not None and service.sink.buffered == 600)
    keys = _archive_keys(store)
    assert sorted(keys) == sorted(r.idempotency_key() for r in produced)
    assert service.metrics.value("fieldlink_sink_parquet_orphans_deleted_total") == orphans


async def test_rolls_by_size_keep_memory_bounded(bus: EmbeddedBus, store: ArchiveStore) -> None:
    produced = await _produce(bus, range(30))
    service, sink = _sink(bus, store, roll_seconds=3600, roll_bytes=4000)
    flushes = "fieldlink_sink_flushes_total"
    async with service:
        # no roll is ever due by time: every roll until the drain is a size roll
        await _until(lambda: service.metrics.value(flushes) >= 6)
        await _until(lambda: service.loop is not None and service.loop.caught_up)
        assert sink.buffered < 400  # at most a few records per partition held
    assert sorted(_archive_keys(store)) == sorted(r.idempotency_key() for r in produced)


async def test_poison_records_are_dead_lettered_and_skipped(
        bus: EmbeddedBus, store: ArchiveStore) -> None:
    good = await _produce(bus, range(3))
    await bus.producer().send_batch(TOPIC, [(b"factory_a/0", b"\x00garbage", [
        ("fl-gateway", b"gw-0"), ("fl-batch", b"gw-0:99")])])
    good += await _produce(bus, range(3, 6))
    service, _ = _sink(bus, store, roll_seconds=0.05)
    async with service:
        await _until(lambda: _committed(bus) == _end_offsets(bus))
    assert sorted(_archive_keys(store)) == sorted(r.idempotency_key() for r in good)
    async with bus.consumer("dl-check", [DL]) as consumer:
        dead = await consumer.getmany(timeout_ms=2000)
    assert len(dead) == 1
    d = dead[0]
    assert d.value == b"\x00garbage"
    assert d.header("fl-source") == b"sink-parquet" and d.header("fl-stage") == b"frame"
    assert d.header("fl-batch") == b"gw-0:99" and d.header("fl-origin", ) is not None
    assert service.metrics.value("fieldlink_sink_deadletters_total",
                                 reason=d.header("fl-reason").decode()) == 1  # type: ignore[union-attr]


async def test_a_reading_delivered_twice_within_a_roll_is_written_once(
        bus: EmbeddedBus, store: ArchiveStore) -> None:
    produced = await _produce(bus, range(4))
    await _produce(bus, range(2))  # the same readings again (a retried batch)
    service, _ = _sink(bus, store, roll_seconds=3600)
    async with service:
        await _until(lambda: service.loop is not None and service.loop.caught_up
                     and service.sink.buffered == 600)
    keys = _archive_keys(store)
    assert sorted(keys) == sorted(r.idempotency_key() for r in produced)
    m = service.metrics
    assert m.value("fieldlink_sink_items_total", kind="duplicate") == 200
    assert m.value("fieldlink_sink_items_total", kind="reading") == 400


def test_roll_decisions_follow_the_clock_and_the_size() -> None:
    from cloud.bus import Record
    from edge.testing import FakeClock

    clock = FakeClock()
    metrics = SinkMetrics("parquet")
    sink = ParquetSink(ArchiveStore(f"memory://roll-{uuid.uuid4().hex}"),
                       None, metrics, roll_seconds=60, roll_bytes=10**9,  # type: ignore[arg-type]
                       max_buffer_bytes=10**9, clock=clock)
    assert sink.due_in(clock.monotonic()) is None
    frame = encode_batch(Batch("gw", 1, T, _readings(0, 100)))
    record = Record(TOPIC, 0, 7, b"k", frame, (), T)
    sink.add(record, decode_batch(frame))
    assert sink.due_in(clock.monotonic()) == 60
    assert sink._due(clock.monotonic(), False) == []
    clock.advance(59.5)
    assert sink.due_in(clock.monotonic()) == pytest.approx(0.5)
    clock.advance(0.5)
    assert sink._due(clock.monotonic(), False) == [(TOPIC, 0)]
    # by size: the estimate (Arrow bytes x learnt ratio) reaching roll_bytes
    sink.roll_bytes = 1000
    clock.advance(-59)
    assert sink.due_in(clock.monotonic()) == 0.0
    assert sink._due(clock.monotonic(), False) == [(TOPIC, 0)]
    assert sink.buffered == 100
    sink.revoke([(TOPIC, 0)])
    assert sink.buffered == 0 and sink.due_in(clock.monotonic()) is None
