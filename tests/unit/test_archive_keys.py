"""The archive stores no key column: `row_keys` must recompute `Reading.idempotency_key()`
exactly from the stored columns, in every branch (seq; no sensor time; clock skew), and the
DuckDB `KEY_SQL` identity must group rows exactly as the key does."""

from __future__ import annotations

import io
import math

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.archive.query import KEY_SQL
from cloud.archive.rows import SCHEMA, dedupe, parquet_bytes, readings_batch, row_keys, sort_rows
from edge.model import FLAG_CLOCK_SKEW, FLAG_TS_MISSING, MAX_TS_MS, MIN_TS_MS, Reading

_times = st.integers(MIN_TS_MS, MAX_TS_MS)
_text = st.text(min_size=1, max_size=12)


@st.composite
def _readings(draw: st.DrawFn) -> Reading:
    flags = draw(st.sampled_from([0, FLAG_TS_MISSING, FLAG_CLOCK_SKEW,
                                  FLAG_TS_MISSING | FLAG_CLOCK_SKEW, 4]))
    received = draw(_times)
    skewed = bool(flags & FLAG_CLOCK_SKEW) and draw(st.booleans())
    return Reading(
        device_id=draw(st.sampled_from(["d-1", "d-2", "dév 3"]) | _text),
        ts_ms=received if flags & (FLAG_TS_MISSING | FLAG_CLOCK_SKEW) else draw(_times),
        value=draw(st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, 1.5])),
        measurement=draw(st.sampled_from(["temperature", "rh"]) | _text),
        facility=draw(st.none() | _text),
        seq=draw(st.none() | st.integers(-(2**63), 2**63 - 1)),
        received_ms=received,
        sensor_ts_ms=draw(_times) if skewed else None,
        flags=flags)


@settings(max_examples=300, deadline=None)
@given(st.lists(_readings(), min_size=1, max_size=30))
def test_recomputed_keys_equal_idempotency_key(readings: list[Reading]) -> None:
    want = [r.idempotency_key() for r in readings]
    batch = pa.Table.from_batches([readings_batch(readings, "gw")])
    assert batch.column("key").to_pylist() == want
    # through a stored file, which has no key column
    stored = pq.read_table(io.BytesIO(parquet_bytes(batch)))
    assert "key" not in stored.column_names
    assert row_keys(stored).to_pylist() == want
    # dedupe on the recomputed keys keeps the first row of each key
    firsts = {k: i for i, k in reversed(list(enumerate(want)))}
    assert row_keys(dedupe(stored)).to_pylist() == [want[i] for i in sorted(firsts.values())]


@settings(max_examples=100, deadline=None)
@given(st.lists(_readings(), min_size=1, max_size=30))
def test_key_sql_groups_as_the_key_does(readings: list[Reading]) -> None:
    # -0.0 and 0.0 hash apart but compare equal in SQL; no sensor sends both for one time
    readings = [r for r in readings if not (r.value == 0.0 and math.copysign(1, r.value) < 0)]
    if not readings:
        return
    stored = pq.read_table(io.BytesIO(parquet_bytes(
        pa.Table.from_batches([readings_batch(readings * 2, "gw")]))))
    con = duckdb.connect()
    con.register("readings", stored)
    (distinct,) = con.execute(f"SELECT count(DISTINCT {KEY_SQL}) FROM readings").fetchone() \
        or (None,)
    assert distinct == len({r.idempotency_key() for r in readings})


def test_dedupe_of_old_files_with_a_key_column_and_new_files_without() -> None:
    rs = [Reading("d", MIN_TS_MS + i, float(i), seq=i) for i in range(10)]
    old = pa.Table.from_batches([readings_batch(rs, "gw")]).select(SCHEMA.names + ["key"])
    new = pq.read_table(io.BytesIO(parquet_bytes(sort_rows(old))))
    merged = pa.concat_tables([old.select(SCHEMA.names), new.select(SCHEMA.names)])
    assert dedupe(merged).num_rows == 10
