"""Incremental polling: the loop every polling connector runs, and delivery to the bus.

    delivery = Delivery(bus, store, metrics)
    await delivery.deliver(scope, topic, items, cursor=new_cursor)

    loop = PollLoop(poller, interval_s=60)        # poller: async poll() -> items delivered
    task = asyncio.create_task(loop.run(stop), name=f"poll-{poller.name}")

`Delivery.deliver` is the one way items reach the bus: items already delivered in `scope`
(by id) are dropped, the rest are produced — the call returns only after the bus acknowledged
them — and THEN the store records their ids and the new cursor in one transaction.  A crash
before that record re-delivers them on the next round; nothing is skipped.

`PollLoop.run` calls `poll()` every `interval_s` (or sooner when a poller asks for it via
`next_poll_s`), with capped, jittered backoff after retriable failures (API down, rate limit
beyond the cap, bus down); a refused request (`UpstreamRejected`: bad token, unknown repo) is
logged, counted and retried at the normal interval — it needs a configuration change, and
the other pollers keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.bus.base import Bus, Headers
from cloud.connectors.store import ConnectorStore
from cloud.errors import FatalError, RetriableError
from edge.backoff import Backoff

__all__ = ["Delivery", "Item", "PollLoop", "Poller", "PollMetrics"]

log = logging.getLogger("fieldlink.cloud.connectors")

#: (id, record key, record value, headers)
Item = tuple[str, bytes | None, bytes, Headers]


class PollMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter("connectors_items", "Items produced, by connector scope",
                             ["scope"], registry=registry)
        self.duplicates = Counter("connectors_duplicates", "Items dropped as already "
                                  "delivered", ["scope"], registry=registry)
        self.rounds = Counter("connectors_poll_rounds", "Poll rounds, by connector and outcome",
                              ["connector", "outcome"], registry=registry)
        self.last_success = Gauge("connectors_last_success_timestamp_seconds", "When a poll "
                                  "round last succeeded", ["connector"], registry=registry)


class Delivery:
    def __init__(self, bus: Bus, store: ConnectorStore, metrics: PollMetrics) -> None:
        self.producer = bus.producer()
        self.store = store
        self.metrics = metrics

    async def deliver(self, scope: str, topic: str, items: Sequence[Item], *,
                      cursor: dict[str, object] | None = None) -> int:
        """Produce the items not delivered before; record them (and `cursor`).  Returns the
        number produced."""
        ids = [i[0] for i in items]
        fresh = set(await asyncio.to_thread(self.store.unseen, scope, ids))
        out, seen = [], set()
        for item_id, key, value, headers in items:
            if item_id in fresh and item_id not in seen:
                seen.add(item_id)
                out.append((key, value, headers))
        if out:
            await self.producer.send_batch(topic, out)
        self.metrics.items.labels(scope).inc(len(out))
        self.metrics.duplicates.labels(scope).inc(len(items) - len(out))
        if out or cursor is not None:
            await asyncio.to_thread(self.store.commit, scope, cursor=cursor,
                                    delivered=[i for i in ids if i in seen])
        return len(out)


class Poller(Protocol):
    name: str

    async def poll(self) -> int:
        """One round: fetch what is new, deliver it; the number of items delivered."""
        ...

    def next_poll_s(self) -> float | None:
        """Seconds the API asks us to wait before the next round (None: the interval)."""
        ...


class PollLoop:
    def __init__(self, poller: Poller, *, interval_s: float, metrics: PollMetrics,
                 backoff: Backoff | None = None) -> None:
        self.poller = poller
        self.interval_s = interval_s
        self.metrics = metrics
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self.last_error: str | None = None
        self.rounds = 0

    async def run(self, stop: asyncio.Event) -> None:
        name = self.poller.name
        while not stop.is_set():
            delay = self.interval_s
            try:
                n = await self.poller.poll()
            except RetriableError as e:
                self.last_error = str(e)
                self.metrics.rounds.labels(name, "retry").inc()
                delay = self.backoff.next_delay()
                log.warning("poll round failed; retrying", extra={"fields": {
                    "connector": name, "error": str(e), "retry_in_s": round(delay, 1)}})
            except FatalError as e:
                self.last_error = str(e)
                self.metrics.rounds.labels(name, "refused").inc()
                log.error("poll round refused", extra={"fields": {
                    "connector": name, "error": str(e)}})
            else:
                self.backoff.reset()
                self.last_error = None
                self.metrics.rounds.labels(name, "ok").inc()
                self.metrics.last_success.labels(name).set_to_current_time()
                asked = self.poller.next_poll_s()
                if asked is not None:
                    delay = max(delay, asked)
                if n:
                    log.info("poll round delivered", extra={"fields": {
                        "connector": name, "items": n}})
            self.rounds += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
