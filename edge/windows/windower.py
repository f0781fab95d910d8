"""Event-time windows for one `WindowSpec`, pure and single-threaded.

Who calls what: the owner feeds every reading to `observe(reading, arrival_ms)` and calls
`close_due(now_ms)` (or `advance(now_ms)`) periodically — the gateway: every ~100 ms, and
as soon as `closes_pending` turns true after a reading.  `observe` never computes an
aggregate; it only files the value and notes which series became due.  `close_due` closes
due windows and computes all their aggregates in one numpy batch
(`edge.windows.aggregate`), returned column-wise (`edge.windows.batch.ClosedWindows`):
no Python object per window is made on the way, which is how 10,000 readings/s fit in a
small CPU budget.

Bounded work.  `close_due(now_ms, max_windows=N)` visits at most N due series (so closes
about N windows; one series' due windows are always closed together) and leaves the rest
for the next call, oldest first: series are taken in the order their closes became due —
event-time closes in the order of the readings that made them due, idle closes in deadline
order, the two merged.  `closes_pending` says whether more is due.  A window is closed once
and never skipped: a series waiting in the queue keeps its open panes (readings arriving
meanwhile are merged as usual) and is closed, up to its watermark at that moment, when its
turn comes.

Series and watermarks.  A *series* is (key, measurement).  Each series has its own watermark
— per series, not global, so a device with a fast clock or a backlog replay cannot close
everybody else's windows:

* event time: ``W = max event time seen - lateness``;
* processing time, for a series that went quiet: ``W_idle = max event time seen + (now -
  arrival of its last reading) - idle_timeout``.  The series' clock is assumed to keep running
  with ours, so a sensor that goes silent has its last window closed `idle_timeout` after that
  window's end (by its own clock), and a reading that arrives on time is never made late by it.

Window ``[s, e)`` closes as soon as either watermark reaches `e`; `closed_by` says which
("watermark" or "idle").  Windows that would be empty are never emitted.

Late readings.  A reading is *late* when every window it belongs to has closed; it is returned
as `Late(reason="late")`, counted, and never changes a closed window.  (With sliding windows a
reading some of whose windows have closed is merged into the ones still open.)  So a reading
within `lateness` of the newest event time of its series (and not held back longer than
`idle_timeout` on the processing clock) is always merged; out-of-order input meeting that bound
gives exactly the windows sorted input gives.  Out-of-order readings that are merged are
counted in `WindowResult.late`.

Ordering: windows of one series come out in start order; across series in the order their
closes became due.  Each window carries `due_ms`, the processing time its close became due
(the `arrival_ms` of the reading that moved the event-time watermark past its end, or the
exact idle deadline); a series' further windows closed in the same visit carry the same,
earlier, time.
Duplicates are not detected here (the ingest path de-duplicates by idempotency key).

numpy is needed at close time only (imported lazily by `edge.windows.aggregate`).
"""

from __future__ import annotations

import sys
from array import array
from collections import deque
from collections.abc import Iterator
from typing import Any

from edge.model import Reading
from edge.windows.aggregate import compute_columns
from edge.windows.batch import ClosedWindows, Sealed
from edge.windows.result import Late, WindowResult
from edge.windows.spec import WindowSpec
from edge.windows.state import WindowerCapture, capture_windower, restore_windower
from edge.windows.timers import GRANULARITY_MS, DeadlineWheel

_SWEEP_EVERY_MS = 60_000
_TAG_FIELDS = ("facility", "line", "zone")


class _Pane:
    """The readings of one slide-sized slice of one series."""

    __slots__ = ("ts", "vals", "late", "bmin")

    def __init__(self) -> None:
        self.ts = array("q")
        self.vals = array("d")
        self.late = 0
        self.bmin: float | None = None


_NO_PANE = _Pane()


