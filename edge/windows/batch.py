"""`ClosedWindows`: the windows one `Windower.close_due` call closed, held column-wise.

A close produces no Python object per window: the batch keeps the sealed panes, the
aggregate columns (numpy, `edge.windows.aggregate.compute_columns`) and a few parallel
lists.  Rule evaluation reads the columns (`column`) and the per-window keys; a
`WindowResult` is built only when asked for (`batch[i]`, iteration) — for the few windows a
rule acts on at once, for the rest later, off the alert path (the gateway turns them into
buffer events in slices, `events()`).

A batch is a read-only `Sequence[WindowResult]`; element i is built at most once.  The order
is the close order: the windows of one series in start order, series in the order their
closes became due (oldest first).

`Chain` concatenates several batches (and plain lists) into one sequence without building
their elements — `AlertEngine` returns the windows of all its families in one `Output` that
way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from edge.model import Event, Reading
from edge.windows.aggregate import AGGREGATES, Columns, column_values
from edge.windows.result import WindowResult
from edge.windows.spec import WindowSpec

if TYPE_CHECKING:
    from edge.windows.windower import _Pane, _Series

#: (series, window index k, its panes, closed_by, due_ms, the series' latest reading)
Sealed = tuple["_Series", int, list["_Pane"], str, "int | None", Reading]


class ClosedWindows(Sequence[WindowResult]):
    __slots__ = ("spec", "_sealed", "_cols", "_lists", "_built", "_rows", "_const")

    def __init__(self, spec: WindowSpec, sealed: list[Sealed], columns: Columns) -> None:
        self.spec = spec
        self._sealed = sealed
        self._cols = columns
        self._lists: dict[str, list[Any]] = {}
        self._built: list[WindowResult | None] = [None] * len(sealed)
        self._rows: list[dict[str, Any]] | None = None
        # (window id, kind, size, slide, fingerprint): the same for every window
        self._const = (spec.id, spec.kind, spec.size_ms, spec.slide, spec.fingerprint)

    def __len__(self) -> int:
        return len(self._sealed)

    @overload
    def __getitem__(self, i: int) -> WindowResult: ...

    @overload
    def __getitem__(self, i: slice) -> list[WindowResult]: ...

    def __getitem__(self, i: int | slice) -> WindowResult | list[WindowResult]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        res = self._built[i]
        if res is None:
            res = self._built[i] = self._build(i if i >= 0 else i + len(self))
        return res

    def __iter__(self) -> Iterator[WindowResult]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"<ClosedWindows {self.spec.id}: {len(self)} windows>"

    # -- column access (no per-window objects) ------------------------------------------

    @property
    def window_id(self) -> str:
        return self.spec.id

    def column(self, name: str) -> Any:
        """numpy array of aggregate `name` (float64, NaN = no value; "count" int64), or of
        "battery_min" (NaN = no reading carried a voltage)."""
        import numpy as np

        if name == "battery_min":
            return np.array([np.nan if b is None else b for b in self._values("battery_min")],
                            dtype=np.float64)
        if not self._sealed:
            return np.empty(0, dtype=np.int64 if name == "count" else np.float64)
        return self._cols[name]

    def keys(self) -> list[str]:
        return [s.key for s, *_ in self._sealed]

    def measurements(self) -> list[str]:
        return [s.measurement for s, *_ in self._sealed]

    def latest_readings(self) -> list[Reading]:
        """Per window, its series' latest reading when the window closed (unit, tags)."""
        return [item[5] for item in self._sealed]

    def tags(self, i: int) -> dict[str, str]:
        """Tags of window i: its series' latest reading's (per-device windows) or the
        grouping tags (tag-group windows)."""
        last = self._sealed[i][5]
        if "device_id" in self.spec.key_by:
            return last.tags
        return {name: str(getattr(last, name)) for name in self.spec.key_by}

    def closed_by(self) -> list[str]:
        return [item[3] for item in self._sealed]

    def due_ms(self) -> list[int | None]:
        """Per window, the processing time its close became due (None: flush/reload)."""
        return [item[4] for item in self._sealed]

    def events(self, start: int = 0, stop: int | None = None) -> list[Event]:
        """Aggregate events of windows [start, stop) — equal to `self[i].to_event()`, made
        straight from the columns (no `WindowResult` on the way)."""
        wid, kind, S, P, fingerprint = self._const
        rows = self._aggregate_rows()
        bmins = self._values("battery_min")
        by_device = "device_id" in self.spec.key_by
        sealed = self._sealed
        out = []
        for i in range(*slice(start, stop).indices(len(self))):
            s, k, panes, closed_by, _, last = sealed[i]
            begin = k * P
            key, measurement = s.key, s.measurement
            body = {"window": wid, "kind": kind, "size_ms": S, "slide_ms": P, "key": key,
                    "measurement": measurement, "unit": last.unit, "start_ms": begin,
                    "end_ms": begin + S, "aggregates": dict(rows[i]),
                    "late": sum(p.late for p in panes) if len(panes) != 1 else panes[0].late,
                    "closed_by": closed_by,
                    "tags": last.tags if by_device else self.tags(i),
                    "battery_min": bmins[i]}
            h = hashlib.blake2b(digest_size=16)
            h.update(f"aggregate\0{fingerprint}\0{key}\0{measurement}\0{begin}\0".encode())
            out.append(Event(kind="aggregate", key=h.digest(), ts_ms=begin, device_id=key,
                             body=body))
        return out

    # -- building WindowResults -----------------------------------------------------------

    def _values(self, name: str) -> list[Any]:
        got = self._lists.get(name)
        if got is None:
            if name == "battery_min":
                got = [_bmin(panes) for _, _, panes, _, _, _ in self._sealed]
            else:
                got = column_values(self._cols[name])
            self._lists[name] = got
        return got

    def _aggregate_rows(self) -> list[dict[str, Any]]:
        """Every window's aggregates as a dict (for building all of them)."""
        rows = self._rows
        if rows is None:
            columns = [self._values(name) for name in AGGREGATES]
            rows = self._rows = [dict(zip(AGGREGATES, row)) for row in zip(*columns)]
        return rows

    def _build(self, i: int) -> WindowResult:
        s, k, panes, closed_by, due, last = self._sealed[i]
        wid, kind, S, P, fingerprint = self._const
        if self._rows is not None:
            aggregates = dict(self._rows[i])
        else:  # one window (a rule acts on it): its row only
            aggregates = {name: self._values(name)[i] for name in AGGREGATES}
        return WindowResult(
            wid, kind, S, P, fingerprint, s.key, s.measurement, k * P, k * P + S,
            aggregates, sum(p.late for p in panes), closed_by, last.unit, self.tags(i),
            _bmin(panes), due)


