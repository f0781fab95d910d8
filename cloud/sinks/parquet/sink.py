"""The Parquet sink: every reading into the archive, exactly once, crash-safe.

    sink = ParquetSink(ArchiveStore(cfg.archive_path), deadletters, metrics,
                       roll_bytes=128 * 2**20, roll_seconds=300)

Consumes the readings topic.  Readings are buffered PER KAFKA PARTITION as Arrow batches
(`cloud.archive.rows`).  A partition's buffer is rolled when its estimated file size reaches
`roll_bytes`, when it is `roll_seconds` old, when all buffers together exceed
`max_buffer_bytes` (the biggest goes first), and at shutdown.  Rolling a buffer that covers
offsets [first, last] of partition p of topic t writes, for every (date, facility) among its
readings, one file (`cloud.archive.layout`):

    date=<day>/facility=<facility>/part-<t>-<p>-<first>-<last>.parquet

rows sorted by device then time; readings delivered twice within the roll (the same
idempotency key: ingest's de-duplication is best-effort) are written once
(`items_total{kind="duplicate"}`); then the loop commits offset last + 1.

Why no reading is ever lost or stored twice:

1. A file is published atomically (`ArchiveStore.write_atomic`: temporary name, fsync,
   rename) and the offsets are committed only after every file of the roll is durable.
2. After a crash, the group resumes at the last committed offset c.  Files of t/p whose range
   starts at or after c were written but never committed: `partition_started(tp, c)` deletes
   them before anything is re-consumed (`parquet_orphans_deleted_total`).
3. Re-consuming the same offsets decodes to the same readings, in the same directories.  A
   roll writing [a, b] into a directory first deletes any other part file of t/p there whose
   range overlaps [a, b] (left by a member that lost the partition mid-roll), and a roll with
   the same range rewrites the same name (an atomic replace).
4. Files of a committed range are never touched again (later rolls start after it).

So a reader globbing `**/*.parquet` may briefly miss a re-written range after a crash, but
never sees one reading twice — with one exception: a group member that lost its partitions
to a rebalance while stalled between its rename and its (refused) commit can publish a file
after the new owner re-wrote that range.  `cloud.archive.compact` removes such duplicates
(it de-duplicates on the idempotency key).  Duplicates that ingest let through (the same
reading in two batches, further apart than one roll) are removed the same way.

Dead letters: an undecodable record is dead-lettered by the loop.  Events in a readings
record are not archived (aggregates and alerts live in InfluxDB): they are counted as
`items_total{kind="event_not_archived"}`.

A failing store (disk full, S3 down) keeps the roll retrying with capped, jittered backoff;
nothing is committed and nothing more is consumed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from cloud.archive.layout import TMP, parse_data_file, part_name, partition_dir
from cloud.archive.rows import (
    BUFFER_SCHEMA,
    dedupe,
    parquet_bytes,
    partition_groups,
    readings_batch,
    sort_rows,
)
from cloud.archive.store import ArchiveStore
from cloud.bus import Record
from cloud.sinks.base import TP
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.metrics import SinkMetrics
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from edge.codec import Batch

__all__ = ["ParquetSink"]

log = logging.getLogger("fieldlink.cloud.sinks.parquet")

_T = TypeVar("_T")


@dataclass(slots=True)
class _Buffer:
    opened: float
    first: int | None = None
    last: int = -1
    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0


class ParquetSink:
    kind = "parquet"

    def __init__(self, store: ArchiveStore, deadletters: DeadLetters, metrics: SinkMetrics, *,
                 roll_bytes: int = 128 * 2**20, roll_seconds: float = 300.0,
                 max_buffer_bytes: int = 512 * 2**20, compression_level: int = 6,
                 backoff: Backoff | None = None, clock: Clock | None = None) -> None:
        self.store = store
        self.deadletters = deadletters
        self.metrics = metrics
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self.max_buffer_bytes = max_buffer_bytes
        self.compression_level = compression_level
        self.backoff = backoff or Backoff(base=0.2, cap=30.0)
        #: the monotonic clock of the buffers' age (the loop passes `now` from the same)
        self.clock = clock or SystemClock()
        #: file bytes per buffered Arrow byte, learnt from every roll
        self.ratio = 0.2
        self.failing: str | None = None
        self._buffers: dict[TP, _Buffer] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._check_store)

    def _check_store(self) -> None:
        if self.store.local:
            import os

            os.makedirs(self.store.root, exist_ok=True)
        self.store.list_dir("")

    async def close(self) -> None:
        return None

    async def healthy(self) -> tuple[bool, str]:
        if self.failing is not None:
            return False, f"archive writes failing: {self.failing}"
        await asyncio.to_thread(self.store.list_dir, "")
        return True, f"archive {self.store.url}"

    @property
    def buffered(self) -> int:
        return sum(b.rows for b in self._buffers.values())

    # -- consuming ---------------------------------------------------------------------------

    async def partition_started(self, tp: TP, offset: int) -> None:
        deleted = await self._retry(self._delete_uncommitted, tp, offset)
        if deleted:
            self.metrics.parquet_orphans.inc(len(deleted))
            log.warning("uncommitted archive files of an earlier run deleted", extra={
                "fields": {"partition": f"{tp[0]}/{tp[1]}", "from_offset": offset,
                           "files": deleted[:20], "count": len(deleted)}})

    def _delete_uncommitted(self, tp: TP, offset: int) -> list[str]:
        topic, partition = tp
        deleted = []
        for rel_dir, name, _ in self.store.files():
            base = name[:-len(TMP)] if name.endswith(TMP) else name
            f = parse_data_file(base)
            if f is None or f.kind != "part" or f.topic != topic or f.partition != partition:
                continue
            if f.first is not None and f.first >= offset:
                self.store.delete(f"{rel_dir}/{name}")
                deleted.append(f"{rel_dir}/{name}")
        return deleted

    def _buffer(self, tp: TP) -> _Buffer:
        buf = self._buffers.get(tp)
        if buf is None:
            buf = self._buffers[tp] = _Buffer(opened=self.clock.monotonic())
        return buf

    def add(self, record: Record, batch: Batch) -> None:
        buf = self._buffer((record.topic, record.partition))
        if batch.readings:
            rb = readings_batch(batch.readings, batch.gateway_id)
            buf.batches.append(rb)
            buf.rows += rb.num_rows
            buf.nbytes += rb.nbytes
        if batch.events:
            self.metrics.items("event_not_archived", len(batch.events))
        self._mark(buf, record)

    def skip(self, record: Record) -> None:
        self._mark(self._buffer((record.topic, record.partition)), record)

    @staticmethod
    def _mark(buf: _Buffer, record: Record) -> None:
        if buf.first is None:
            buf.first = record.offset
        buf.last = record.offset

    def due_in(self, now: float) -> float | None:
        if not self._buffers:
            return None
        if sum(b.nbytes for b in self._buffers.values()) >= self.max_buffer_bytes:
            return 0.0
        due = min(b.opened + self.roll_seconds - now for b in self._buffers.values())
        if any(b.nbytes * self.ratio >= self.roll_bytes for b in self._buffers.values()):
            return 0.0
        return due

    def revoke(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._buffers.pop(tp, None)

    # -- rolling -----------------------------------------------------------------------------

    def _due(self, now: float, everything: bool) -> list[TP]:
        if everything:
            return list(self._buffers)
        due = [tp for tp, b in self._buffers.items()
               if b.opened + self.roll_seconds <= now
               or b.nbytes * self.ratio >= self.roll_bytes]
        total = sum(b.nbytes for b in self._buffers.values())
        if total >= self.max_buffer_bytes:
            # memory cap: roll the biggest buffers until under half the cap
            for tp, b in sorted(self._buffers.items(), key=lambda kv: -kv[1].nbytes):
                if total < self.max_buffer_bytes // 2:
                    break
                if tp not in due:
                    due.append(tp)
                total -= b.nbytes
        return due

    async def flush(self, now: float, *, everything: bool = False) -> dict[TP, int]:
        offsets: dict[TP, int] = {}
        for tp in self._due(now, everything):
            buf = self._buffers[tp]
            if buf.first is None:
                del self._buffers[tp]
                continue
            t0 = self.clock.monotonic()
            written, duplicates = await self._retry(self._roll, tp, buf)
            # taken only now: a cancelled roll leaves the buffer for the next attempt
            self._buffers.pop(tp, None)
            offsets[tp] = buf.last + 1
            self.metrics.items("reading", buf.rows - duplicates)
            self.metrics.items("duplicate", duplicates)
            self.metrics.flushes.inc()
            self.metrics.flush_seconds.observe(self.clock.monotonic() - t0)
            file_bytes = sum(size for _, size in written)
            self.metrics.parquet_files.inc(len(written))
            self.metrics.parquet_bytes.inc(file_bytes)
            if buf.nbytes and file_bytes:
                self.ratio = 0.7 * self.ratio + 0.3 * (file_bytes / buf.nbytes)
            log.info("archive files written", extra={"fields": {
                "partition": f"{tp[0]}/{tp[1]}", "offsets": [buf.first, buf.last],
                "readings": buf.rows, "files": [p for p, _ in written],
                "bytes": file_bytes}})
        return offsets

    def _roll(self, tp: TP, buf: _Buffer) -> tuple[list[tuple[str, int]], int]:
        """Write the buffer's files (runs in a worker thread): ([(relative path, bytes)],
        duplicates dropped)."""
        topic, partition = tp
        assert buf.first is not None
        if not buf.rows:
            return [], 0
        table = dedupe(pa.Table.from_batches(buf.batches, schema=BUFFER_SCHEMA))
        duplicates = buf.rows - table.num_rows
        name = part_name(topic, partition, buf.first, buf.last)
        written = []
        for day, facility, part in partition_groups(table):
            data = parquet_bytes(sort_rows(part), compression_level=self.compression_level)
            rel_dir = partition_dir(day, facility)
            for other in self.store.list_dir(rel_dir):
                f = parse_data_file(other)
                if f is not None and other != name and f.overlaps(topic, partition, buf.first,
                                                                  buf.last):
                    self.store.delete(f"{rel_dir}/{other}")
                    self.metrics.parquet_orphans.inc()
                    log.warning("overlapping archive file replaced", extra={"fields": {
                        "file": f"{rel_dir}/{other}", "by": name}})
            self.store.write_atomic(f"{rel_dir}/{name}", data)
            written.append((f"{rel_dir}/{name}", len(data)))
        return written, duplicates

    async def _retry(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(*args)` in a worker thread until it does not raise OSError."""
        while True:
            try:
                result = await asyncio.to_thread(fn, *args)
            except OSError as e:
                self.metrics.store_error(type(e).__name__)
                delay = self.backoff.next_delay()
                self.failing = f"{type(e).__name__}: {e}"[:500]
                log.warning("archive store failed; retrying", extra={"fields": {
                    "error": repr(e), "retry_in_s": round(delay, 3)}})
                await asyncio.sleep(delay)
                continue
            if self.failing is not None:
                log.info("archive store works again")
            self.failing = None
            self.backoff.reset()
            return result
