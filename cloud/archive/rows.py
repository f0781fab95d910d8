"""Readings as Arrow rows, and the Parquet encoding of the archive (pure: no I/O).

Schema of every archive file (the directory adds `date` and `facility`):

    device_id     string            dictionary-encoded
    ts            timestamp[ms]     event time, UTC (no zone attached: DuckDB reads TIMESTAMP)
    value         double
    measurement   string            dictionary
    unit          string            dictionary
    line, zone    string (nullable) dictionary
    quality       string            dictionary
    battery       double (nullable)
    seq           int64 (nullable)  the sensor's sequence number
    received_ms   int64             when the gateway received it
    sensor_ts_ms  int64 (nullable)  the sensor's claimed time when it was overridden for skew
    flags         int32             edge.model FLAG_* bits
    gateway       string            dictionary; the gateway that uplinked it

The idempotency key is not stored: it is a hash (16 incompressible bytes, 5x the rest of a
row) and every one of its inputs is a column — `row_keys` recomputes it, bit for bit equal
to `Reading.idempotency_key()`, wherever de-duplication needs it (compaction, the sink's
roll; `cloud.archive.query` groups by the same inputs).  Files written before this carry a
`key` column; readers ignore it (compaction drops it, DuckDB reads with union_by_name).

Rows of a file are sorted by device, then time (runs of one device compress well and DuckDB
skips row groups by device statistics).  zstd; dictionaries for the strings; the
monotonic-ish integer columns use DELTA_BINARY_PACKED.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edge.model import FLAG_TS_MISSING, Reading

__all__ = ["BUFFER_SCHEMA", "SCHEMA", "dedupe", "parquet_bytes", "partition_groups",
           "readings_batch", "row_keys", "sort_rows"]

SCHEMA = pa.schema([
    ("device_id", pa.string()),
    ("ts", pa.timestamp("ms")),
    ("value", pa.float64()),
    ("measurement", pa.string()),
    ("unit", pa.string()),
    ("line", pa.string()),
    ("zone", pa.string()),
    ("quality", pa.string()),
    ("battery", pa.float64()),
    ("seq", pa.int64()),
    ("received_ms", pa.int64()),
    ("sensor_ts_ms", pa.int64()),
    ("flags", pa.int32()),
    ("gateway", pa.string()),
])
#: what the sink buffers: the file schema plus each row's key (computed once, from the
#: Reading) and partition columns
BUFFER_SCHEMA = SCHEMA.append(pa.field("key", pa.binary(16))).append(
    pa.field("_day", pa.int32())).append(pa.field("_facility", pa.string()))

_DICTIONARY = ["device_id", "measurement", "unit", "line", "zone", "quality", "gateway"]
_DELTA = {"ts": "DELTA_BINARY_PACKED", "received_ms": "DELTA_BINARY_PACKED",
          "seq": "DELTA_BINARY_PACKED"}
_DAY_MS = 86_400_000


def readings_batch(readings: Sequence[Reading], gateway: str) -> pa.RecordBatch:
    """The readings as one Arrow batch of BUFFER_SCHEMA (input order)."""
    ts = [r.ts_ms for r in readings]
    facility = [r.facility or None for r in readings]
    columns = [
        pa.array([r.device_id for r in readings], pa.string()),
        pa.array(ts, pa.timestamp("ms")),
        pa.array([r.value for r in readings], pa.float64()),
        pa.array([r.measurement for r in readings], pa.string()),
        pa.array([r.unit for r in readings], pa.string()),
        pa.array([r.line for r in readings], pa.string()),
        pa.array([r.zone for r in readings], pa.string()),
        pa.array([r.quality for r in readings], pa.string()),
        pa.array([r.battery_voltage for r in readings], pa.float64()),
        pa.array([r.seq for r in readings], pa.int64()),
        pa.array([r.received_ms for r in readings], pa.int64()),
        pa.array([r.sensor_ts_ms for r in readings], pa.int64()),
        pa.array([r.flags for r in readings], pa.int32()),
        pa.array([gateway] * len(readings), pa.string()),
        pa.array([r.idempotency_key() for r in readings], pa.binary(16)),
        pa.array(np.floor_divide(np.asarray(ts, np.int64), _DAY_MS).astype(np.int32)),
        pa.array(facility, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=BUFFER_SCHEMA)


_SEQ = struct.Struct(">q")
_TIME_VALUE = struct.Struct(">qd")


def row_keys(table: pa.Table) -> pa.FixedSizeBinaryArray:
    """`Reading.idempotency_key()` of every row of `table` (SCHEMA columns), recomputed from
    device_id, measurement, seq, flags, received_ms, sensor_ts_ms, ts and value.

    Must stay in step with edge.model (tests/unit/test_archive_keys.py checks it on
    arbitrary readings)."""
    cols = [table.column(name).to_pylist() for name in
            ("device_id", "measurement", "seq", "flags", "received_ms", "sensor_ts_ms")]
    cols.append(table.column("ts").cast(pa.timestamp("ms")).cast(pa.int64()).to_pylist())
    cols.append(table.column("value").to_pylist())
    prefixes: dict[tuple[str, str], Any] = {}
    out: list[bytes] = []
    append = out.append
    for device, measurement, seq, flags, received, sensor_ts, ts, value in zip(*cols):
        prefix = prefixes.get((device, measurement))
        if prefix is None:
            prefix = hashlib.blake2b(digest_size=16)
            prefix.update(device.encode() + b"\0" + measurement.encode())
            prefixes[(device, measurement)] = prefix
        h = prefix.copy()
        if seq is not None:
            h.update(b"\0s" + _SEQ.pack(seq))
        elif flags & FLAG_TS_MISSING:
            h.update(b"\0r" + _TIME_VALUE.pack(received, value))
        else:
            h.update(b"\0t" + _TIME_VALUE.pack(ts if sensor_ts is None else sensor_ts, value))
        append(h.digest())
    return pa.array(out, pa.binary(16))  # type: ignore[return-value]


def sort_rows(table: pa.Table) -> pa.Table:
    """Rows by device, then time (stable: equal rows keep their order)."""
    return table.sort_by([("device_id", "ascending"), ("ts", "ascending")])


def dedupe(table: pa.Table) -> pa.Table:
    """The rows whose idempotency key has not been seen in an earlier row (the first copy
    wins).  The key is the `key` column if the table has one (the sink's buffer); else two
    rows have the same key exactly when they have the same key inputs (`_identity`)."""
    n = table.num_rows
    if n < 2:
        return table
    if "key" not in table.column_names:
        return _dedupe_identity(table)
    keys = table.column("key").combine_chunks()
    if keys.null_count:
        raise ValueError("the key column must not hold nulls")
    raw = np.frombuffer(keys.buffers()[1], dtype=np.uint8,
                        count=16 * n, offset=16 * keys.offset).reshape(-1, 16)
    hi = np.ascontiguousarray(raw[:, :8]).view(">u8").ravel()
    # the common case, no duplicate at all, costs one sort of the first 8 bytes
    sorted_hi = np.sort(hi)
    if not np.any(sorted_hi[1:] == sorted_hi[:-1]):
        return table
    lo = np.ascontiguousarray(raw[:, 8:]).view(">u8").ravel()
    order = np.lexsort((np.arange(n), lo, hi))  # by key, then row: a key's first row first
    h, lo_ = hi[order], lo[order]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = (h[1:] == h[:-1]) & (lo_[1:] == lo_[:-1])
    if not repeat.any():
        return table
    keep = np.sort(order[~repeat])
    return table.take(pa.array(keep))


def _identity(table: pa.Table) -> list[np.ndarray]:
    """The inputs of every row's idempotency key as integer columns, as the hash sees them:
    device and measurement (dictionary codes), which branch (seq / receive time / sensor
    time), its integer, and the value's bits (the hash packs the double: -0.0 and 0.0
    differ, as they do here; the value does not count when there is a seq)."""
    seq = table.column("seq")
    has_seq = pc.is_valid(seq).to_numpy(zero_copy_only=False)
    missing = (table.column("flags").to_numpy() & FLAG_TS_MISSING) != 0
    ts = table.column("ts").cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy()
    sensor = table.column("sensor_ts_ms")
    sensor_time = np.where(pc.is_valid(sensor).to_numpy(zero_copy_only=False),
                           pc.fill_null(sensor, 0).to_numpy(), ts)
    time = np.where(missing, table.column("received_ms").to_numpy(), sensor_time)
    bits = np.ascontiguousarray(table.column("value").to_numpy(), np.float64).view(np.int64)
    codes = [pc.dictionary_encode(table.column(name)).combine_chunks().indices.to_numpy()
             for name in ("device_id", "measurement")]
    return [*codes, np.where(has_seq, 0, np.where(missing, 1, 2)),
            np.where(has_seq, pc.fill_null(seq, 0).to_numpy(), time),
            np.where(has_seq, 0, bits)]


def _dedupe_identity(table: pa.Table) -> pa.Table:
    """`dedupe` by the key's inputs: exact (no hash) and vectorised — several times faster
    than recomputing the hashes (`row_keys`), which compaction would pay for every row."""
    n = table.num_rows
    columns = _identity(table)
    order = np.lexsort([np.arange(n), *reversed(columns)])  # a key's first row first
    repeat = np.ones(n - 1, dtype=bool)
    for c in columns:
        s = c[order]
        repeat &= s[1:] == s[:-1]
    if not repeat.any():
        return table
    keep = np.ones(n, dtype=bool)
    keep[1:] = ~repeat
    return table.take(pa.array(np.sort(order[keep])))


def parquet_bytes(table: pa.Table, *, compression_level: int = 6,
                  row_group_size: int = 1 << 20) -> bytes:
    """`table` (SCHEMA columns) encoded as an archive Parquet file."""
    table = table.select(SCHEMA.names).cast(SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=compression_level,
                   use_dictionary=_DICTIONARY, column_encoding=_DELTA,
                   row_group_size=row_group_size, write_statistics=True,
                   store_schema=False)
    return bytes(sink.getvalue())


def partition_groups(table: pa.Table) -> list[tuple[int, str | None, pa.Table]]:
    """A BUFFER_SCHEMA table split by (day, facility), each part without those columns."""
    out = []
    days = table.column("_day")
    facilities = table.column("_facility")
    pairs = pa.table({"d": days, "f": facilities}).group_by(["d", "f"]).aggregate([])
    for day, facility in zip(pairs.column("d").to_pylist(), pairs.column("f").to_pylist()):
        same_fac = pc.is_null(facilities) if facility is None else \
            pc.equal(facilities, pa.scalar(facility, pa.string()))
        mask = pc.and_(pc.equal(days, pa.scalar(day, pa.int32())),
                       pc.fill_null(same_fac, False))
        part = table.filter(mask).select(SCHEMA.names)
        out.append((int(day), facility, part))
    return sorted(out, key=lambda x: (x[0], x[1] or ""))
