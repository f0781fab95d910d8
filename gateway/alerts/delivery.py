"""`ChannelWorker`: one task per channel, delivering that channel's outbox rows.

Guarantees:

* **Order.**  A channel takes its rows in (not-before time, outbox id) order, one batch at a
  time, and a failed batch is retried before anything behind it — so the transitions of one
  dedup key reach a channel in the order they happened (firing before acknowledged before
  resolved).  Rows without a delay are plain outbox order.
* **Independence.**  Each channel has its own task and backoff: a webhook that is down
  delays only that webhook.
* **Retry.**  `DeliveryFailed` (timeouts, 429, 5xx, a busy buffer) retries the same batch
  after a capped, jittered exponential backoff (`edge.backoff.Backoff`; at least the
  receiver's Retry-After); each failure is counted and its error stored on the row.
  `DeliveryRejected` (4xx) and unexpected errors mark the rows dead — kept with the error,
  counted, logged, never retried.
* **At least once.**  Outcomes are written to the store after the fact, in batches; a crash
  in between delivers those rows again after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from edge.backoff import Backoff
from edge.clock import Clock
from gateway.alerts.channels import Channel
from gateway.alerts.store import DEAD, PENDING, Mark, Pending
from gateway.errors import DeliveryFailed, DeliveryRejected

log = logging.getLogger("fieldlink.gateway.alerts")

#: outcomes are flushed to the store at least every this many rows
MARK_BATCH = 200


class ChannelWorker:
    def __init__(self, channel: Channel, *, clock: Clock, backoff: Backoff,
                 persist: Callable[[list[Mark]], Awaitable[None]]) -> None:
        self.channel = channel
        self.clock = clock
        self.backoff = backoff
        self._persist = persist
        self._heap: list[tuple[int, int, Pending]] = []
        self._wake = asyncio.Event()
        self._marks: list[Mark] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._inflight: list[Pending] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._released = asyncio.Event()
        self._released.set()
        #: outcome -> rows ("delivered", "dead", "superseded") and failed attempts ("retried")
        self.outcomes: Counter[str] = Counter()
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.channel.name

    def hold(self) -> None:
        """Deliver nothing until `release()` (the channel's peer is not there yet); rows
        keep queueing."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def held(self) -> bool:
        return not self._released.is_set()

    def add(self, items: Iterable[Pending]) -> None:
        for item in items:
            heapq.heappush(self._heap, (item.not_before_ms, item.outbox_id, item))
        if self._heap:
            self._idle.clear()
            self._wake.set()

    # -- state for stats --------------------------------------------------------------------

    def depth(self, now_ms: int | None = None) -> int:
        """Rows not yet delivered, the one being attempted included (with `now_ms`: only
        those already due)."""
        if now_ms is None:
            return len(self._heap) + len(self._inflight)
        return sum(1 for nb, _, _ in self._heap if nb <= now_ms) + len(self._inflight)

    def oldest_at_ms(self, now_ms: int) -> int | None:
        """Transition time of the oldest due row not yet delivered."""
        due = [p.record["at_ms"] for nb, _, p in self._heap if nb <= now_ms]
        due += [p.record["at_ms"] for p in self._inflight]
        return min(due) if due else None

    async def drain(self, grace_s: float) -> bool:
        """Wait until nothing due is left, at most `grace_s`; True if drained."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace_s
        while self.depth(self.clock.now_ms()) and self._released.is_set():
            left = end - loop.time()
            if left <= 0:
                return False
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(left, 0.05))
        return not self.depth(self.clock.now_ms())

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                await self._attempt(batch)
        finally:
            await self.flush()

    async def _next_batch(self) -> list[Pending]:
        while True:
            if not self._released.is_set():
                self._flush_soon()
                await self._released.wait()
            self._wake.clear()
            if not self._heap:
                self._flush_soon()
                self._idle.set()
                await self._wake.wait()
                continue
            not_before = self._heap[0][0]
            wait_ms = not_before - self.clock.now_ms()
            if wait_ms > 0:
                self._flush_soon()
                self._idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_ms / 1000)
                continue
            now = self.clock.now_ms()
            batch: list[Pending] = []
            while (self._heap and len(batch) < self.channel.max_batch
                   and self._heap[0][0] <= now):
                batch.append(heapq.heappop(self._heap)[2])
            return batch

    async def _attempt(self, batch: list[Pending]) -> None:
        self._inflight = batch
        try:
            outcome = await self.channel.deliver(batch)
        except DeliveryFailed as exc:
            self._inflight = []
            await self._failed(batch, exc)
            return
        except DeliveryRejected as exc:
            self._dead(batch, str(exc))
        except Exception as exc:  # a bug must not wedge the channel or retry forever
            log.exception("alert channel failed unexpectedly",
                          extra={"fields": {"channel": self.name}})
            self._dead(batch, f"internal error: {type(exc).__name__}: {exc}")
        else:
            self.backoff.reset()
            self.outcomes[outcome] += len(batch)
            self._marks += [Mark(p.outbox_id, self.name, outcome, p.attempts + 1)
                            for p in batch]
        finally:
            self._inflight = []
        if len(self._marks) >= MARK_BATCH:
            self._flush_soon()

    async def _failed(self, batch: list[Pending], exc: DeliveryFailed) -> None:
        self.outcomes["retried"] += len(batch)
        self.last_error = str(exc)
        retried = [Pending(p.outbox_id, p.channel, p.record, p.not_before_ms, p.attempts + 1)
                   for p in batch]
        for p in retried:
            heapq.heappush(self._heap, (p.not_before_ms, p.outbox_id, p))
        self._marks += [Mark(p.outbox_id, self.name, PENDING, p.attempts, str(exc)[:1000])
                        for p in retried]
        delay = self.backoff.next_delay()
        if exc.retry_after_s is not None:
            delay = max(delay, min(exc.retry_after_s, self.backoff.cap))
        log.warning("alert delivery failed; retrying", extra={"fields": {
            "channel": self.name, "error": str(exc), "rows": len(batch),
            "attempt": retried[0].attempts, "retry_in_s": round(delay, 3)}})
        self._flush_soon()
        await asyncio.sleep(delay)

    def _dead(self, batch: list[Pending], error: str) -> None:
        self.outcomes[DEAD] += len(batch)
        self.last_error = error
        self._marks += [Mark(p.outbox_id, self.name, DEAD, p.attempts + 1, error[:1000])
                        for p in batch]
        for p in batch:
            log.error("alert delivery refused; not retried", extra={"fields": {
                "channel": self.name, "error": error, "dedup_key": p.record.get("dedup_key"),
                "transition": p.record.get("transition"), "outbox_id": p.outbox_id}})

    def _flush_soon(self) -> None:
        """Write the outcomes gathered so far, in a task of its own: delivery never waits
        for the store (which may be busy writing a snapshot).  Writes keep their order (the
        store runs them one after another, in submission order)."""
        if not self._marks:
            return
        marks, self._marks = self._marks, []
        task = asyncio.get_running_loop().create_task(self._write(marks),
                                                      name=f"alerts-marks-{self.name}")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Write every outcome gathered so far and wait for it."""
        self._flush_soon()
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def _write(self, marks: list[Mark]) -> None:
        try:
            await self._persist(marks)
        except Exception:  # the rows stay pending: delivered again after a restart
            log.exception("cannot record alert delivery outcomes",
                          extra={"fields": {"channel": self.name, "rows": len(marks)}})

    def stats(self, now_ms: int) -> dict[str, Any]:
        return {"depth": self.depth(now_ms), "scheduled": self.depth() - self.depth(now_ms),
                "outcomes": dict(self.outcomes), "last_error": self.last_error}
