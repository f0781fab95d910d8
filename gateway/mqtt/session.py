"""Per-client broker state that outlives a connection when clean_session=0.  Pure.

A `Session` holds the client's subscriptions and the outbound QoS 1 messages not yet
acknowledged (`inflight`, keyed by packet id, in send order) or not yet sent (`queue`).

Delivery guarantees to subscribers (MQTT 3.1.1 §4.3, §4.4):

* QoS 0 is sent if the client is connected and keeping up; otherwise dropped and counted
  (`dropped_slow` / not queued while offline, like mosquitto's default);
* QoS 1 is sent at most `max_inflight` at a time; the rest wait in `queue`, bounded by
  `max_queued` (the oldest is dropped and counted when full).  On reconnect of a persistent
  session, unacknowledged messages are re-sent first with DUP=1, in their original order,
  then the queue drains;
* subscriptions are never granted above QoS 1, so the broker never *sends* QoS 2.

`conn` is the live connection or None; it must offer `send(bytes)` and `write_paused`.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from gateway.mqtt.router import Message


class _Conn(Protocol):
    write_paused: bool

    def send(self, data: bytes) -> None: ...


class Counters(Protocol):
    messages_out: int
    dropped_slow: int
    dropped_queue_full: int


#: never mutated (`discard` on it is a no-op); replaced by an object of its own first
_NO_QUEUE: deque[tuple[Message, bool]] = deque()
_NO_PIDS: set[int] = set()


class Session:
    __slots__ = ("client_id", "clean", "subscriptions", "inflight", "queue", "awaiting_rel",
                 "conn", "offline_since", "max_inflight", "max_queued", "counters", "_pid")

    def __init__(self, client_id: str, clean: bool, counters: Counters, *,
                 max_inflight: int = 32, max_queued: int = 1000) -> None:
        self.client_id = client_id
        self.clean = clean
        self.subscriptions: dict[str, int] = {}
        self.inflight: dict[int, tuple[Message, bool]] = {}
        # the shared empty ones until first used: 10,000 sensor sessions that never queue or
        # use QoS 2 would otherwise hold 9 MB of empty deques and sets
        self.queue: deque[tuple[Message, bool]] = _NO_QUEUE
        #: inbound QoS 2 packet ids answered with PUBREC, waiting for PUBREL (add with
        #: `awaiting`)
        self.awaiting_rel: set[int] = _NO_PIDS
        self.conn: _Conn | None = None
        self.offline_since: float | None = None
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.counters = counters
        self._pid = 0

    def __repr__(self) -> str:
        return f"Session({self.client_id!r})"

    def deliver(self, msg: Message, qos: int, retain: bool = False) -> None:
        """Send (or queue) `msg` at `qos` (already min(publish QoS, subscription QoS)).

        `retain` is the RETAIN flag on the wire: 1 only for retained messages sent because
        of a new subscription (§3.3.1.3)."""
        conn = self.conn
        if qos == 0:
            if conn is None:
                return
            if conn.write_paused:
                self.counters.dropped_slow += 1
                return
            conn.send(msg.packet(0, retain))
            self.counters.messages_out += 1
            return
        if conn is not None and not conn.write_paused and not self.queue \
                and len(self.inflight) < self.max_inflight:
            self._send(msg, retain)
            return
        if len(self.queue) >= self.max_queued:
            self.queue.popleft()
            self.counters.dropped_queue_full += 1
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append((msg, retain))

    def awaiting(self, pid: int) -> None:
        """Note an inbound QoS 2 packet id answered with PUBREC (until its PUBREL)."""
        if self.awaiting_rel is _NO_PIDS:
            self.awaiting_rel = set()
        self.awaiting_rel.add(pid)

    def _send(self, msg: Message, retain: bool) -> None:
        pid = self._next_pid()
        self.inflight[pid] = (msg, retain)
        assert self.conn is not None
        self.conn.send(msg.packet(1, retain, pid))
        self.counters.messages_out += 1

    def _next_pid(self) -> int:
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid
        raise RuntimeError("no free packet id")  # unreachable: inflight ≤ max_inflight

    def acked(self, pid: int) -> bool:
        """PUBACK from the client.  False if the id was not in flight."""
        if self.inflight.pop(pid, None) is None:
            return False
        self.drain()
        return True

    def drain(self) -> None:
        conn = self.conn
        while self.queue and conn is not None and not conn.write_paused \
                and len(self.inflight) < self.max_inflight:
            msg, retain = self.queue.popleft()
            self._send(msg, retain)

    def resume(self, conn: _Conn) -> None:
        """Attach a new connection: re-send unacknowledged messages (DUP=1), then the queue."""
        self.conn = conn
        self.offline_since = None
        for pid, (msg, retain) in list(self.inflight.items()):
            conn.send(msg.packet(1, retain, pid, dup=True))
            self.counters.messages_out += 1
        self.drain()
