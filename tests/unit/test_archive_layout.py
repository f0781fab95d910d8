"""cloud.archive.layout and cloud.archive.rows: names, partitions, the Parquet encoding."""

from __future__ import annotations

import io
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.archive.layout import (
    NULL_PARTITION,
    daily_name,
    day_of,
    decode_value,
    encode_value,
    format_day,
    parse_data_file,
    parse_day,
    parse_partition,
    part_name,
    partition_dir,
    ranges_overlap,
)
from cloud.archive.rows import (
    BUFFER_SCHEMA,
    SCHEMA,
    dedupe,
    parquet_bytes,
    partition_groups,
    readings_batch,
    row_keys,
    sort_rows,
)
from edge.model import FLAG_TS_MISSING, Reading

T = 1_705_322_400_000  # 2024-01-15 12:40 UTC


def test_days() -> None:
    assert format_day(day_of(T)) == "2024-01-15"
    assert day_of(T - T % 86_400_000) == day_of(T)  # midnight belongs to its day
    assert day_of(T - T % 86_400_000 - 1) == day_of(T) - 1
    assert parse_day("2024-01-15") == day_of(T)
    with pytest.raises(ValueError):
        parse_day("2024-13-01")


@pytest.mark.parametrize(("value", "encoded"), [
    ("factory_a", "factory_a"), ("a/b c", "a%2Fb%20c"), ("x=y", "x%3Dy"), ("50%", "50%25"),
    (None, NULL_PARTITION), ("", NULL_PARTITION), ("Zürich", "Z%C3%BCrich")])
def test_partition_values_are_percent_encoded(value: str | None, encoded: str) -> None:
    assert encode_value(value) == encoded
    assert decode_value(encoded) == (value or None)


@given(st.text(min_size=1, max_size=40))
def test_any_facility_round_trips_through_its_directory(facility: str) -> None:
    rel = partition_dir(19737, facility)
    assert rel.count("/") == 1
    assert parse_partition(rel) == (19737, facility)


def test_partition_dir() -> None:
    assert partition_dir(day_of(T), "factory_a") == "date=2024-01-15/facility=factory_a"
    assert parse_partition("date=2024-01-15/facility=__HIVE_DEFAULT_PARTITION__") == \
        (day_of(T), None)
    for bad in ("date=2024-01-15", "x/y", "date=nope/facility=a", "facility=a/date=2024-01-15"):
        assert parse_partition(bad) is None


@pytest.mark.parametrize("topic", ["fieldlink.readings", "t-1", "a_b-2.c", "9"])
def test_part_names_parse_back(topic: str) -> None:
    name = part_name(topic, 12, 0, 99_999)
    f = parse_data_file(name)
    assert f is not None and f.kind == "part"
    assert (f.topic, f.partition, f.first, f.last) == (topic, 12, 0, 99_999)
    assert f.overlaps(topic, 12, 99_999, 100_500)
    assert not f.overlaps(topic, 12, 100_000, 100_500)
    assert not f.overlaps(topic, 11, 0, 5)
    assert not f.overlaps(topic + "x", 12, 0, 5)


def test_daily_names_depend_on_the_inputs_only() -> None:
    a = daily_name(["part-t-0-0-9.parquet", "part-t-1-0-4.parquet"])
    assert a == daily_name(["part-t-1-0-4.parquet", "part-t-0-0-9.parquet"])
    assert a != daily_name(["part-t-0-0-9.parquet"])
    f = parse_data_file(a)
    assert f is not None and f.kind == "daily"


@pytest.mark.parametrize("name", ["part-t-0-0-9.parquet.tmp", "daily-xyz.parquet",
                                  "_compaction.json", "part-t-0-0.parquet",
                                  "part-t-0-0-9.parquet.superseded", "notes.txt"])
def test_work_in_progress_is_not_data(name: str) -> None:
    assert parse_data_file(name) is None


def test_ranges_overlap() -> None:
    assert ranges_overlap(0, 9, 9, 20) and ranges_overlap(5, 5, 0, 10)
    assert not ranges_overlap(0, 9, 10, 20)


# -- rows -------------------------------------------------------------------------------------

