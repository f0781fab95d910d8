"""Window state for snapshots: a fast copy first, the compact state later.

`Windower.capture()` copies what a snapshot needs — per series its counters and its latest
reading (immutable), per open pane its counters and how many values it holds — into one
array or list per column, each filled by a C-level iteration (`map`/`attrgetter`, no Python
code per series or pane): about a µs per open pane, ~60 ms for 10,000 devices with the
shipped window families, which is all the owner waits for.  The values themselves are not
copied: a pane's arrays only ever grow (readings are appended; a closed pane is never written
again), so its first n values at capture time stay what they were.  `to_state()` turns the
capture into the state dict on any thread, later (the gateway: on its store thread, next to
the msgpack encoding; the GIL makes reading an array while the loop appends to it safe).
`Windower.to_state()` is `capture().to_state()`.

The state is columnar (layout 2): every number lives in a packed array (`bytes`, native byte
order, named in `byteorder`), one per column, rather than in a Python object of its own.  For
10,000 devices and the shipped window families that is ~11 MB of arrays where a dict per
series and a float object per value took ~85 MB, built and thrown away at every snapshot.
It is msgpack-safe (not JSON-safe: the arrays are `bytes`).

    keys, measurements, tags        per series (lists; tags: [device_id, unit, facility,
                                    line, zone])
    max_ts, next_k, last_arrival,   per series (int64)
    late
    pane_series, pane_index,        per open pane: its series' position, pane index, value
    pane_count, pane_late           count, late readings merged (int64)
    pane_bmin                       per open pane: lowest battery voltage, NaN for none
    ts, vals                        every open pane's values, pane after pane (int64, float64)

Panes are listed series after series (in series order), each series' panes in the order
its pane table holds them.  `restore_windower` is the inverse
(`Windower.from_state`); it also reads layout 1 (a dict per series, lists of values), which
snapshots saved before layout 2 hold.  `drop_series` removes series by key from either.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Collection
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from edge.model import Reading
from edge.windows.spec import WindowSpec

if TYPE_CHECKING:
    from edge.windows.windower import Windower, _Pane

LAYOUT = 2
_NAN = math.nan
#: the int64 columns per series and per open pane, as the state names them
SERIES_COLUMNS = ("max_ts", "next_k", "last_arrival", "late")
PANE_COLUMNS = ("pane_series", "pane_index", "pane_count", "pane_late")
#: every packed column: name -> array type code
_PACKED = {**dict.fromkeys(SERIES_COLUMNS + PANE_COLUMNS, "q"), "pane_bmin": "d", "ts": "q",
           "vals": "d"}


@dataclass(frozen=True, slots=True)
class WindowerCapture:
    spec: WindowSpec
    counters: dict[str, int]
    keys: list[str]
    measurements: list[str]
    #: per series, a reading with its current unit and tags
    lasts: list[Reading]
    #: SERIES_COLUMNS and PANE_COLUMNS, and "pane_bmin"
    columns: dict[str, array]
    #: per open pane (in capture order)
    panes: list[_Pane]

    def to_state(self) -> dict[str, Any]:
        """The compact state of every series (open panes included); see the module doc."""
        counts = self.columns["pane_count"]
        # sized up front: growing two multi-megabyte arrays by appending would copy each
        # several times over
        total = sum(counts)
        ts, vals = array("q", [0]) * total, array("d", [0.0]) * total
        at = 0
        for pane, n in zip(self.panes, counts, strict=True):
            ts[at:at + n] = pane.ts[:n]
            vals[at:at + n] = pane.vals[:n]
            at += n
        state: dict[str, Any] = {
            "spec": self.spec.to_dict(), "counters": dict(self.counters), "layout": LAYOUT,
            "byteorder": sys.byteorder, "keys": list(self.keys),
            "measurements": list(self.measurements),
            "tags": [[r.device_id, r.unit, r.facility, r.line, r.zone] for r in self.lasts]}
        for name, column in self.columns.items():
            state[name] = column.tobytes()
        state["ts"], state["vals"] = ts.tobytes(), vals.tobytes()
        return state


def capture_windower(w: Windower) -> WindowerCapture:
    series = list(w._series.values())
    columns = {name: array("q", map(attrgetter(name), series)) for name in SERIES_COLUMNS}
    pane_tables = list(map(attrgetter("panes"), series))
    # one dict, iterated twice with nothing in between: keys and values line up
    columns["pane_series"] = array("q", chain.from_iterable(
        map(repeat, range(len(series)), map(len, pane_tables))))
    columns["pane_index"] = array("q", chain.from_iterable(pane_tables))
    panes: list[_Pane] = list(chain.from_iterable(map(dict.values, pane_tables)))
    columns["pane_count"] = array("q", map(len, map(attrgetter("vals"), panes)))
    columns["pane_late"] = array("q", map(attrgetter("late"), panes))
    columns["pane_bmin"] = array("d", [_NAN if b is None else b
                                       for b in map(attrgetter("bmin"), panes)])
    return WindowerCapture(w.spec, dict(w.counters), list(map(attrgetter("key"), series)),
                           list(map(attrgetter("measurement"), series)),
                           list(map(attrgetter("last"), series)), columns, panes)


def _unpack(state: dict[str, Any]) -> dict[str, array]:
    out = {}
    for name, kind in _PACKED.items():
        column = array(kind)
        column.frombytes(state[name])
        if state["byteorder"] != sys.byteorder:
            column.byteswap()
        out[name] = column
    return out


def restore_windower(w: Windower, state: dict[str, Any], *, now_ms: int) -> Windower:
    """Fill the fresh windower `w` from `WindowerCapture.to_state()` output."""
    from edge.windows.windower import _Pane, _Series

    w.counters.update(state.get("counters", {}))
    if state.get("layout", 1) == 1:
        return _restore_layout_1(w, state, now_ms=now_ms)
    c = _unpack(state)
    pane_series, pane_index, pane_count, pane_late = (c[name] for name in PANE_COLUMNS)
    bmins, ts, vals = c["pane_bmin"], c["ts"], c["vals"]
    P, S, L = w.spec.slide, w.spec.size_ms, w.spec.lateness_ms
    j, offset, n_panes = 0, 0, len(pane_series)
    for i, (key, measurement, tags, max_ts, next_k, last_arrival, late) in enumerate(zip(
            state["keys"], state["measurements"], state["tags"], c["max_ts"], c["next_k"],
            c["last_arrival"], c["late"], strict=True)):
        device_id, unit, facility, line, zone = tags
        r = Reading(device_id=device_id, ts_ms=max_ts, value=0.0, measurement=measurement,
                    unit=unit, facility=facility, line=line, zone=zone)
        s = _Series(key, measurement, r)
        s.max_ts, s.next_k, s.last_arrival, s.late = max_ts, next_k, last_arrival, late
        s.close_end = next_k * P + S
        while j < n_panes and pane_series[j] == i:
            n = pane_count[j]
            pane = _Pane()
            pane.ts = ts[offset:offset + n]
            pane.vals = vals[offset:offset + n]
            pane.late = pane_late[j]
            b = bmins[j]
            pane.bmin = None if b != b else b
            s.panes[pane_index[j]] = pane
            offset += n
            j += 1
        w.adopt(s, due=s.max_ts - L >= s.close_end, now_ms=now_ms)
    return w


def _restore_layout_1(w: Windower, state: dict[str, Any], *, now_ms: int) -> Windower:
    from edge.windows.windower import _Pane, _Series

    P, S, L = w.spec.slide, w.spec.size_ms, w.spec.lateness_ms
    for item in state["series"]:
        last = item["last"]
        r = Reading(device_id=last["device_id"], ts_ms=item["max_ts"], value=0.0,
                    measurement=item["measurement"], unit=last["unit"],
                    facility=last["facility"], line=last["line"], zone=last["zone"])
        s = _Series(item["key"], item["measurement"], r)
        s.max_ts = item["max_ts"]
        s.next_k = item["next_k"]
        s.close_end = s.next_k * P + S
        s.last_arrival = item["last_arrival"]
        s.late = item["late"]
        for p, ts, vals, late, bmin in item["panes"]:
            pane = _Pane()
            pane.ts.extend(ts)
            pane.vals.extend(float(v) for v in vals)
            pane.late = late
            pane.bmin = bmin
            s.panes[p] = pane
        w.adopt(s, due=s.max_ts - L >= s.close_end, now_ms=now_ms)
    return w


def drop_series(state: dict[str, Any], keys: Collection[str]) -> None:
    """Remove, in place, every series whose window key is in `keys` (either layout)."""
    if state.get("layout", 1) == 1:
        state["series"] = [s for s in state.get("series", []) if s.get("key") not in keys]
        return
    keep = [k not in keys for k in state["keys"]]
    if all(keep):
        return
    c = _unpack(state)  # native byte order from here on
    out: dict[str, array] = {name: array(kind) for name, kind in _PACKED.items()}
    position: dict[int, int] = {}  # old series index -> new, for the series kept
    for i, kept in enumerate(keep):
        if kept:
            position[i] = len(position)
            for name in SERIES_COLUMNS:
                out[name].append(c[name][i])
    offset = 0
    for j, i in enumerate(c["pane_series"]):
        n = c["pane_count"][j]
        if keep[i]:
            out["pane_series"].append(position[i])
            for name in ("pane_index", "pane_count", "pane_late", "pane_bmin"):
                out[name].append(c[name][j])
            out["ts"].extend(c["ts"][offset:offset + n])
            out["vals"].extend(c["vals"][offset:offset + n])
        offset += n
    for name in ("keys", "measurements", "tags"):
        state[name] = [v for v, kept in zip(state[name], keep, strict=True) if kept]
    for name, column in out.items():
        state[name] = column.tobytes()
    state["byteorder"] = sys.byteorder
