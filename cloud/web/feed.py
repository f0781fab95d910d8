"""Following alerts live: the alerts topic -> the alert board -> every open browser.

    feed = AlertFeed(bus, "fieldlink.alerts", board)
    async with feed:                       # task "web-alerts-feed"
        sub = feed.subscribe()             # an asyncio.Queue of board Updates
        ...
        feed.unsubscribe(sub)

The feed consumes the alerts topic with a consumer group of its own (unique per process:
`web-<host>-<pid>-<random>`), from the earliest retained record, so at start it replays the
retained transitions into the board (the active alerts are rebuilt from them) and then
follows new ones.  It never commits: each start is a fresh group that rebuilds the state, and
duplicates from a reconnect are dropped by the board (event keys).  `caught_up` is set when a
poll first comes back empty.

Robustness: a record that is not a readable frame is counted (`malformed_records`) and
skipped, never fatal; a bus failure drops the consumer and reconnects with capped jittered
backoff (`reconnects`).  A subscriber that does not keep up (its queue of `queue_max` is full)
is sent `None` and dropped: the browser reconnects and gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from types import TracebackType
from typing import Any, Self

from cloud.web.board import AlertBoard, Update
from edge.backoff import Backoff
from edge.codec import decode_batch
from edge.errors import FieldlinkError

__all__ = ["AlertFeed", "unique_group"]

log = logging.getLogger("fieldlink.cloud.web")


def unique_group(prefix: str = "web") -> str:
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class AlertFeed:
    def __init__(self, bus: Any, topic: str, board: AlertBoard, *,
                 group_id: str | None = None, queue_max: int = 1000,
                 backoff: Backoff | None = None, poll_ms: int = 500) -> None:
        self.bus = bus
        self.topic = topic
        self.board = board
        self.group_id = group_id or unique_group()
        self.queue_max = queue_max
        self.backoff = backoff or Backoff(base=0.2, cap=10.0)
        self.poll_ms = poll_ms
        self.caught_up = asyncio.Event()
        self.connected = False
        self.records = 0
        self.malformed_records = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._subscribers: set[asyncio.Queue[Update | None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="web-alerts-feed")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for q in list(self._subscribers):
            self._close(q)

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Update | None]:
        q: asyncio.Queue[Update | None] = asyncio.Queue(maxsize=self.queue_max)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Update | None]) -> None:
        self._subscribers.discard(q)

    def _close(self, q: asyncio.Queue[Update | None]) -> None:
        self._subscribers.discard(q)
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(None)
        if q.full():
            # make room for the end marker: the subscriber is being dropped anyway
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
            q.put_nowait(None)

    def publish(self, update: Update) -> None:
        for q in list(self._subscribers):
            if q.qsize() >= self.queue_max - 1:
                log.warning("alert stream subscriber too slow; dropping it")
                self._close(q)
            else:
                q.put_nowait(update)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # -- consuming ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                async with self.bus.consumer(self.group_id, [self.topic]) as consumer:
                    self.connected = True
                    self.backoff.reset()
                    while True:
                        records = await consumer.getmany(timeout_ms=self.poll_ms,
                                                         max_records=500)
                        if not records:
                            self.caught_up.set()
                        for r in records:
                            self._absorb(r)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any bus failure: reconnect
                self.connected = False
                self.reconnects += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = self.backoff.next_delay()
                log.warning("alert feed lost the bus; reconnecting", extra={"fields": {
                    "error": self.last_error, "retry_in_s": round(delay, 2)}})
                await asyncio.sleep(delay)

    def _absorb(self, record: Any) -> None:
        self.records += 1
        try:
            batch = decode_batch(record.value)
        except FieldlinkError as exc:
            self.malformed_records += 1
            log.warning("unreadable record on the alerts topic; skipped", extra={"fields": {
                "partition": record.partition, "offset": record.offset,
                "reason": exc.reason}})
            return
        for event in batch.events:
            if event.kind != "alert":
                continue
            update = self.board.apply(batch.gateway_id, event.key, event.ts_ms, event.body)
            if update is not None:
                self.publish(update)

    def health(self) -> tuple[bool, str]:
        if not self.connected:
            return False, f"not consuming {self.topic}: {self.last_error or 'connecting'}"
        state = "live" if self.caught_up.is_set() else "replaying"
        return True, f"{state}; {len(self.board)} active alerts, {self.subscribers} streams"