def _bmin(panes: list[_Pane]) -> float | None:
    found = [p.bmin for p in panes if p.bmin is not None]
    return min(found) if found else None


class Chain(Sequence[WindowResult]):
    """Several sequences of windows as one, elements built only when accessed."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Sequence[WindowResult]] = ()) -> None:
        self.parts = [p for p in parts if len(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @overload
    def __getitem__(self, i: int) -> WindowResult: ...

    @overload
    def __getitem__(self, i: slice) -> list[WindowResult]: ...

    def __getitem__(self, i: int | slice) -> WindowResult | list[WindowResult]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        for p in self.parts:
            if i < len(p):
                return p[i]
            i -= len(p)
        raise IndexError("window index out of range")

    def __iter__(self) -> Iterator[WindowResult]:
        for p in self.parts:
            yield from p

    def __repr__(self) -> str:
        return f"<Chain of {len(self)} windows>"


def parts_of(windows: Sequence[WindowResult]) -> list[Sequence[WindowResult]]:
    """The sequences a (possibly chained) sequence of windows is made of."""
    return list(windows.parts) if isinstance(windows, Chain) else [windows]


def closed_by_counts(windows: Sequence[WindowResult]) -> dict[str, int]:
    """How many windows were closed by each cause, without building any `WindowResult`."""
    out: dict[str, int] = {}
    for part in parts_of(windows):
        causes = (part.closed_by() if isinstance(part, ClosedWindows)
                  else [r.closed_by for r in part])
        for cause in causes:
            out[cause] = out.get(cause, 0) + 1
    return out
