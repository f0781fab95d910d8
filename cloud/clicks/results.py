"""Where click window results go: InfluxDB (provisional and final) and the Parquet archive
(final only).

InfluxDB point, one per (window, event type), timestamped at the window start (ms)::

    web_events_1m,event_type=click events=42i,users=17i,sessions=19i,out_of_order=3i,
        final=true,window_ms=60000i  1705314600000

InfluxDB keeps one point per (measurement, tags, timestamp), so the provisional points of an
open window and its final point are successive versions of the same point: the last write
wins, a replay writes the same values again.  `final` is a field, not a tag, for that reason.

Archive file, one per window start (all event types of that minute; they close together
because stream time is shared)::

    <archive>/web_events_1m/date=2024-01-15/minute-1705314600000.parquet
    columns: window_start timestamp[ms], window_end timestamp[ms], event_type string,
             events int64, users int64, sessions int64, out_of_order int64

The name is a function of the window, and files are replaced atomically
(`cloud.archive.store.ArchiveStore.write_atomic`), so closing the same window again after a
restart rewrites the same file rather than adding a second one.

InfluxDB I/O reuses the sinks' client (`cloud.sinks.influx`): retries on 5xx/unreachable with
capped jittered backoff inside `BatchWriter`, database and retention set up on start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import groupby
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cloud.archive.layout import day_of, format_day
from cloud.archive.store import ArchiveStore
from cloud.clicks.windows import WindowResult
from cloud.sinks.influx.lineproto import escape_measurement, escape_tag

__all__ = ["ARCHIVE_SCHEMA", "archive_files", "line", "parquet_bytes"]

log = logging.getLogger("fieldlink.cloud.clicks")

ARCHIVE_SCHEMA = pa.schema([
    ("window_start", pa.timestamp("ms")),
    ("window_end", pa.timestamp("ms")),
    ("event_type", pa.string()),
    ("events", pa.int64()),
    ("users", pa.int64()),
    ("sessions", pa.int64()),
    ("out_of_order", pa.int64()),
])


def line(r: WindowResult, measurement: str) -> str:
    """The line-protocol point of one window result."""
    return (f"{escape_measurement(measurement)},event_type={escape_tag(r.event_type)} "
            f"events={r.events}i,users={r.users}i,sessions={r.sessions}i,"
            f"out_of_order={r.out_of_order}i,final={'true' if r.final else 'false'},"
            f"window_ms={r.end_ms - r.start_ms}i {r.start_ms}")


def parquet_bytes(results: Sequence[WindowResult]) -> bytes:
    rows = sorted(results, key=lambda r: r.event_type)
    table = pa.table({
        "window_start": pa.array([r.start_ms for r in rows], pa.timestamp("ms")),
        "window_end": pa.array([r.end_ms for r in rows], pa.timestamp("ms")),
        "event_type": pa.array([r.event_type for r in rows], pa.string()),
        "events": pa.array([r.events for r in rows], pa.int64()),
        "users": pa.array([r.users for r in rows], pa.int64()),
        "sessions": pa.array([r.sessions for r in rows], pa.int64()),
        "out_of_order": pa.array([r.out_of_order for r in rows], pa.int64()),
    }, schema=ARCHIVE_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue())


def archive_files(results: Sequence[WindowResult], directory: str) -> dict[str, bytes]:
    """Relative path -> Parquet bytes, one file per window start (see the module docstring)."""
    out = {}
    finals = sorted((r for r in results if r.final), key=lambda r: r.start_ms)
    for start, group in groupby(finals, key=lambda r: r.start_ms):
        rel = f"{directory}/date={format_day(day_of(start))}/minute-{start}.parquet"
        out[rel] = parquet_bytes(list(group))
    return out


class ResultWriter:
    """Writes results to InfluxDB and the archive; both optional (None: not configured)."""

    def __init__(self, *, influx: Any | None, archive: ArchiveStore | None,
                 measurement: str, archive_dir: str) -> None:
        #: a `cloud.sinks.influx.writer.BatchWriter` (or anything with `await write(lines)`)
        self.influx = influx
        self.archive = archive
        self.measurement = measurement
        self.archive_dir = archive_dir
        self.stats = {"points": 0, "points_rejected": 0, "files": 0}

    async def write(self, results: Sequence[WindowResult]) -> None:
        """Every result to InfluxDB, finals to the archive too.  Returns when both are durable;
        retries until they are (cancel to give up)."""
        if not results:
            return
        if self.influx is not None:
            lines = [line(r, self.measurement) for r in results]
            rejected = await self.influx.write(lines)
            for index, reason, message in rejected:
                # generated from validated names and integers: a refusal is a server-side
                # schema conflict (e.g. someone else's measurement of that name)
                log.error("influxdb refused a click window point", extra={"fields": {
                    "line": lines[index], "reason": reason, "error": message}})
            self.stats["points"] += len(lines) - len(rejected)
            self.stats["points_rejected"] += len(rejected)
        if self.archive is not None:
            files = archive_files(results, self.archive_dir)
            if files:
                await asyncio.to_thread(self._publish, files)
                self.stats["files"] += len(files)

    def _publish(self, files: dict[str, bytes]) -> None:
        assert self.archive is not None
        for rel, data in files.items():
            self.archive.write_atomic(rel, data)