def _readings(n: int = 300, seed: int = 1) -> list[Reading]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(Reading(
            device_id=f"dev-{rng.randrange(7)}", ts_ms=T + rng.randrange(2 * 86_400_000),
            value=round(rng.uniform(-5, 40), 2), measurement=rng.choice(["temperature", "rh"]),
            unit="C", facility=rng.choice(["f1", "f2", None]), line=rng.choice(["1", None]),
            zone=None, quality=rng.choice(["good", "bad"]),
            battery_voltage=rng.choice([None, 3.3]), seq=rng.choice([None, i]),
            received_ms=T + i, flags=rng.choice([0, FLAG_TS_MISSING])))
    return out


def test_readings_batch_holds_every_field_and_the_key() -> None:
    rs = _readings(50)
    rb = readings_batch(rs, "gw-9")
    assert rb.schema == BUFFER_SCHEMA and rb.num_rows == 50
    rows = rb.to_pylist()
    for r, row in zip(rs, rows):
        assert row["device_id"] == r.device_id
        assert int(row["ts"].timestamp() * 1000) == r.ts_ms
        assert row["value"] == r.value and row["battery"] == r.battery_voltage
        assert row["seq"] == r.seq and row["flags"] == r.flags
        assert row["gateway"] == "gw-9" and row["key"] == r.idempotency_key()
        assert row["_day"] == day_of(r.ts_ms) and row["_facility"] == r.facility


def test_partition_groups_split_by_day_and_facility() -> None:
    rs = _readings(400)
    table = pa.Table.from_batches([readings_batch(rs, "gw")])
    groups = partition_groups(table)
    expected = {(day_of(r.ts_ms), r.facility) for r in rs}
    assert {(d, f) for d, f, _ in groups} == expected
    assert sum(t.num_rows for _, _, t in groups) == 400
    for day, facility, part in groups:
        assert part.schema.names == SCHEMA.names
        want = sorted(r.idempotency_key() for r in rs
                      if day_of(r.ts_ms) == day and r.facility == facility)
        assert "key" not in part.column_names
        assert sorted(row_keys(part).to_pylist()) == want


def test_sorted_rows_are_by_device_then_time() -> None:
    table = sort_rows(pa.Table.from_batches([readings_batch(_readings(200), "gw")]))
    pairs = list(zip(table.column("device_id").to_pylist(), table.column("ts").to_pylist()))
    assert pairs == sorted(pairs)


def test_dedupe_keeps_the_first_copy() -> None:
    rs = _readings(100)
    first = pa.Table.from_batches([readings_batch(rs, "gw-a")])
    again = pa.Table.from_batches([readings_batch(rs[::3], "gw-b")])
    merged = dedupe(pa.concat_tables([first, again]))
    assert merged.num_rows == 100
    assert set(merged.column("gateway").to_pylist()) == {"gw-a"}
    assert dedupe(first).num_rows == 100


def test_parquet_encoding() -> None:
    table = sort_rows(pa.Table.from_batches([readings_batch(_readings(500), "gw")]))
    data = parquet_bytes(table)
    f = pq.ParquetFile(io.BytesIO(data))
    assert f.schema_arrow == SCHEMA
    col = f.metadata.row_group(0).column(0)
    assert col.compression == "ZSTD" and "RLE_DICTIONARY" in col.encodings
    back = f.read()
    assert "key" not in back.column_names
    assert row_keys(back).to_pylist() == table.column("key").to_pylist()
    assert back.num_rows == 500


@given(st.lists(st.tuples(st.sampled_from([b"\x00" * 8, b"\x01" * 8, b"\xff" * 8]),
                          st.sampled_from([b"\x00" * 8, b"\x07" * 8, b"\x80" * 8])),
                max_size=40))
def test_dedupe_matches_first_occurrence_semantics(parts: list[tuple[bytes, bytes]]) -> None:
    # keys sharing their first 8 bytes exercise the slow path
    keys = [hi + lo for hi, lo in parts]
    table = pa.table({"key": pa.array(keys, pa.binary(16)),
                      "row": pa.array(range(len(keys)), pa.int64())})
    out = dedupe(table)
    seen: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        seen.setdefault(k, i)
    assert out.column("row").to_pylist() == sorted(seen.values())