class _Series:
    __slots__ = ("key", "measurement", "panes", "max_ts", "next_k", "close_end",
                 "last_arrival", "last", "due", "due_at", "bucket", "late", "cur_p",
                 "cur_pane")

    def __init__(self, key: str, measurement: str, last: Reading) -> None:
        self.key = key
        self.measurement = measurement
        self.panes: dict[int, _Pane] = {}
        self.max_ts = 0
        #: windows k < next_k are closed; close_end = end of window next_k
        self.next_k = 0
        self.close_end = 0
        self.last_arrival = 0
        #: a reading with the series' current unit and tags (the latest one to change them)
        self.last = last
        self.due = False
        #: arrival of the reading that made it due (while `due`)
        self.due_at = 0
        #: the `DeadlineWheel` bucket of its idle deadline, if one is filed
        self.bucket: int | None = None
        self.late = 0
        #: the pane the last reading went to (most readings go to the same one)
        self.cur_p: int | None = None
        self.cur_pane = _NO_PANE


class Windower:
    """All series of one window family.  Not thread-safe; owned by one caller."""

    def __init__(self, spec: WindowSpec, *, now_ms: int = 0) -> None:
        self.spec = spec
        self._P = spec.slide
        self._S = spec.size_ms
        self._n = spec.panes_per_window
        self._L = spec.lateness_ms
        self._idle = spec.idle_timeout_ms
        self._by_device = spec.key_by == ("device_id",)
        self._measurements = spec.measurements
        self._series: dict[tuple[str, str], _Series] = {}
        #: series due by the event-time watermark, in the order they became due
        self._due: deque[_Series] = deque()
        #: idle deadlines (idle closes come at most its granularity, 10 ms, late)
        self._wheel: DeadlineWheel[_Series] = DeadlineWheel()
        self._sealed: list[Sealed] = []
        self._last_sweep = now_ms
        #: readings refused by reason, and windows emitted — for metrics
        self.counters: dict[str, int] = {"late": 0, "missing_key": 0, "bad_quality": 0,
                                         "windows_closed": 0, "series_forgotten": 0}

    # -- input -------------------------------------------------------------------------

    def key_of(self, r: Reading) -> str | None:
        """The window key of a reading, or None when it lacks a tag the spec groups by."""
        if self._by_device:
            return r.device_id
        parts = []
        for name in self.spec.key_by:
            value = getattr(r, name)
            if value is None:
                return None
            parts.append(f"{name}={value}")
        return ",".join(parts)

    def observe(self, r: Reading, arrival_ms: int) -> Late | None:
        """File one reading.  Returns a `Late` when this family refuses it, else None.

        `arrival_ms` is the processing time the reading arrived (the clock `advance` gets).
        Readings of measurements the spec does not window return None and are ignored.
        """
        if self._measurements is not None and r.measurement not in self._measurements:
            return None
        if r.quality == "bad" and not self.spec.include_bad_quality:
            self.counters["bad_quality"] += 1
            return Late(r, self.spec.id, r.device_id, "bad_quality")
        key = r.device_id if self._by_device else self.key_of(r)
        if key is None:
            self.counters["missing_key"] += 1
            return Late(r, self.spec.id, r.device_id, "missing_key")
        ts = r.ts_ms
        s = self._series.get((key, r.measurement))
        if s is None:
            s = self._new_series(key, r)
        p = ts // self._P
        if p == s.cur_p:
            pane = s.cur_pane
        else:
            if p < s.next_k:
                s.late += 1
                self.counters["late"] += 1
                return Late(r, self.spec.id, key, "late")
            found = s.panes.get(p)
            if found is None:
                found = s.panes[p] = _Pane()
            s.cur_p = p
            s.cur_pane = pane = found
        pane.ts.append(ts)
        pane.vals.append(r.value)
        bv = r.battery_voltage
        if bv is not None and (pane.bmin is None or bv < pane.bmin):
            pane.bmin = bv
        if ts < s.max_ts:
            pane.late += 1
        else:
            s.max_ts = ts
            if ts - self._L >= s.close_end and not s.due:
                s.due = True
                s.due_at = arrival_ms
                self._due.append(s)
        s.last_arrival = arrival_ms
        last = s.last
        if (r.unit != last.unit or r.facility != last.facility or r.line != last.line
                or r.zone != last.zone or r.device_id != last.device_id):
            # only unit and tags are read from it: keeping the reading that first had them,
            # not every new one, lets each reading be freed as soon as it is filed (10,000
            # a second surviving for a second each would keep the cyclic GC busy)
            s.last = r
        deadline = arrival_ms + (s.close_end - s.max_ts) + self._idle
        if s.bucket is None or -(-deadline // GRANULARITY_MS) < s.bucket:
            self._wheel.set(s, deadline)
        return None

    def _new_series(self, key: str, r: Reading) -> _Series:
        s = _Series(key, r.measurement, r)
        s.max_ts = r.ts_ms
        # the first window still open at this watermark: smallest k with k*P + S > W
        s.next_k = (r.ts_ms - self._L - self._S) // self._P + 1
        s.close_end = s.next_k * self._P + self._S
        self._series[(key, r.measurement)] = s
        return s

    # -- closing -----------------------------------------------------------------------

    def advance(self, now_ms: int) -> list[WindowResult]:
        """Close every window whose event-time or idle watermark has passed its end."""
        return list(self.close_due(now_ms))

    def close_due(self, now_ms: int, max_windows: int | None = None) -> ClosedWindows:
        """Close due windows, oldest due first: all of them, or as many as `max_windows`
        series visits allow (see the module docstring); `closes_pending` tells if more are
        due."""
        limit = sys.maxsize if max_windows is None else max(1, max_windows)
        due, wheel, L, idle = self._due, self._wheel, self._L, self._idle
        visits = 0
        # when the earliest idle deadline is handed out; may be too early once its entry is
        # superseded — then the wheel has nothing due and the due queue goes on
        first_idle = wheel.earliest_ms()
        while visits < limit and len(self._sealed) < limit:
            visits += 1
            if due and (first_idle is None or first_idle > now_ms
                        or due[0].due_at <= first_idle):
                s = due.popleft()
                s.due = False
                before = s.close_end
                self._close(s, s.max_ts - L, "watermark", s.due_at)
                if s.close_end != before and s.panes:
                    at = self._requeue(s)
                    if first_idle is None or at < first_idle:
                        first_idle = at
                continue
            popped = wheel.pop_due(now_ms)
            if popped is None:
                if not due:
                    break
                first_idle = None  # nothing idle is due now
                continue
            s = popped
            if s.due:
                self._close(s, s.max_ts - L, "watermark", s.due_at)
            exact = s.last_arrival + (s.close_end - s.max_ts) + idle
            self._close(s, s.max_ts + (now_ms - s.last_arrival) - idle, "idle", exact)
            if s.panes:
                self._requeue(s)
            first_idle = wheel.earliest_ms()
        if now_ms - self._last_sweep >= min(_SWEEP_EVERY_MS, self.spec.forget_after_ms):
            self._sweep(now_ms)
        return self._drain()

    @property
    def due_count(self) -> int:
        """Series waiting to be closed by their event-time watermark."""
        return len(self._due)

    def closes_pending(self, now_ms: int) -> bool:
        """Whether `close_due(now_ms)` has work: series due by their watermark, or an idle
        deadline at or before `now_ms`."""
        if self._due:
            return True
        deadline = self._wheel.earliest_ms()
        return deadline is not None and deadline <= now_ms

    def next_deadline_ms(self) -> int | None:
        """When the earliest idle deadline filed is handed out (processing clock), or None."""
        return self._wheel.earliest_ms()

    def _requeue(self, s: _Series) -> int:
        """File the idle deadline of the series' first open window (after a close); returns
        when it will be handed out."""
        return self._wheel.set(s, s.last_arrival + (s.close_end - s.max_ts) + self._idle)

    def flush(self, closed_by: str = "flush") -> list[WindowResult]:
        """Close every open window now (shutdown, reload).  Later readings for them are late."""
        return list(self.close_all(closed_by))

    def close_all(self, closed_by: str = "flush") -> ClosedWindows:
        """`flush`, column-wise."""
        for s in self._series.values():
            if s.panes:
                last_pane = max(s.panes)
                self._close(s, last_pane * self._P + self._S, closed_by, None)
            s.due = False
        self._due.clear()
        return self._drain()

    def _close(self, s: _Series, watermark: int, closed_by: str, due_ms: int | None) -> None:
        P, S, n = self._P, self._S, self._n
        target = (watermark - S) // P + 1
        if target <= s.next_k:
            return
        panes = s.panes
        if panes:
            sealed = self._sealed
            last = s.last
            if n == 1:
                if len(panes) == 1:  # the usual case: one pane, closing
                    p = next(iter(panes))
                    if p < target:
                        sealed.append((s, p, [panes.pop(p)], closed_by, due_ms, last))
                else:
                    for p in sorted(panes):
                        if p >= target:
                            break
                        sealed.append((s, p, [panes.pop(p)], closed_by, due_ms, last))
            else:
                present = sorted(panes)
                starts: set[int] = set()
                for p in present:
                    starts.update(range(max(p - n + 1, s.next_k), min(p, target - 1) + 1))
                for k in sorted(starts):
                    members = [panes[q] for q in range(k, k + n) if q in panes]
                    sealed.append((s, k, members, closed_by, due_ms, last))
                for p in present:
                    if p < target:
                        del panes[p]
        s.next_k = target
        s.close_end = target * P + S
        if s.cur_p is not None and s.cur_p < target:
            s.cur_p = None

    def _drain(self) -> ClosedWindows:
        sealed = self._sealed
        if not sealed:  # most calls: no numpy at all
            return ClosedWindows(self.spec, [], {})
        self._sealed = []
        values = array("d")
        times = array("q")
        counts = []
        for item in sealed:
            c = 0
            for pane in item[2]:
                values.extend(pane.vals)
                times.extend(pane.ts)
                c += len(pane.vals)
            counts.append(c)
        self.counters["windows_closed"] += len(sealed)
        return ClosedWindows(self.spec, sealed, compute_columns(values, times, counts))

    def _sweep(self, now_ms: int) -> None:
        """Forget series silent for `forget_after` with nothing open (bounded memory)."""
        self._last_sweep = now_ms
        horizon = now_ms - self.spec.forget_after_ms
        stale = [sk for sk, s in self._series.items()
                 if not s.panes and not s.due and s.last_arrival <= horizon]
        for sk in stale:
            del self._series[sk]
        self.counters["series_forgotten"] += len(stale)

    # -- introspection and persistence ---------------------------------------------------

    @property
    def series_count(self) -> int:
        return len(self._series)

    def open_windows(self) -> Iterator[tuple[str, str, int]]:
        """(key, measurement, pane start ms) of every pane holding data — for diagnostics."""
        for s in self._series.values():
            for p in sorted(s.panes):
                yield s.key, s.measurement, p * self._P

    def late_by_key(self) -> dict[str, int]:
        """Late readings refused so far, per window key (all measurements summed)."""
        out: dict[str, int] = {}
        for s in self._series.values():
            if s.late:
                out[s.key] = out.get(s.key, 0) + s.late
        return out

    def capture(self) -> WindowerCapture:
        """A copy of every series' state (`edge.windows.state`): one C-level pass per
        column, no values copied."""
        return capture_windower(self)

    def to_state(self) -> dict[str, Any]:
        """The state of every series, open panes included (msgpack-safe; see
        `edge.windows.state`)."""
        return self.capture().to_state()

    @classmethod
    def from_state(cls, spec: WindowSpec, state: dict[str, Any], *, now_ms: int) -> Windower:
        """Rebuild from `to_state()`.  The caller checks the spec still matches."""
        return restore_windower(cls(spec, now_ms=now_ms), state, now_ms=now_ms)

    def adopt(self, s: _Series, *, due: bool, now_ms: int) -> None:
        """Take a restored series (`edge.windows.state`)."""
        self._series[(s.key, s.measurement)] = s
        if due:
            s.due = True
            s.due_at = now_ms
            self._due.append(s)
        if s.panes:
            # a restart is not silence: the idle clock starts again from the restore
            s.last_arrival = max(s.last_arrival, now_ms)
            self._requeue(s)
