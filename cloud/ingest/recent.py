"""Readings a gateway had produced recently, to drop them when it sends them again (pure).

Drops readings re-sent in a *different* batch (a gateway that crashed after sending re-batches
its unacknowledged rows under new sequence numbers) and readings repeated inside one batch.
Identity is the one `edge.model.Reading.idempotency_key` digests:

* a reading with a seq is (device id, measurement, seq), kept exactly: per series (device,
  measurement) the seqs remembered are a sorted list of half-open intervals.  A sensor counts
  up, so a batch adds one interval per series or extends the last one, and checking a batch
  is one bisection per series and batch, not a lookup per reading: the state of thousands of
  devices stays small and the check stays off main memory;
* a reading without one is (device, measurement, sensor time or receive time, value bits),
  kept as a 64-bit hash (`reading_identity`; a collision would drop a reading, ~10^-15 per
  reading at this horizon).

Horizon: the last `capacity / 2` to `capacity` readings of each gateway (two generations of
`capacity / 2` readings; default 50,000: 25+ batches of 1,000, far more than a gateway
re-sends after a crash).  Readings are remembered only once their batch was produced
(`remember*`), so a batch that failed (503) is not mistaken for a duplicate when retried.
The state is lost on restart: the sinks' key de-duplication is the guarantee, this only
saves bus and sink work.

Who calls what: cloud ingest, on the event loop — `all_new(gw, cols)` for a batch's
`edge.codec.scan_batch` columns (the common case, no `Reading` object), `split(gw, readings)`
when some readings had to be refused anyway; then `remember(gw, cols)` /
`remember_readings(gw, fresh)` once the batch was produced.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from operator import add, sub

from edge.codec import Columns
from edge.model import FLAG_TS_MISSING, Reading

__all__ = ["RecentKeys", "reading_identity"]

Series = tuple[str, str]


def _identity(device_id: str, measurement: str, flags: int, received_ms: int,
              sensor_ts_ms: int | None, ts_ms: int, value: float) -> int:
    if flags & FLAG_TS_MISSING:
        return hash((device_id, measurement, "r", received_ms, float(value).hex()))
    sensor_time = sensor_ts_ms if sensor_ts_ms is not None else ts_ms
    return hash((device_id, measurement, "t", sensor_time, float(value).hex()))


def reading_identity(r: Reading) -> int:
    """64-bit hash with the equality of `Reading.idempotency_key` (seq, or time and value)."""
    if r.seq is not None:
        return hash((r.device_id, r.measurement, r.seq))
    return _identity(r.device_id, r.measurement, r.flags, r.received_ms, r.sensor_ts_ms,
                     r.ts_ms, r.value)


# --------------------------------------------------------------------------- intervals
# A series' seqs: bounds [a0, b0, a1, b1, ...] sorted, each [a, b) remembered.


def _inside(bounds: list[int], seq: int) -> bool:
    return bool(bisect_right(bounds, seq) & 1)


def _overlaps(bounds: list[int], low: int, high: int) -> bool:
    """Whether any of low..high (inclusive) is remembered."""
    i = bisect_right(bounds, low)
    return bool(i & 1) or (i < len(bounds) and bounds[i] <= high)


def _add(bounds: list[int], low: int, high: int) -> None:
    """Remember low..high (inclusive), merging with touching intervals."""
    end = high + 1
    if not bounds or bounds[-1] < low:
        bounds += (low, end)
        return
    if bounds[-1] == low:
        bounds[-1] = end  # the sensor counted on: the usual case
        return
    i = bisect_left(bounds, low)
    j = bisect_right(bounds, end)
    if i & 1:
        i -= 1
        low = bounds[i]
    if j & 1:
        end = bounds[j]
        j += 1
    bounds[i:j] = (low, end)


def _contiguous(seqs: list[int]) -> bool:
    """seqs are n consecutive integers counting up (what a sensor sends)."""
    return seqs[-1] - seqs[0] == len(seqs) - 1 and seqs == list(range(seqs[0], seqs[-1] + 1))


class _Generation:
    __slots__ = ("count", "other", "series")

    def __init__(self) -> None:
        self.series: dict[Series, list[int]] = {}
        self.other: set[int] = set()
        self.count = 0


# --------------------------------------------------------------------------- columns


def _column_series(cols: Columns) -> Iterator[tuple[Series, list[int]]]:
    """(series, its seqs in batch order) of the batch's readings that have a seq."""
    by_series: dict[Series, list[int]] = {}
    seq = cols.seq
    if cols.seq_presence is True:
        starts, lengths = cols.starts, cols.lengths
    else:
        lengths = _present_counts(cols)
        starts = list(accumulate(lengths[:-1], initial=0)) if lengths else []
    for run, (start, length) in enumerate(zip(starts, lengths)):
        if not length:
            continue
        key = (cols.run_device[run], cols.contexts[cols.run_context[run]][0])
        mine = by_series.get(key)
        if mine is None:
            by_series[key] = seq[start:start + length]
        else:
            mine += seq[start:start + length]  # a series in several runs (its tags changed)
    return iter(by_series.items())


def _present_counts(cols: Columns) -> list[int]:
    presence = cols.seq_presence
    if presence is False:
        return [0] * cols.n_runs
    assert isinstance(presence, bytes)
    return [presence[s:s + n].count(1) for s, n in zip(cols.starts, cols.lengths)]


