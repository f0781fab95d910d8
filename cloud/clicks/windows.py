"""Tumbling event-time windows over click events, per event type — pure, no I/O.

    w = ClickWindows(size_ms=60_000, grace_ms=900_000, idle_ms=30_000)
    late = w.observe("click", ts_ms, user_id, session_id, arrival_ms=now, stored_ms=rec.ts_ms)
    finals = w.advance(now_ms)          # windows that closed: final, emit once
    updates = w.provisional()           # open windows that changed since the last call

Stream time.  Windows close on *stream time*, not on the wall clock, so replaying a backlog
gives the same windows as live traffic:

* every event moves stream time to `min(ts, stored_ms)` if that is later — `stored_ms` is
  when the collector stored the event (the Kafka record time), so a browser whose clock runs
  ahead cannot close everyone's windows early;
* when no event arrived for `idle_ms` (processing time), stream time follows the wall clock
  (`now - idle_ms`), so the last windows of a quiet period still close.

Window `[s, s + size)` is final once stream time reaches `s + size + grace`; it is then
emitted by `advance` exactly once, and an event for it that comes afterwards is *late*:
refused, counted (`counters["late"]`), and reported to the caller.  An event within the grace
is merged into its window (and counted as `out_of_order` in it when it is behind stream time).
Windows hold exact distinct-user and distinct-session sets: memory is one set entry per
(user, window) over the size + grace horizon (16 windows with the defaults).

`to_state()` / `from_state()` make the whole thing a JSON-safe checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClickWindows", "WindowResult"]


@dataclass
class _Window:
    count: int = 0
    out_of_order: int = 0
    users: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    #: changed since the last provisional emission
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class WindowResult:
    event_type: str
    start_ms: int
    end_ms: int
    events: int
    users: int
    sessions: int
    #: events merged behind stream time (within the grace)
    out_of_order: int
    final: bool

    def as_dict(self) -> dict[str, Any]:
        return {"event_type": self.event_type, "start_ms": self.start_ms,
                "end_ms": self.end_ms, "events": self.events, "users": self.users,
                "sessions": self.sessions, "out_of_order": self.out_of_order,
                "final": self.final}


class ClickWindows:
    """Not thread-safe; one owner."""

    def __init__(self, *, size_ms: int = 60_000, grace_ms: int = 900_000,
                 idle_ms: int = 30_000) -> None:
        if size_ms <= 0 or grace_ms < 0 or idle_ms <= 0:
            raise ValueError("size and idle must be > 0, grace >= 0")
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.idle_ms = idle_ms
        #: the latest event time the stream has reached (0: nothing seen yet)
        self.stream_ms = 0
        self.last_arrival_ms: int | None = None
        #: windows with start < closed_before are final; their events are late
        self.closed_before = 0
        self._open: dict[tuple[int, str], _Window] = {}
        self.counters: dict[str, int] = {"events": 0, "late": 0, "out_of_order": 0,
                                         "windows_closed": 0}

    def start_of(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.size_ms

    def observe(self, event_type: str, ts_ms: int, user_id: str, session_id: str | None, *,
                arrival_ms: int, stored_ms: int | None = None) -> bool:
        """File one event.  False when it is late (its window was final already)."""
        start = self.start_of(ts_ms)
        self.last_arrival_ms = arrival_ms
        if start < self.closed_before:
            self.counters["late"] += 1
            return False
        w = self._open.get((start, event_type))
        if w is None:
            w = self._open[(start, event_type)] = _Window()
        w.count += 1
        w.users.add(user_id)
        if session_id is not None:
            w.sessions.add(session_id)
        w.dirty = True
        self.counters["events"] += 1
        if ts_ms < self.stream_ms:
            w.out_of_order += 1
            self.counters["out_of_order"] += 1
        watermark = ts_ms if stored_ms is None else min(ts_ms, stored_ms)
        if watermark > self.stream_ms:
            self.stream_ms = watermark
        return True

    def advance(self, now_ms: int) -> list[WindowResult]:
        """Close the windows stream time has passed (`size + grace` after their start); the
        final results, oldest first."""
        if self.last_arrival_ms is not None and now_ms - self.last_arrival_ms >= self.idle_ms:
            self.stream_ms = max(self.stream_ms, now_ms - self.idle_ms)
        if not self.stream_ms:
            return []
        # window [s, s+size) is final when stream >= s + size + grace
        horizon = self.start_of(self.stream_ms - self.size_ms - self.grace_ms) + self.size_ms
        if horizon <= self.closed_before:
            return []
        self.closed_before = horizon
        due = sorted(k for k in self._open if k[0] < horizon)
        out = [self._result(k, self._open.pop(k), final=True) for k in due]
        self.counters["windows_closed"] += len(out)
        return out

    def provisional(self) -> list[WindowResult]:
        """Open windows that changed since the last call, as non-final results."""
        out = []
        for k in sorted(self._open):
            w = self._open[k]
            if w.dirty:
                w.dirty = False
                out.append(self._result(k, w, final=False))
        return out

    def _result(self, k: tuple[int, str], w: _Window, *, final: bool) -> WindowResult:
        start, event_type = k
        return WindowResult(event_type=event_type, start_ms=start, end_ms=start + self.size_ms,
                            events=w.count, users=len(w.users), sessions=len(w.sessions),
                            out_of_order=w.out_of_order, final=final)

    @property
    def open_windows(self) -> int:
        return len(self._open)

    # -- checkpoints -------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "size_ms": self.size_ms, "grace_ms": self.grace_ms, "stream_ms": self.stream_ms,
            "last_arrival_ms": self.last_arrival_ms, "closed_before": self.closed_before,
            "counters": dict(self.counters),
            "windows": [[start, et, w.count, w.out_of_order, sorted(w.users),
                         sorted(w.sessions)] for (start, et), w in sorted(self._open.items())],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, idle_ms: int = 30_000,
                   now_ms: int | None = None) -> ClickWindows:
        """Rebuild from `to_state()`.  A restart is not silence: with `now_ms` the idle clock
        starts again from the restore."""
        w = cls(size_ms=state["size_ms"], grace_ms=state["grace_ms"], idle_ms=idle_ms)
        w.stream_ms = state["stream_ms"]
        w.last_arrival_ms = state["last_arrival_ms"]
        if now_ms is not None and w.last_arrival_ms is not None:
            w.last_arrival_ms = max(w.last_arrival_ms, now_ms)
        w.closed_before = state["closed_before"]
        w.counters.update(state["counters"])
        for start, et, count, ooo, users, sessions in state["windows"]:
            w._open[(start, et)] = _Window(count, ooo, set(users), set(sessions), True)
        return w
