"""Dead letters of a sink: what it consumed but could not store, on the dead-letter topic.

Two shapes, in the record format of the ingest's dead letters (cloud/ingest/records.py):

* stage "frame" — a record whose value is not a readable `edge.codec` frame: the value as it
  was consumed (cut to `max_record_bytes`, `fl-truncated` = its length), `fl-reason` the
  codec's reason (checksum_mismatch, truncated, ...).
* stage "point" — items the store refused: a frame of those readings/events (same gateway,
  sequence and created_ms as the batch they came in), `fl-reasons` a JSON list with one
  reason per item, `fl-reason` the distinct reasons, `fl-detail` the store's message.

Every dead letter also carries `fl-source` ("sink-influxdb", "sink-parquet"), `fl-origin`
("<topic>/<partition>/<offset>" of the record consumed) and the record's own `fl-gateway` /
`fl-batch` headers.  Each sink dead-letters what IT could not store, so one poison record
read by both sinks yields one dead letter per sink, told apart by `fl-source`.

Ordering and durability: `add_*` only queue; `flush()` returns once the bus acknowledged every
queued dead letter (retrying with capped, jittered backoff while the bus is down).  The
consumer loop flushes them before every offset commit, so a record is never committed before
its dead letters are durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from cloud.bus import OutRecord, Producer, Record
from cloud.errors import BrokerUnavailable
from cloud.sinks.metrics import SinkMetrics
from edge.backoff import Backoff
from edge.codec import FORMAT_VERSION, Batch, encode_batch
from edge.model import Event, Reading

__all__ = ["DeadLetters"]

log = logging.getLogger("fieldlink.cloud.sinks")

_COPIED = ("fl-gateway", "fl-batch")


class DeadLetters:
    def __init__(self, producer: Producer, topic: str, source: str, metrics: SinkMetrics, *,
                 compression: str = "zstd", max_record_bytes: int = 512 * 1024,
                 backoff: Backoff | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.source = source.encode()
        self.metrics = metrics
        self.compression = compression
        self.max_record_bytes = max_record_bytes
        self.backoff = backoff or Backoff(base=0.2, cap=10.0)
        self._pending: list[OutRecord] = []
        self._reasons: list[tuple[str, int]] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _headers(self, record: Record, stage: str, reason: str,
                 detail: str) -> list[tuple[str, bytes]]:
        headers = [("fl-source", self.source), ("fl-stage", stage.encode()),
                   ("fl-reason", reason.encode()), ("fl-detail", detail[:1000].encode()),
                   ("fl-origin", f"{record.topic}/{record.partition}/{record.offset}".encode())]
        for name in _COPIED:
            value = record.header(name)
            if value is not None:
                headers.append((name, value))
        return headers

    def add_frame(self, record: Record, reason: str, detail: str) -> None:
        """Dead-letter a whole record whose value could not be decoded."""
        headers = self._headers(record, "frame", reason, detail)
        value = record.value
        if len(value) > self.max_record_bytes:
            headers.append(("fl-truncated", str(len(value)).encode()))
            value = value[:self.max_record_bytes]
        self._pending.append((record.key, value, headers))
        self._reasons.append((reason, 1))
        log.warning("undecodable record dead-lettered", extra={"fields": {
            "origin": f"{record.topic}/{record.partition}/{record.offset}",
            "reason": reason, "detail": detail[:300]}})

    def add_items(self, record: Record, batch: Batch, readings: Sequence[Reading],
                  events: Sequence[Event], reasons: Sequence[str], detail: str) -> None:
        """Dead-letter items of `batch` (consumed in `record`) the store refused, one reason
        per item (readings first, then events)."""
        if not readings and not events:
            return
        summary = ",".join(sorted(set(reasons)))
        headers = self._headers(record, "point", summary, detail)
        headers += [("fl-format", str(FORMAT_VERSION).encode()),
                    ("fl-count", str(len(readings) + len(events)).encode()),
                    ("fl-reasons", json.dumps(list(reasons)).encode())]
        try:
            value = encode_batch(Batch(batch.gateway_id, batch.sequence, batch.created_ms,
                                       list(readings), list(events)), self.compression)
        except Exception as e:  # noqa: BLE001 - keep the evidence: fall back to the record
            log.error("refused items cannot be re-encoded; dead-lettering their record",
                      extra={"fields": {"error": repr(e)}})
            self.add_frame(record, summary, f"{detail}; re-encoding failed: {e!r}")
            return
        self._pending.append((batch.gateway_id.encode(), value, headers))
        for reason in set(reasons):
            self._reasons.append((reason, sum(1 for r in reasons if r == reason)))
        log.warning("items dead-lettered", extra={"fields": {
            "origin": f"{record.topic}/{record.partition}/{record.offset}",
            "items": len(reasons), "reasons": summary, "detail": detail[:300]}})

    async def flush(self) -> None:
        """Produce every queued dead letter; returns once all are acknowledged."""
        while self._pending:
            # taken, not read in place: a write finishing meanwhile may queue more
            batch, reasons = self._pending, self._reasons
            self._pending, self._reasons = [], []
            try:
                await self.producer.send_batch(self.topic, batch)
            except BrokerUnavailable as e:
                self._pending, self._reasons = batch + self._pending, reasons + self._reasons
                delay = self.backoff.next_delay()
                log.warning("cannot produce dead letters yet", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 3),
                    "pending": len(self._pending)}})
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            for reason, n in reasons:
                self.metrics.deadletters(reason, n)

    def discard(self) -> None:
        """Forget what is queued (its records will be consumed again, and dead-lettered
        again, after a rebalance)."""
        self._pending, self._reasons = [], []