def _seqless(cols: Columns) -> list[int]:
    """`reading_identity` of the batch's readings without a seq (row order)."""
    presence = cols.seq_presence
    if presence is True:
        return []
    run_of_row = cols.run_of_row()
    sensor_ts = cols.sensor_ts()
    values = cols.values
    out = []
    for row in range(cols.n):
        if presence is False or not presence[row]:
            run = run_of_row[row]
            out.append(_identity(cols.run_device[run], cols.contexts[cols.run_context[run]][0],
                                 cols.flags[row], cols.received[row], sensor_ts[row],
                                 cols.ts[row], values[row]))
    return out


def _counting_runs(cols: Columns) -> list[tuple[Series, int, int]] | None:
    """(series, first seq, last seq) per run when every reading has a seq, every run counts
    up by one and no series has two runs (the usual batch; `Columns.seq_counts_up` mostly
    knows it from the frame's seq column without a pass).  None otherwise."""
    if not cols.n or not cols.seq_counts_up():
        return None
    heads = list(map(cols.seq.__getitem__, cols.starts))
    ends = list(map(add, heads, cols.lengths))
    measurement = [c[0] for c in cols.contexts]
    keys = list(zip(cols.run_device, map(measurement.__getitem__, cols.run_context)))
    if len(set(keys)) != len(keys):
        return None
    return list(zip(keys, heads, map(sub, ends, repeat(1))))


class RecentKeys:
    """Recently produced reading identities per gateway; see the module docstring."""

    def __init__(self, capacity: int = 50_000) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self._generations: dict[str, tuple[_Generation, _Generation]] = {}
        #: the last columns `all_new` looked at and their counting runs, for `remember`
        self._last: tuple[Columns | None, list[tuple[Series, int, int]] | None] = (None, None)

    def _runs_of(self, cols: Columns) -> list[tuple[Series, int, int]] | None:
        last, runs = self._last
        if last is not cols:
            runs = _counting_runs(cols)
            self._last = (cols, runs)
        return runs

    def _known(self, gateway_id: str, key: Series, seq: int) -> bool:
        gens = self._generations.get(gateway_id, ())
        return any(_inside(g.series[key], seq) for g in gens if key in g.series)

    def all_new(self, gateway_id: str, cols: Columns) -> bool:
        """True when no reading of the columns was remembered for the gateway and none
        repeats inside the batch: `split` would keep every reading.  A few C-level passes
        per series, no Reading."""
        gens = self._generations.get(gateway_id, ())
        runs = self._runs_of(cols)
        if runs is not None:
            for g in gens:
                series = g.series
                for key, low, high in runs:
                    bounds = series.get(key)
                    if bounds is not None and _overlaps(bounds, low, high):
                        return False
            return True
        for key, seqs in _column_series(cols):
            if _contiguous(seqs):
                low, high = seqs[0], seqs[-1]
                if any(_overlaps(g.series[key], low, high) for g in gens if key in g.series):
                    return False
            elif len(set(seqs)) != len(seqs) or any(
                    self._known(gateway_id, key, s) for s in seqs):
                return False
        others = _seqless(cols)
        return not others or (len(set(others)) == len(others)
                              and all(g.other.isdisjoint(others) for g in gens))

    def split(self, gateway_id: str,
              readings: Sequence[Reading]) -> tuple[list[Reading], int]:
        """(readings not seen before, in batch order; how many were dropped)."""
        gens = self._generations.get(gateway_id, ())
        batch_seqs: dict[Series, set[int]] = {}
        batch_other: set[int] = set()
        fresh: list[Reading] = []
        for r in readings:
            if r.seq is not None:
                key = (r.device_id, r.measurement)
                mine = batch_seqs.setdefault(key, set())
                if r.seq in mine or self._known(gateway_id, key, r.seq):
                    continue
                mine.add(r.seq)
            else:
                h = reading_identity(r)
                if h in batch_other or any(h in g.other for g in gens):
                    continue
                batch_other.add(h)
            fresh.append(r)
        return fresh, len(readings) - len(fresh)

    def _current(self, gateway_id: str, adding: int) -> _Generation:
        gens = self._generations.get(gateway_id)
        if gens is None:
            gens = self._generations[gateway_id] = (_Generation(), _Generation())
        current = gens[0]
        if current.count >= self.capacity // 2:
            # the older generation is forgotten: memory stays within `capacity` readings
            current = _Generation()
            self._generations[gateway_id] = (current, gens[0])
        current.count += adding
        return current

    def remember(self, gateway_id: str, cols: Columns) -> None:
        """Remember every reading of the columns (after their batch was produced)."""
        current = self._current(gateway_id, cols.n)
        runs = self._runs_of(cols)
        self._last = (None, None)
        if runs is not None:
            series = current.series
            for key, low, high in runs:
                bounds = series.get(key)
                if bounds is None:
                    series[key] = [low, high + 1]
                else:
                    _add(bounds, low, high)
            return
        for key, seqs in _column_series(cols):
            bounds = current.series.setdefault(key, [])
            if _contiguous(seqs):
                _add(bounds, seqs[0], seqs[-1])
            else:
                for s in seqs:
                    _add(bounds, s, s)
        current.other.update(_seqless(cols))

    def remember_readings(self, gateway_id: str, readings: Sequence[Reading]) -> None:
        """Remember these readings (the fresh ones `split` returned, once produced)."""
        current = self._current(gateway_id, len(readings))
        for r in readings:
            if r.seq is not None:
                _add(current.series.setdefault((r.device_id, r.measurement), []), r.seq, r.seq)
            else:
                current.other.add(reading_identity(r))

    def size(self, gateway_id: str) -> int:
        """Readings remembered for the gateway."""
        gens = self._generations.get(gateway_id, ())
        return sum(g.count for g in gens)
