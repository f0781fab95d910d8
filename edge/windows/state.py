"""Window state for snapshots: a fast copy first, the compact state later.

`Windower.capture()` copies what a snapshot needs — per series its counters and its latest
reading (immutable), per open pane its counters and how many values it holds — into a few
flat arrays and lists, in about a µs per series and open pane (~70 ms for 10,000 devices
with the shipped window families), so the owner pauses for that and no longer.  The values themselves are not copied: a pane's arrays only ever grow
(readings are appended; a closed pane is never written again), so its first n values at
capture time stay what they were.  `to_state()` turns the capture into the state dict on any
thread, later (the gateway: on its store thread, next to the msgpack encoding; the GIL makes
reading an array while the loop appends to it safe).  `Windower.to_state()` is
`capture().to_state()`.

The state is columnar (layout 2): every number lives in one of five packed arrays (`bytes`,
native byte order, named in `byteorder`) rather than in a Python object of its own.  For
10,000 devices and the shipped window families that is ~11 MB of arrays where a dict per
series and a float object per value took ~85 MB, built and thrown away at every snapshot.
It is msgpack-safe (not JSON-safe: the arrays are `bytes`).

    keys, measurements        one entry per series
    tags                      per series [device_id, unit, facility, line, zone]
    series_ints  int64 x 4    per series: max_ts, next_k, last_arrival, late
    pane_ints    int64 x 4    per open pane: series index, pane index, values, late
    pane_bmin    float64      per open pane: lowest battery voltage, NaN for none
    ts, vals     int64/float  every open pane's values, pane after pane

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
from typing import TYPE_CHECKING, Any

from edge.model import Reading
from edge.windows.spec import WindowSpec

if TYPE_CHECKING:
    from edge.windows.windower import Windower, _Pane

LAYOUT = 2
_NAN = math.nan


@dataclass(frozen=True, slots=True)
class WindowerCapture:
    spec: WindowSpec
    counters: dict[str, int]
    keys: list[str]
    measurements: list[str]
    #: per series, a reading with its current unit and tags
    lasts: list[Reading]
    #: per series: max_ts, next_k, last_arrival, late
    series_ints: array
    #: per open pane (in capture order)
    panes: list[_Pane]
    #: per open pane: series index, pane index, value count, late
    pane_ints: array
    pane_bmin: array

    def to_state(self) -> dict[str, Any]:
        """The compact state of every series (open panes included); see the module doc."""
        ints = self.pane_ints
        # sized up front: growing two multi-megabyte arrays by appending would copy each
        # several times over
        total = sum(ints[2::4])
        ts, vals = array("q", [0]) * total, array("d", [0.0]) * total
        at = 0
        for pane, n in zip(self.panes, ints[2::4], strict=True):
            ts[at:at + n] = pane.ts[:n]
            vals[at:at + n] = pane.vals[:n]
            at += n
        return {
            "spec": self.spec.to_dict(), "counters": dict(self.counters), "layout": LAYOUT,
            "byteorder": sys.byteorder, "keys": list(self.keys),
            "measurements": list(self.measurements),
            "tags": [[r.device_id, r.unit, r.facility, r.line, r.zone] for r in self.lasts],
            "series_ints": self.series_ints.tobytes(), "pane_ints": ints.tobytes(),
            "pane_bmin": self.pane_bmin.tobytes(), "ts": ts.tobytes(), "vals": vals.tobytes(),
        }


def capture_windower(w: Windower) -> WindowerCapture:
    # runs on the owner's thread while everything waits: methods bound once, no object
    # made per pane (20,000 series with 60,000 open panes: ~50 ms)
    series = list(w._series.values())
    keys = [s.key for s in series]
    measurements = [s.measurement for s in series]
    lasts = [s.last for s in series]
    series_ints = array("q")
    panes: list[_Pane] = []
    pane_ints = array("q")
    pane_bmin = array("d")
    add_series, add_pane = series_ints.extend, panes.append
    add_pane_ints, add_bmin = pane_ints.extend, pane_bmin.append
    nan = _NAN
    for i, s in enumerate(series):
        add_series((s.max_ts, s.next_k, s.last_arrival, s.late))
        for p, pane in s.panes.items():
            add_pane(pane)
            add_pane_ints((i, p, len(pane.vals), pane.late))
            b = pane.bmin
            add_bmin(nan if b is None else b)
    return WindowerCapture(w.spec, dict(w.counters), keys, measurements, lasts, series_ints,
                           panes, pane_ints, pane_bmin)


def _array(kind: str, data: bytes, byteorder: str) -> array:
    out = array(kind)
    out.frombytes(data)
    if byteorder != sys.byteorder:
        out.byteswap()
    return out


def restore_windower(w: Windower, state: dict[str, Any], *, now_ms: int) -> Windower:
    """Fill the fresh windower `w` from `WindowerCapture.to_state()` output."""
    from edge.windows.windower import _Pane, _Series

    w.counters.update(state.get("counters", {}))
    if state.get("layout", 1) == 1:
        return _restore_layout_1(w, state, now_ms=now_ms)
    order = state["byteorder"]
    sints = _array("q", state["series_ints"], order)
    pints = _array("q", state["pane_ints"], order)
    bmins = _array("d", state["pane_bmin"], order)
    ts = _array("q", state["ts"], order)
    vals = _array("d", state["vals"], order)
    P, S, L = w.spec.slide, w.spec.size_ms, w.spec.lateness_ms
    pane_at, offset, n_panes = 0, 0, len(bmins)
    for i, (key, measurement, tags) in enumerate(
            zip(state["keys"], state["measurements"], state["tags"], strict=True)):
        max_ts, next_k, last_arrival, late = sints[4 * i:4 * i + 4]
        device_id, unit, facility, line, zone = tags
        r = Reading(device_id=device_id, ts_ms=max_ts, value=0.0, measurement=measurement,
                    unit=unit, facility=facility, line=line, zone=zone)
        s = _Series(key, measurement, r)
        s.max_ts, s.next_k, s.last_arrival, s.late = max_ts, next_k, last_arrival, late
        s.close_end = next_k * P + S
        while pane_at < n_panes and pints[4 * pane_at] == i:
            _, p, n, pane_late = pints[4 * pane_at:4 * pane_at + 4]
            pane = _Pane()
            pane.ts = ts[offset:offset + n]
            pane.vals = vals[offset:offset + n]
            pane.late = pane_late
            b = bmins[pane_at]
            pane.bmin = None if b != b else b
            s.panes[p] = pane
            offset += n
            pane_at += 1
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
    drop = [i for i, k in enumerate(state["keys"]) if k in keys]
    if not drop:
        return
    order = state["byteorder"]
    gone = set(drop)
    sints = _array("q", state["series_ints"], order)
    pints = _array("q", state["pane_ints"], order)
    bmins = _array("d", state["pane_bmin"], order)
    ts = _array("q", state["ts"], order)
    vals = _array("d", state["vals"], order)
    renumber: dict[int, int] = {}
    kept_sints = array("q")
    for i in range(len(state["keys"])):
        if i not in gone:
            renumber[i] = len(renumber)
            kept_sints.extend(sints[4 * i:4 * i + 4])
    kept_pints, kept_bmin, kept_ts, kept_vals = array("q"), array("d"), array("q"), array("d")
    offset = 0
    for j in range(len(bmins)):
        i, p, n, late = pints[4 * j:4 * j + 4]
        if i not in gone:
            kept_pints.extend((renumber[i], p, n, late))
            kept_bmin.append(bmins[j])
            kept_ts.extend(ts[offset:offset + n])
            kept_vals.extend(vals[offset:offset + n])
        offset += n
    for name in ("keys", "measurements", "tags"):
        state[name] = [v for i, v in enumerate(state[name]) if i not in gone]
    for name, arr in (("series_ints", kept_sints), ("pane_ints", kept_pints),
                      ("pane_bmin", kept_bmin), ("ts", kept_ts), ("vals", kept_vals)):
        if order != sys.byteorder:
            arr.byteswap()
        state[name] = arr.tobytes()
