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
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from cloud.bus import Record
from cloud.errors import PointRejected
from cloud.sinks.base import TP
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.influx.client import InfluxClient, InfluxTarget
from cloud.sinks.influx.lineproto import LineBuilder
from cloud.sinks.influx.writer import BatchWriter
from cloud.sinks.metrics import SinkMetrics
from edge.codec import Batch
from edge.model import Event, Reading

__all__ = ["InfluxSink"]

log = logging.getLogger("fieldlink.cloud.sinks.influx")

_SKIPPED = frozenset({"beyond_retention"})


@dataclass(slots=True)
class _Source:
    """A record whose items are buffered, and those items (to dead-letter refused ones)."""

    record: Record
    batch: Batch
    items: list[Reading | Event] = field(default_factory=list)
    refused: list[tuple[Reading | Event, str, str]] = field(default_factory=list)


class InfluxSink:
    kind = "influxdb"

    def __init__(self, target: InfluxTarget, deadletters: DeadLetters, metrics: SinkMetrics,
                 *, batch_size: int = 5000, flush_interval_s: float = 1.0,
                 concurrency: int = 2, client: InfluxClient | None = None) -> None:
        self.target = target
        self.deadletters = deadletters
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self.client = client or InfluxClient(target)
        self.builder = LineBuilder()
        self.writer = BatchWriter(self.client.write, metrics, on_missing=self._recreate)
        self.setup_detail = ""
        self._lines: list[str] = []
        #: per line: (source index, item index within the source)
        self._origin: list[tuple[int, int]] = []
        self._sources: list[_Source] = []
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
        return len(self._lines)

    # -- consuming ---------------------------------------------------------------------------

    async def partition_started(self, tp: TP, offset: int) -> None:
        return None

    def add(self, record: Record, batch: Batch) -> None:
        source = _Source(record, batch)
        s = len(self._sources)
        self._sources.append(source)
        lines, origin = self._lines, self._origin
        gateway = batch.gateway_id
        reading = self.builder.reading
        for item in batch.readings:
            try:
                line = reading(item, gateway)
            except PointRejected as e:
                source.refused.append((item, e.reason, e.message))
                continue
            origin.append((s, len(source.items)))
            source.items.append(item)
            lines.append(line)
        for event in batch.events:
            try:
                line = self.builder.event(event, gateway)
            except PointRejected as e:
                source.refused.append((event, e.reason, e.message))
                continue
            origin.append((s, len(source.items)))
            source.items.append(event)
            lines.append(line)
        self._mark(record)

    def skip(self, record: Record) -> None:
        self._mark(record)

    def _mark(self, record: Record) -> None:
        self._next[(record.topic, record.partition)] = record.offset + 1
        if self._since is None:
            self._since = asyncio.get_running_loop().time()

    def due_in(self, now: float) -> float | None:
        if self._since is None:
            return None
        if len(self._lines) >= self.batch_size:
            return 0.0
        return self._since + self.flush_interval_s - asyncio.get_running_loop().time()

    def revoke(self, tps: Iterable[TP]) -> None:
        gone = set(tps)
        if not gone or not (gone & set(self._next)):
            return
        # lines of other partitions stay; rebuild the buffer without the revoked ones
        keep = [i for i, s in enumerate(self._sources)
                if (s.record.topic, s.record.partition) not in gone]
        remap = {old: new for new, old in enumerate(keep)}
        self._sources = [self._sources[i] for i in keep]
        lines, origin = [], []
        for line, (s, k) in zip(self._lines, self._origin):
            if s in remap:
                lines.append(line)
                origin.append((remap[s], k))
        self._lines, self._origin = lines, origin
        for tp in gone:
            self._next.pop(tp, None)
        if not self._next:
            self._since = None

    # -- flushing ----------------------------------------------------------------------------

    async def flush(self, now: float, *, everything: bool = False) -> dict[TP, int]:
        due = self.due_in(now)
        if due is None or (due > 0 and not everything):
            return {}
        lines, origin, sources = self._lines, self._origin, self._sources
        offsets = dict(self._next)
        self._lines, self._origin, self._sources, self._next = [], [], [], {}
        self._since = None
        t0 = asyncio.get_running_loop().time()
        try:
            rejected = await self._write_chunks(lines)
        except BaseException:
            # not durable: keep everything for the next attempt (or the next owner)
            self._lines, self._origin, self._sources = lines, origin, sources
            for tp, o in offsets.items():
                self._next.setdefault(tp, o)
            self._since = t0
            raise
        rejected_sent = set()
        for index, reason, message in rejected:
            s, k = origin[index]
            rejected_sent.add((s, k))
            sources[s].refused.append((sources[s].items[k], reason, message))
        self._account(sources, rejected_sent)
        self.metrics.flushes.inc()
        self.metrics.flush_seconds.observe(asyncio.get_running_loop().time() - t0)
        return offsets

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

    def _account(self, sources: list[_Source], rejected_sent: set[tuple[int, int]]) -> None:
        stored: dict[str, int] = {}
        skipped = 0
        for s, source in enumerate(sources):
            for k, item in enumerate(source.items):
                if (s, k) not in rejected_sent:
                    kind = "reading" if isinstance(item, Reading) else item.kind
                    stored[kind] = stored.get(kind, 0) + 1
            dead = [(item, reason, message) for item, reason, message in source.refused
                    if reason not in _SKIPPED]
            skipped += len(source.refused) - len(dead)
            if not dead:
                continue
            readings = [(i, r) for i, r, _ in dead if isinstance(i, Reading)]
            events = [(i, r) for i, r, _ in dead if not isinstance(i, Reading)]
            details = "; ".join(sorted({m for _, _, m in dead}))
            self.deadletters.add_items(
                source.record, source.batch, [i for i, _ in readings],
                [i for i, _ in events if isinstance(i, Event)],
                [r for _, r in readings] + [r for _, r in events], details[:1000])
        for kind, n in stored.items():
            self.metrics.items(kind, n)
        if skipped:
            self.metrics.items("beyond_retention", skipped)
            log.info("points older than the retention policy skipped", extra={"fields": {
                "points": skipped, "target": self.target.where}})
