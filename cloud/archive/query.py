"""DuckDB over the Parquet archive: the `readings` view, SQL, and the dashboards' range query.

    fieldlink cloud query "SELECT facility, count(*) FROM readings GROUP BY 1" [-c FILE]
        [--archive PATH_OR_URL] [--format table|csv|json]

    con = connect(root)                      # a DuckDB connection with the view `readings`
    rows = query_range(root, "sensor-7", start_ms, end_ms, bucket_ms=60_000)

The view is

    CREATE VIEW readings AS SELECT * FROM read_parquet('<root>/**/*.parquet',
        hive_partitioning = true, hive_types = {'date': 'DATE', 'facility': 'VARCHAR'},
        union_by_name = true)

so `date` and `facility` come from the directories (a filter on them skips whole
directories) and every other column from the files (`cloud.archive.rows`: `ts` is a UTC
TIMESTAMP; files written before the key was dropped also have `key`, NULL in the others:
union_by_name).  A root that is an fsspec URL (s3://...,
memory://...) is read through fsspec.  An empty archive gives an empty view.

Duplicates: a reading stored twice (a rare race, see `cloud.sinks.parquet`) stays so until
compaction merges its directory; `query_range` de-duplicates itself, grouping by the
inputs of the idempotency key (`Reading.idempotency_key()`: seq, else the receive time for
a reading without sensor time, else the sensor time, with the value).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from cloud.archive.layout import day_of, format_day
from cloud.archive.store import ArchiveStore
from edge.model import FLAG_TS_MISSING

__all__ = ["KEY_SQL", "RangeRow", "connect", "main", "query", "query_range"]

_EMPTY = """CREATE VIEW readings AS SELECT * FROM (SELECT
    NULL::VARCHAR AS device_id, NULL::TIMESTAMP AS ts, NULL::DOUBLE AS value,
    NULL::VARCHAR AS measurement, NULL::VARCHAR AS unit, NULL::VARCHAR AS line,
    NULL::VARCHAR AS zone, NULL::VARCHAR AS quality, NULL::DOUBLE AS battery,
    NULL::BIGINT AS seq, NULL::BIGINT AS received_ms, NULL::BIGINT AS sensor_ts_ms,
    NULL::INTEGER AS flags, NULL::VARCHAR AS gateway, NULL::DATE AS date,
    NULL::VARCHAR AS facility) WHERE false"""


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(root: str | ArchiveStore,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (new, or `con`) with the view `readings` over the archive."""
    store = root if isinstance(root, ArchiveStore) else ArchiveStore(root)
    con = con or duckdb.connect()
    if store.local:
        glob = f"{store.root}/**/*.parquet"
    else:
        con.register_filesystem(store.fs)
        protocol = store.fs.protocol if isinstance(store.fs.protocol, str) else \
            store.fs.protocol[0]
        glob = f"{protocol}://{store.root.lstrip('/')}/**/*.parquet"
    has_data = any(name.endswith(".parquet") for _, name, _ in store.files())
    con.execute("DROP VIEW IF EXISTS readings")
    if not has_data:
        con.execute(_EMPTY)
        return con
    con.execute(
        f"CREATE VIEW readings AS SELECT * FROM read_parquet({_sql_string(glob)}, "
        "hive_partitioning = true, hive_types = {'date': 'DATE', 'facility': 'VARCHAR'}, "
        "union_by_name = true)")
    return con


def query(root: str | ArchiveStore, sql: str,
          params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run `sql` against the archive; (column names, rows)."""
    con = connect(root)
    try:
        cur = con.execute(sql, list(params) if params is not None else None)
        columns = [d[0] for d in cur.description or []]
        return columns, cur.fetchall()
    finally:
        con.close()


@dataclass(frozen=True, slots=True)
class RangeRow:
    bucket_start_ms: int
    min: float
    max: float
    avg: float
    p95: float
    count: int


#: a SQL expression over the `readings` columns equal for two rows exactly when their
#: `Reading.idempotency_key()` is (its inputs, in its branches: seq; else the receive time
#: for a reading without sensor time, else the sensor time, each with the value).  E.g.
#: `SELECT count(DISTINCT {KEY_SQL}) FROM readings`.
KEY_SQL = (
    "(device_id, measurement, seq, "
    f"CASE WHEN seq IS NULL THEN (flags & {FLAG_TS_MISSING}) <> 0 END, "
    f"CASE WHEN seq IS NULL THEN CASE WHEN (flags & {FLAG_TS_MISSING}) <> 0 THEN received_ms "
    "ELSE coalesce(sensor_ts_ms, epoch_ms(ts::TIMESTAMP)) END END, "
    "CASE WHEN seq IS NULL THEN value END)")

_RANGE = """
WITH r AS (
    SELECT any_value(ts) AS ts, any_value(value) AS value
    FROM readings
    WHERE device_id = $device AND date BETWEEN $first_day AND $last_day
      AND ts >= epoch_ms($start) AND ts < epoch_ms($end) {measurement}
    GROUP BY {key}
)
SELECT (epoch_ms(ts) // $bucket) * $bucket AS bucket_start, min(value), max(value),
       avg(value), quantile_cont(value, 0.95), count(*)
FROM r GROUP BY bucket_start ORDER BY bucket_start
"""


def query_range(root: str | ArchiveStore, device_id: str, start_ms: int, end_ms: int,
                bucket_ms: int, *, measurement: str | None = None,
                con: duckdb.DuckDBPyConnection | None = None) -> list[RangeRow]:
    """Per `bucket_ms` bucket of [start_ms, end_ms): min, max, avg, p95 and count of the
    device's values (each reading counted once), buckets aligned to the epoch, empty ones
    left out.  Only the directories of the days in range are read."""
    if bucket_ms <= 0 or end_ms <= start_ms:
        raise ValueError("need bucket_ms > 0 and end_ms > start_ms")
    own = con is None
    con = connect(root) if con is None else con
    params: dict[str, Any] = {
        "device": device_id, "start": start_ms, "end": end_ms, "bucket": bucket_ms,
        "first_day": format_day(day_of(start_ms)), "last_day": format_day(day_of(end_ms - 1))}
    extra = ""
    if measurement is not None:
        extra = "AND measurement = $measurement"
        params["measurement"] = measurement
    try:
        rows = con.execute(_RANGE.format(measurement=extra, key=KEY_SQL),
                           params).fetchall()
    finally:
        if own:
            con.close()
    return [RangeRow(int(b), float(mn), float(mx), float(avg), float(p95), int(n))
            for b, mn, mx, avg, p95, n in rows]


def _print(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            print(json.dumps(dict(zip(columns, row)), default=_json_default))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _cell(v: Any) -> str:
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex()
    return "NULL" if v is None else str(v)


def _json_default(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex()
    return str(v)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud query",
        description="Run SQL (DuckDB) over the Parquet archive; the table is `readings` "
                    "(columns of docs/sinks.md, plus date and facility).")
    parser.add_argument("sql")
    parser.add_argument("-c", "--config", default="config/cloud.yaml", metavar="FILE")
    parser.add_argument("--archive", metavar="PATH_OR_URL",
                        help="the archive root (default: archive.path of the config)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(list(argv))
    root = args.archive
    if root is None:
        from edge.config.cloud import load_cloud_config
        from edge.errors import ConfigError

        try:
            root = load_cloud_config(args.config).archive_path
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    try:
        columns, rows = query(root, args.sql)
    except duckdb.Error as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 1
    _print(columns, rows, args.format)
    return 0
