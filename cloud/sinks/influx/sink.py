"""The InfluxDB sink: readings, window aggregates and alerts into the hot store.

    sink = InfluxSink(InfluxTarget.from_config(cfg.influxdb), deadletters, metrics,
                      batch_size=5000, flush_interval_s=1.0)

Consumed topics: readings, aggregates and alerts (`kafka.topics.*`).  Each decoded item
becomes one line (`cloud.sinks.influx.lineproto`); lines are buffered across records and
partitions, and a flush is due when `batch_size` lines are buffered or the oldest line has
waited `flush_interval_s`.  A flush writes the lines in requests of `batch_size` (gzip, up to
`concurrency` in flight), and returns the offsets of every record whose lines are all either
stored or dead-lettered — the loop commits them.  InfluxDB being down keeps the flush retrying
(`cloud.sinks.influx.writer`); nothing is committed meanwhile.

Refused items:

* an item line protocol cannot carry (`PointRejected` from the builder: non-finite number,
  unrepresentable tag, malformed event body) is dead-lettered without being sent;
* a point InfluxDB refuses (4xx: field type conflict, ...) is found by the writer and
  dead-lettered with InfluxDB's message;
* a point older than the retention policy ("points beyond retention policy") is not an error:
  it belongs to the archive only.  It is counted (`items_total{kind="beyond_retention"}`) and
  logged, not dead-lettered.

Exactly once: a redelivered item rewrites the same point (same measurement, tags and
millisecond timestamp), so at-least-once delivery stores every item once (see lineproto).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cloud.bus import Record
from cloud.errors import PointRejected
from cloud.sinks.base import TP
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.influx.client import InfluxClient, InfluxTarget
from cloud.sinks.influx.lineproto import LineBuilder
from cloud.sinks.influx.writer import BatchWriter
from cloud.sinks.metrics import SinkMetrics
from edge.clock import Clock, SystemClock
from edge.codec import Batch
from edge.model import Event, Reading

__all__ = ["InfluxSink"]

log = logging.getLogger("fieldlink.cloud.sinks.influx")

_SKIPPED = frozenset({"beyond_retention"})


@dataclass(slots=True)
class _Source:
    """A record whose items are buffered: its lines are `lines[start:start + len(items)]`,
    one per item, in order (readings first); refused items are kept to dead-letter them."""

    record: Record
    batch: Batch
    start: int
    items: Sequence[Reading | Event]
    #: how many of `items` are readings (they come first)
    readings: int
    refused: list[tuple[Reading | Event, str, str]] = field(default_factory=list)


class InfluxSink:
    kind = "influxdb"

    def __init__(self, target: InfluxTarget, deadletters: DeadLetters, metrics: SinkMetrics,
                 *, batch_size: int = 5000, flush_interval_s: float = 1.0,
                 concurrency: int = 2, client: InfluxClient | None = None,
                 clock: Clock | None = None) -> None:
        self.target = target
        self.deadletters = deadletters
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self.client = client or InfluxClient(target)
        #: the monotonic clock of the buffer's age (the loop passes `now` from the same)
        self.clock = clock or SystemClock()
        self.builder = LineBuilder()
        self.writer = BatchWriter(self.client.write, metrics, on_missing=self._recreate)
        self.setup_detail = ""
        self._lines: list[str] = []
        self._sources: list[_Source] = []
        #: the `start` of each source, for bisecting a line index to its source
        self._starts: list[int] = []
        #: the write in flight: ({partition: next offset}, {partition: epoch}) when done
        self._inflight: asyncio.Task[tuple[dict[TP, int], dict[TP, int]]] | None = None
        self._inflight_lines = 0
        #: bumped when a partition is revoked
        self._epochs: dict[TP, int] = {}
        self._next: dict[TP, int] = {}
        self._since: float | None = None
        self._open = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._open:
            await self.client.__aenter__()
            self._open = True
        self.setup_detail = await self.client.ensure_retention()

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._open:
            await self.client.aclose()
            self._open = False

    async def _recreate(self) -> None:
        self.setup_detail = await self.client.ensure_retention()

    async def healthy(self) -> tuple[bool, str]:
        if self.writer.failing is not None:
            return False, f"influxdb writes failing: {self.writer.failing}"
        await self.client.ping()
        return True, f"influxdb {self.client.server_version or '?'} {self.target.where}"

    @property
    def buffered(self) -> int:
        return len(self._lines) + self._inflight_lines

    # -- consuming ---------------------------------------------------------------------------

    async def partition_started(self, tp: TP, offset: int) -> None:
        return None

    def add(self, record: Record, batch: Batch) -> None:
        lines = self._lines
        gateway = batch.gateway_id
        reading = self.builder.reading
        refused: list[tuple[Reading | Event, str, str]] = []
        items: Sequence[Reading | Event]
        try:
            new = [reading(r, gateway) for r in batch.readings]
            items = batch.readings
        except PointRejected:
            # the rare batch with a reading line protocol cannot carry: one by one
            new, kept = [], []
            for r in batch.readings:
                try:
                    new.append(reading(r, gateway))
                except PointRejected as e:
                    refused.append((r, e.reason, e.message))
                    continue
                kept.append(r)
            items = kept
        n_readings = len(new)
        if batch.events:
            items = list(items)
            for event in batch.events:
                try:
                    new.append(self.builder.event(event, gateway))
                except PointRejected as e:
                    refused.append((event, e.reason, e.message))
                    continue
                items.append(event)
        self._starts.append(len(lines))
        self._sources.append(_Source(record, batch, len(lines), items, n_readings, refused))
        lines += new
        self._mark(record)

    def skip(self, record: Record) -> None:
        self._mark(record)

    def _mark(self, record: Record) -> None:
        self._next[(record.topic, record.partition)] = record.offset + 1
        if self._since is None:
            self._since = self.clock.monotonic()

    def due_in(self, now: float) -> float | None:
        if self._inflight is not None and self._inflight.done():
            return 0.0  # a finished write to collect (and commit)
        if self._since is None:
            return None if self._inflight is None else 0.05
        if len(self._lines) >= self.batch_size:
            return 0.0
        return self._since + self.flush_interval_s - now

    def revoke(self, tps: Iterable[TP]) -> None:
        gone = set(tps)
        for tp in gone:
            # lines of it may be in flight: their offsets must not be committed
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
        if not gone or not (gone & set(self._next)):
            return
        # lines of other partitions stay; rebuild the buffer without the revoked ones
        lines: list[str] = []
        sources, starts = [], []
        for source in self._sources:
            if (source.record.topic, source.record.partition) in gone:
                continue
            n = len(source.items)
            old = source.start
            source.start = len(lines)
            lines += self._lines[old:old + n]
            sources.append(source)
            starts.append(source.start)
        self._lines, self._sources, self._starts = lines, sources, starts
        for tp in gone:
            self._next.pop(tp, None)
        if not self._next:
            self._since = None

    # -- flushing ----------------------------------------------------------------------------

    async def flush(self, now: float, *, everything: bool = False) -> dict[TP, int]:
        """Start writing the buffer when due; the offsets of writes that completed.

        Writes are pipelined one deep: while InfluxDB takes batch k, the loop decodes and
        builds batch k+1; when k+1 is due before k finished, this waits for k.  Offsets are
        returned only for finished writes, in order, so a commit never covers a line that is
        still in flight.
        """
        offsets: dict[TP, int] = {}
        if self._inflight is not None and self._inflight.done():
            offsets.update(await self._collect())
        due = self.due_in(now)
        if self._since is None or due is None or (due > 0 and not everything):
            if everything and self._inflight is not None:
                offsets.update(await self._collect())
            return offsets
        if self._inflight is not None:
            offsets.update(await self._collect())  # the pipeline is full: wait for it
        lines, sources, starts = self._lines, self._sources, self._starts
        pending = dict(self._next)
        epochs = {tp: self._epochs.get(tp, 0) for tp in pending}
        self._lines, self._sources, self._starts, self._next = [], [], [], {}
        self._since = None
        self._inflight_lines = len(lines)
        self._inflight = asyncio.create_task(
            self._write(lines, sources, starts, pending, epochs), name="influx-write")
        if everything:
            offsets.update(await self._collect())
        return offsets

    async def _collect(self) -> dict[TP, int]:
        task, self._inflight = self._inflight, None
        self._inflight_lines = 0
        if task is None:
            return {}
        offsets, epochs = await task
        # a partition revoked while its lines were in flight is not committed by this member
        return {tp: o for tp, o in offsets.items() if self._epochs.get(tp, 0) == epochs[tp]}

    async def _write(self, lines: list[str], sources: list[_Source], starts: list[int],
                     offsets: dict[TP, int], epochs: dict[TP, int]
                     ) -> tuple[dict[TP, int], dict[TP, int]]:
        t0 = self.clock.monotonic()
        rejected = await self._write_chunks(lines)
        rejected_sent: dict[int, list[int]] = {}
        for index, reason, message in rejected:
            s = bisect.bisect_right(starts, index) - 1
            k = index - sources[s].start
            rejected_sent.setdefault(s, []).append(k)
            sources[s].refused.append((sources[s].items[k], reason, message))
        self._account(sources, rejected_sent)
        self.metrics.flushes.inc()
        self.metrics.flush_seconds.observe(self.clock.monotonic() - t0)
        return offsets, epochs

    async def _write_chunks(self, lines: list[str]) -> list[tuple[int, str, str]]:
        size = self.batch_size
        chunks = [(start, lines[start:start + size]) for start in range(0, len(lines), size)]
        limit = asyncio.Semaphore(self.concurrency)

        async def one(start: int, chunk: list[str]) -> list[tuple[int, str, str]]:
            async with limit:
                return [(start + i, reason, msg)
                        for i, reason, msg in await self.writer.write(chunk)]

        results = await asyncio.gather(*(one(start, chunk) for start, chunk in chunks))
        return [r for part in results for r in part]

    def _account(self, sources: list[_Source], rejected_sent: dict[int, list[int]]) -> None:
        stored: dict[str, int] = {"reading": 0}
        skipped = 0
        for s, source in enumerate(sources):
            stored["reading"] += source.readings
            for event in source.items[source.readings:]:
                kind = event.kind if isinstance(event, Event) else "reading"
                stored[kind] = stored.get(kind, 0) + 1
            for k in rejected_sent.get(s, ()):
                item = source.items[k]
                kind = item.kind if isinstance(item, Event) else "reading"
                stored[kind] -= 1
            if not source.refused:
                continue
            dead = [(item, reason, message) for item, reason, message in source.refused
                    if reason not in _SKIPPED]
            skipped += len(source.refused) - len(dead)
            if not dead:
                continue
            readings = [(i, r) for i, r, _ in dead if isinstance(i, Reading)]
            events = [(i, r) for i, r, _ in dead if isinstance(i, Event)]
            details = "; ".join(sorted({m for _, _, m in dead}))
            self.deadletters.add_items(
                source.record, source.batch, [i for i, _ in readings], [i for i, _ in events],
                [r for _, r in readings] + [r for _, r in events], details[:1000])
        for kind, n in stored.items():
            self.metrics.items(kind, n)
        if skipped:
            self.metrics.items("beyond_retention", skipped)
            log.info("points older than the retention policy skipped", extra={"fields": {
                "points": skipped, "target": self.target.where}})
