"""`AggregateForwarder`: closed windows into the store-and-forward buffer, off the tick path.

The ticker hands over each tick's closed windows (`add`, no work on the tick's path); the
task `alerts-aggregates` turns them into aggregate events — a slice at a time, yielding to the
loop in between (10,000 windows close in one tick) — and appends them to the buffer in batches (`Buffer.append_events`, durable;
priority class above raw readings).  A busy buffer (`RetriableError`) is retried with capped,
jittered backoff; the queue is bounded (`max_pending`) and what overflows is dropped —
counted in `counters["aggregates_dropped"]` and logged, never silently.  Aggregates are not
in the alert outbox: a window lost in a crash before it was buffered is recomputed from the
last snapshot's part of it, under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Sequence

from edge.backoff import Backoff
from edge.errors import RetriableError
from edge.model import Event
from edge.windows import WindowResult
from gateway.alerts.channels import EventSink

log = logging.getLogger("fieldlink.gateway.alerts")

BATCH = 5000
#: windows turned into events between two yields to the event loop
SLICE = 250


class AggregateForwarder:
    def __init__(self, buffer: EventSink, *, backoff: Backoff, max_pending: int,
                 counters: Counter[str]) -> None:
        self.buffer = buffer
        self.backoff = backoff
        self.max_pending = max_pending
        self.counters = counters
        self._queue: deque[WindowResult] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, aggregates: Sequence[WindowResult]) -> None:
        self._queue.extend(aggregates)
        overflow = len(self._queue) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
            self.counters["aggregates_dropped"] += overflow
            log.error("aggregates dropped: the buffer does not keep up",
                      extra={"fields": {"dropped": overflow}})
        if self._queue:
            self._idle.clear()
            self._wake.set()

    async def drain(self, grace_s: float) -> bool:
        """Wait (at most `grace_s`) until everything queued was handed to the buffer."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        return not self._queue

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
                continue
            n = min(len(self._queue), BATCH)
            batch: list[Event] = []
            for i in range(n):
                batch.append(self._queue[i].to_event())
                if i % SLICE == SLICE - 1:
                    await asyncio.sleep(0)
            try:
                result = await self.buffer.append_events(batch)
            except RetriableError as exc:
                self.counters["aggregate_retries"] += 1
                log.warning("buffer busy; aggregates retried",
                            extra={"fields": {"error": str(exc), "aggregates": n}})
                await asyncio.sleep(self.backoff.next_delay())
                continue
            except Exception:
                log.exception("aggregates could not be buffered")
                self.counters["aggregates_dropped"] += n
                result = None
            for _ in range(n):
                self._queue.popleft()
            self.backoff.reset()
            if result is not None:
                self.counters["aggregates_buffered"] += result.stored
                self.counters["aggregates_duplicate"] += result.duplicates
                if result.refused:
                    self.counters["aggregates_dropped"] += result.refused
                    log.error("buffer refused aggregates", extra={"fields": {
                        "refused": result.refused, "reason": result.refused_reason}})
