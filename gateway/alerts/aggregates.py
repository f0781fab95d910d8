"""`AggregateForwarder`: closed windows into the store-and-forward buffer, off the tick path.

The ticker hands over each call's closed windows (`add`: the engine's lazy sequences are
queued as they are, no work on the alert path); the task `alerts-aggregates` turns them into
aggregate events — straight from the columns (`ClosedWindows.events`), a slice at a time,
yielding to the loop in between (10,000 windows may close within a second) — and appends
them to the buffer in batches (`Buffer.append_events`, durable; priority class above raw
readings) once a wave of closes has passed (`QUIET_S` without new windows, at most
`LINGER_MAX_S`), rather than writing every few windows while alerts are being delivered.  A busy buffer (`RetriableError`) is retried with capped,
jittered backoff; the queue is bounded (`max_pending`) and what overflows is dropped —
counted in `counters["aggregates_dropped"]` and logged, never silently.  Aggregates are not
in the alert outbox: a window lost in a crash before it was buffered is recomputed from the
last snapshot's part of it, under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence

from edge.backoff import Backoff
from edge.errors import RetriableError
from edge.model import Event
from edge.windows import ClosedWindows, WindowResult
from edge.windows.batch import parts_of
from gateway.alerts.channels import EventSink

log = logging.getLogger("fieldlink.gateway.alerts")

BATCH = 5000
#: windows turned into events between two yields to the event loop
SLICE = 250
#: windows are written once none came for this long (the wave of closes has passed) ...
QUIET_S = 0.3
#: ... or this long after the first, or once this many are waiting
LINGER_MAX_S = 3.0
MAX_GATHER = 4 * BATCH


class _Segment:
    """Windows [start, len) of one sequence, still to be turned into events."""

    __slots__ = ("windows", "start")

    def __init__(self, windows: Sequence[WindowResult]) -> None:
        self.windows = windows
        self.start = 0

    def __len__(self) -> int:
        return len(self.windows) - self.start

    def take(self, n: int) -> list[Event]:
        end = self.start + n
        w = self.windows
        events = (w.events(self.start, end) if isinstance(w, ClosedWindows)
                  else [r.to_event() for r in w[self.start:end]])
        self.start = end
        return events


class AggregateForwarder:
    def __init__(self, buffer: EventSink, *, backoff: Backoff, max_pending: int,
                 counters: Counter[str], clear: asyncio.Event | None = None) -> None:
        """`clear`, when given, is set while the owner has nothing more urgent to do: events
        are made only then (windows still to close, and the alerts they hold, go first)."""
        self.buffer = buffer
        self.clear = clear
        self.backoff = backoff
        self.max_pending = max_pending
        self.counters = counters
        self._queue: deque[_Segment] = deque()
        #: windows not yet buffered: queued, plus those of `_held`
        self._pending = 0
        #: events of a batch the buffer refused for now (retried as they are)
        self._held: list[Event] = []
        #: stop lingering (shutdown)
        self._urgent = False
        #: thread CPU time spent turning windows into events
        self.cpu_s = 0.0
        self._last_add = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return self._pending

    def add(self, aggregates: Sequence[WindowResult]) -> None:
        for part in parts_of(aggregates):
            if len(part):
                self._queue.append(_Segment(part))
                self._pending += len(part)
        overflow = self._pending - self.max_pending
        if overflow > 0:
            self._drop(overflow)
            self.counters["aggregates_dropped"] += overflow
            log.error("aggregates dropped: the buffer does not keep up",
                      extra={"fields": {"dropped": overflow}})
        if self._queue:
            self._last_add = asyncio.get_running_loop().time()
            self._idle.clear()
            self._wake.set()

    def _drop(self, n: int) -> None:
        """Forget the `n` oldest queued windows."""
        n = min(n, self._pending - len(self._held))
        self._pending -= n
        while n:
            seg = self._queue[0]
            k = min(n, len(seg))
            seg.start += k
            n -= k
            if not len(seg):
                self._queue.popleft()

    async def drain(self, grace_s: float) -> bool:
        """Wait (at most `grace_s`) until everything queued was handed to the buffer."""
        self._urgent = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        return not self._pending

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue and not self._held:
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
                # Closes come in waves over a second or so.  Wait for the wave to pass (no
                # windows for QUIET_S): the buffer's writes (its own thread, holding the GIL
                # while it encodes) then do not compete with the closes and their alerts,
                # and go in fewer, larger batches.
                first = loop.time()
                while (not self._urgent and self._pending < MAX_GATHER
                       and loop.time() - first < LINGER_MAX_S):
                    quiet = self._last_add + QUIET_S - loop.time()
                    if quiet <= 0:
                        break
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(quiet):
                            await self._wake.wait()
                continue
            batch = await self._events(BATCH)
            n = len(batch)
            try:
                result = await self.buffer.append_events(batch)
            except RetriableError as exc:
                self.counters["aggregate_retries"] += 1
                log.warning("buffer busy; aggregates retried",
                            extra={"fields": {"error": str(exc), "aggregates": n}})
                self._held = batch
                await asyncio.sleep(self.backoff.next_delay())
                continue
            except Exception:
                log.exception("aggregates could not be buffered")
                self.counters["aggregates_dropped"] += n
                result = None
            self._held = []
            self._pending -= n
            self.backoff.reset()
            if result is not None:
                self.counters["aggregates_buffered"] += result.stored
                self.counters["aggregates_duplicate"] += result.duplicates
                if result.refused:
                    self.counters["aggregates_dropped"] += result.refused
                    log.error("buffer refused aggregates", extra={"fields": {
                        "refused": result.refused, "reason": result.refused_reason}})

    async def _events(self, n: int) -> list[Event]:
        """The next (at most) `n` windows as events: the batch a failed append left, or
        newly made ones, taken off the queue."""
        if self._held:
            return self._held
        batch: list[Event] = []
        while self._queue and len(batch) < n:
            if self.clear is not None:
                await self.clear.wait()
            seg = self._queue[0]
            t0 = time.thread_time()
            batch += seg.take(min(SLICE, n - len(batch), len(seg)))
            self.cpu_s += time.thread_time() - t0
            if not len(seg):
                self._queue.popleft()
            await asyncio.sleep(0)
        return batch
