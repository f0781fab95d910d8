"""Event-time windows for one `WindowSpec`, pure and single-threaded.

Who calls what: the owner feeds every reading to `observe(reading, arrival_ms)` and calls
`advance(now_ms)` periodically (the gateway: every ~100 ms).  `observe` never computes an
aggregate; it only files the value and notes which windows became due.  `advance` closes due
windows and computes all their aggregates in one numpy batch (`edge.windows.aggregate`), which
is how 10,000 readings/s fit in a small CPU budget.  A closed window therefore comes out of the
first `advance` after it closed — at most one advance period later.

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

Ordering: windows of one series come out in start order; across series in no promised order.
Duplicates are not detected here (the ingest path de-duplicates by idempotency key).

numpy is needed at close time only (imported lazily by `edge.windows.aggregate`).
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Iterator
from typing import Any

from edge.model import Reading
from edge.windows.aggregate import compute_batch
from edge.windows.result import Late, WindowResult
from edge.windows.spec import WindowSpec

_SWEEP_EVERY_MS = 60_000
#: an idle deadline moving earlier by less than this keeps the queued one: arrival jitter
#: would otherwise re-queue most series on most readings.  Idle closes may thus come up to
#: this much later than the exact extrapolation (never earlier).
_DEADLINE_SLACK_MS = 100
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
                 "last_arrival", "last", "due", "deadline", "late", "cur_p", "cur_pane")

    def __init__(self, key: str, measurement: str, last: Reading) -> None:
        self.key = key
        self.measurement = measurement
        self.panes: dict[int, _Pane] = {}
        self.max_ts = 0
        #: windows k < next_k are closed; close_end = end of window next_k
        self.next_k = 0
        self.close_end = 0
        self.last_arrival = 0
        self.last = last
        self.due = False
        #: the earliest idle deadline this series has in the heap, if any
        self.deadline: int | None = None
        self.late = 0
        #: the pane the last reading went to (most readings go to the same one)
        self.cur_p: int | None = None
        self.cur_pane = _NO_PANE


_Sealed = tuple[_Series, int, list[_Pane], str]


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
        self._due: list[_Series] = []
        self._heap: list[tuple[int, int, _Series]] = []
        self._seq = itertools.count()
        self._sealed: list[_Sealed] = []
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
                self._due.append(s)
        s.last_arrival = arrival_ms
        s.last = r
        deadline = arrival_ms + (s.close_end - s.max_ts) + self._idle
        if s.deadline is None or deadline < s.deadline - _DEADLINE_SLACK_MS:
            s.deadline = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), s))
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
        for s in self._due:
            s.due = False
            self._close(s, s.max_ts - self._L, "watermark")
        self._due.clear()
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            deadline, _, s = heapq.heappop(heap)
            if s.deadline != deadline:
                continue  # superseded by an earlier entry that was already handled
            s.deadline = None
            self._close(s, s.max_ts - self._L, "watermark")
            self._close(s, s.max_ts + (now_ms - s.last_arrival) - self._idle, "idle")
            if s.panes:
                s.deadline = s.last_arrival + (s.close_end - s.max_ts) + self._idle
                heapq.heappush(heap, (s.deadline, next(self._seq), s))
        if now_ms - self._last_sweep >= min(_SWEEP_EVERY_MS, self.spec.forget_after_ms):
            self._sweep(now_ms)
        return self._drain()

    def flush(self, closed_by: str = "flush") -> list[WindowResult]:
        """Close every open window now (shutdown, reload).  Later readings for them are late."""
        for s in self._series.values():
            if s.panes:
                last_pane = max(s.panes)
                self._close(s, last_pane * self._P + self._S, closed_by)
            s.due = False
        self._due.clear()
        return self._drain()

    def _close(self, s: _Series, watermark: int, closed_by: str) -> None:
        P, S, n = self._P, self._S, self._n
        target = (watermark - S) // P + 1
        if target <= s.next_k:
            return
        panes = s.panes
        if panes:
            present = sorted(panes)
            if n == 1:
                for p in present:
                    if p >= target:
                        break
                    self._sealed.append((s, p, [panes.pop(p)], closed_by))
            else:
                starts: set[int] = set()
                for p in present:
                    starts.update(range(max(p - n + 1, s.next_k), min(p, target - 1) + 1))
                for k in sorted(starts):
                    members = [panes[q] for q in range(k, k + n) if q in panes]
                    self._sealed.append((s, k, members, closed_by))
                for p in present:
                    if p < target:
                        del panes[p]
        s.next_k = target
        s.close_end = target * P + S
        if s.cur_p is not None and s.cur_p < target:
            s.cur_p = None

    def _drain(self) -> list[WindowResult]:
        sealed = self._sealed
        if not sealed:
            return []
        self._sealed = []
        values = array("d")
        times = array("q")
        counts = []
        for _, _, panes, _ in sealed:
            c = 0
            for pane in panes:
                values.extend(pane.vals)
                times.extend(pane.ts)
                c += len(pane.vals)
            counts.append(c)
        aggs = compute_batch(values, times, counts)
        spec = self.spec
        kind, fingerprint, P, S = spec.kind, spec.fingerprint, self._P, self._S
        out = []
        for (s, k, panes, closed_by), agg in zip(sealed, aggs):
            bmins = [p.bmin for p in panes if p.bmin is not None]
            out.append(WindowResult(
                window=spec.id, kind=kind, size_ms=S, slide_ms=P, fingerprint=fingerprint,
                key=s.key, measurement=s.measurement, start_ms=k * P, end_ms=k * P + S,
                aggregates=agg, late=sum(p.late for p in panes), closed_by=closed_by,
                unit=s.last.unit, tags=self._tags(s.last),
                battery_min=min(bmins) if bmins else None))
        self.counters["windows_closed"] += len(out)
        return out

    def _tags(self, r: Reading) -> dict[str, str]:
        if "device_id" in self.spec.key_by:
            return r.tags
        return {name: str(getattr(r, name)) for name in self.spec.key_by}

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

    def to_state(self) -> dict[str, Any]:
        """JSON-safe state of every series (open panes included)."""
        series = []
        for s in self._series.values():
            r = s.last
            series.append({
                "key": s.key, "measurement": s.measurement, "max_ts": s.max_ts,
                "next_k": s.next_k, "last_arrival": s.last_arrival, "late": s.late,
                "last": {"device_id": r.device_id, "unit": r.unit, "facility": r.facility,
                         "line": r.line, "zone": r.zone},
                "panes": [[p, list(pane.ts), list(pane.vals), pane.late, pane.bmin]
                          for p, pane in sorted(s.panes.items())],
            })
        return {"spec": self.spec.to_dict(), "counters": dict(self.counters),
                "series": series}

    @classmethod
    def from_state(cls, spec: WindowSpec, state: dict[str, Any], *, now_ms: int) -> Windower:
        """Rebuild from `to_state()`.  The caller checks the spec still matches."""
        w = cls(spec, now_ms=now_ms)
        w.counters.update(state.get("counters", {}))
        for item in state["series"]:
            last = item["last"]
            r = Reading(device_id=last["device_id"], ts_ms=item["max_ts"], value=0.0,
                        measurement=item["measurement"], unit=last["unit"],
                        facility=last["facility"], line=last["line"], zone=last["zone"])
            s = _Series(item["key"], item["measurement"], r)
            s.max_ts = item["max_ts"]
            s.next_k = item["next_k"]
            s.close_end = s.next_k * w._P + w._S
            s.last_arrival = item["last_arrival"]
            s.late = item["late"]
            for p, ts, vals, late, bmin in item["panes"]:
                pane = _Pane()
                pane.ts.extend(ts)
                pane.vals.extend(float(v) for v in vals)
                pane.late = late
                pane.bmin = bmin
                s.panes[p] = pane
            w._series[(s.key, s.measurement)] = s
            if s.max_ts - w._L >= s.close_end:
                s.due = True
                w._due.append(s)
            if s.panes:
                # a restart is not silence: the idle clock starts again from the restore
                s.last_arrival = max(s.last_arrival, now_ms)
                s.deadline = s.last_arrival + (s.close_end - s.max_ts) + w._idle
                heapq.heappush(w._heap, (s.deadline, next(w._seq), s))
        return w
