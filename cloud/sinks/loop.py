"""The consumer loop every sink shares: bus records in, durable store writes, then commits.

    loop = ConsumerLoop(consumer, sink, deadletters, metrics)
    await loop.run(stop)          # until `stop` is set; then flush everything and commit

Guarantees:

* Offsets are committed only after the sink reported them durable (`Sink.flush`) and every
  dead letter of the records before them was acknowledged by the bus.  A crash at any point
  re-delivers everything after the last commit: at-least-once into the store, which each
  sink turns into exactly-once (InfluxDB: idempotent points; Parquet: deterministic files).
* Records are handed to the sink in offset order per partition.  Before the first record of
  a partition since it was assigned — or whenever its offsets go back (a rebalance gave it
  back, `seek_to_committed`) — the sink hears `partition_started(tp, offset)`; partitions no
  longer assigned are `revoke`d (their buffers dropped, their records re-consumed by the new
  owner from the committed offset).
* An undecodable record (`edge.errors.DecodeError`) is dead-lettered as it was consumed and
  skipped: one poison record never blocks its partition.
* Commit refused (`ConsumerFenced`, the group rebalanced): everything buffered is dropped and
  the consumer goes back to the committed offsets.  Bus unavailable: retried with capped,
  jittered backoff (`edge.backoff.Backoff`).  Store unavailable: `Sink.flush` retries; nothing
  more is consumed meanwhile (back-pressure), nothing is committed.

Lag: `fieldlink_sink_lag_seconds` per partition (now minus the bus timestamp of the newest
record consumed; 0 once a poll comes back empty) and, on Kafka, `fieldlink_sink_lag_records`
(high watermark minus the next offset).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cloud.bus import Consumer, Record
from cloud.errors import BrokerUnavailable, ConsumerFenced
from cloud.sinks.base import TP, Sink
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.metrics import SinkMetrics
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from edge.codec import decode_batch
from edge.errors import DecodeError

__all__ = ["ConsumerLoop"]

log = logging.getLogger("fieldlink.cloud.sinks")

#: records decoded between two yields to the event loop (heartbeats, /healthz)
_YIELD_EVERY = 16


class ConsumerLoop:
    def __init__(self, consumer: Consumer, sink: Sink, deadletters: DeadLetters,
                 metrics: SinkMetrics, *, clock: Clock | None = None, max_records: int = 100,
                 poll_ms: int = 500, backoff: Backoff | None = None) -> None:
        self.consumer = consumer
        self.sink = sink
        self.deadletters = deadletters
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.backoff = backoff or Backoff(base=0.2, cap=10.0)
        #: partition -> (last offset handed to the sink, its bus timestamp)
        self._consumed: dict[TP, tuple[int, int]] = {}
        self._committed: dict[TP, int] = {}
        self.last_poll_mono: float | None = None
        self.polls = 0
        self.caught_up = False

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then flush everything and commit it."""
        while not stop.is_set():
            await self.step()
        await self.drain()

    async def drain(self) -> None:
        """Flush everything buffered and commit it (shutdown)."""
        offsets = await self.sink.flush(self.clock.monotonic(), everything=True)
        await self._commit(offsets)
        log.info("sink drained", extra={"fields": {
            "sink": self.sink.kind, "committed": {f"{t}/{p}": o for (t, p), o in
                                                  sorted(self._committed.items())}}})

    async def step(self) -> int:
        """One poll, hand-over and (if due) flush + commit; the number of records consumed."""
        now = self.clock.monotonic()
        timeout = self.poll_ms
        due = self.sink.due_in(now)
        if due is not None:
            timeout = max(0, min(timeout, int(due * 1000)))
        try:
            records = await self.consumer.getmany(timeout_ms=timeout,
                                                  max_records=self.max_records)
        except BrokerUnavailable as e:
            delay = self.backoff.next_delay()
            log.warning("bus unavailable", extra={"fields": {
                "error": str(e), "retry_in_s": round(delay, 3)}})
            await asyncio.sleep(delay)
            return 0
        self.last_poll_mono = self.clock.monotonic()
        self.polls += 1
        self._sync_assignment()
        await self._hand_over(records)
        self._update_lag(records)
        offsets = await self.sink.flush(self.clock.monotonic())
        await self._commit(offsets)
        self.metrics.buffered.set(self.sink.buffered)
        return len(records)

    async def _hand_over(self, records: list[Record]) -> None:
        sink = self.sink
        by_topic: dict[str, int] = {}
        for i, r in enumerate(records):
            tp = (r.topic, r.partition)
            last = self._consumed.get(tp)
            if last is None or r.offset <= last[0]:
                if last is not None:
                    # the partition came back (rebalance, seek): its buffer is stale
                    sink.revoke([tp])
                await sink.partition_started(tp, r.offset)
            try:
                batch = decode_batch(r.value)
            except DecodeError as e:
                self.deadletters.add_frame(r, e.reason, e.message)
                sink.skip(r)
            else:
                sink.add(r, batch)
            self._consumed[tp] = (r.offset, r.ts_ms)
            by_topic[r.topic] = by_topic.get(r.topic, 0) + 1
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
        for topic, n in by_topic.items():
            self.metrics.records(topic, n)

    def _sync_assignment(self) -> None:
        assignment = getattr(self.consumer, "assignment", None)
        if assignment is None:
            return
        try:
            current = set(assignment())
        except Exception:  # noqa: BLE001 - not joined yet / rebalancing: check next time
            return
        gone = [tp for tp in self._consumed if tp not in current]
        if gone:
            log.info("partitions revoked", extra={"fields": {
                "sink": self.sink.kind, "partitions": [f"{t}/{p}" for t, p in gone]}})
            self.sink.revoke(gone)
            for tp in gone:
                del self._consumed[tp]

    def _update_lag(self, records: list[Record]) -> None:
        now_ms = self.clock.now_ms()
        self.caught_up = not records
        for (topic, partition), (offset, ts_ms) in self._consumed.items():
            self.metrics.lag_seconds(topic, partition,
                                     0.0 if not records else max(0.0, (now_ms - ts_ms) / 1000))
            hw = _highwater(self.consumer, topic, partition)
            if hw is not None:
                self.metrics.lag_records(topic, partition, max(0, hw - offset - 1))

    # -- commits -----------------------------------------------------------------------------

    async def _commit(self, offsets: dict[TP, int]) -> None:
        """Dead letters first, then the offsets; a refused commit re-reads from the last one."""
        await self.deadletters.flush()
        if not offsets:
            return
        while True:
            try:
                await self.consumer.commit(offsets)
            except ConsumerFenced as e:
                self.metrics.commit_failure("consumer_fenced")
                log.warning("commit refused; re-reading from the committed offsets", extra={
                    "fields": {"sink": self.sink.kind, "error": str(e)}})
                await self._restart_from_committed()
                return
            except BrokerUnavailable as e:
                self.metrics.commit_failure("bus_unavailable")
                delay = self.backoff.next_delay()
                log.warning("commit failed; retrying", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 3)}})
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            self.metrics.commits.inc()
            for (topic, partition), offset in offsets.items():
                self._committed[(topic, partition)] = offset
                self.metrics.committed(topic, partition, offset)
            return

    async def _restart_from_committed(self) -> None:
        self.sink.revoke(list(self._consumed))
        self._consumed.clear()
        while True:
            try:
                await self.consumer.seek_to_committed()
                return
            except BrokerUnavailable as e:
                delay = self.backoff.next_delay()
                log.warning("cannot seek to the committed offsets", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 3)}})
                await asyncio.sleep(delay)

    @property
    def committed(self) -> dict[TP, int]:
        """The offsets this process committed last, per partition."""
        return dict(self._committed)


def _highwater(consumer: Any, topic: str, partition: int) -> int | None:
    """The partition's high watermark when the bus can tell (aiokafka's consumer)."""
    inner = getattr(consumer, "_consumer", None)
    highwater = getattr(inner, "highwater", None)
    if highwater is None:
        return None
    try:
        from aiokafka import TopicPartition

        hw = highwater(TopicPartition(topic, partition))
    except Exception:  # noqa: BLE001 - not assigned any more: no figure
        return None
    return int(hw) if hw is not None else None
