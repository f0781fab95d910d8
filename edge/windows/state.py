"""Window state for snapshots: a fast copy first, the JSON-safe form later.

`Windower.capture()` copies what a snapshot needs — per series its counters and its latest
reading (immutable), per open pane its counters and how many values it holds — in about a
µs per series, so the owner can take it without pausing anything for long.  The values
themselves are not copied: a pane's arrays only ever grow (readings are appended; a closed
pane is never written again), so its first n values at capture time stay what they were.
`to_state()` turns the capture into the JSON-safe dict on any thread, later (the gateway:
on its store thread, next to the msgpack encoding; the GIL makes reading an array while the
loop appends to it safe).  `Windower.to_state()` is `capture().to_state()`.

`restore_windower` is the inverse (`Windower.from_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.model import Reading
from edge.windows.spec import WindowSpec

if TYPE_CHECKING:
    from edge.windows.windower import Windower, _Pane

#: (pane index, the pane, its value count then, late count, lowest battery voltage)
PaneCopy = tuple[int, "_Pane", int, int, "float | None"]
#: (key, measurement, max_ts, next_k, last_arrival, late, latest reading, panes in order)
SeriesCopy = tuple[str, str, int, int, int, int, Reading, list[PaneCopy]]


@dataclass(frozen=True, slots=True)
class WindowerCapture:
    spec: WindowSpec
    counters: dict[str, int]
    series: list[SeriesCopy]

    def to_state(self) -> dict[str, Any]:
        """JSON-safe state of every series (open panes included)."""
        series = []
        for key, measurement, max_ts, next_k, last_arrival, late, r, panes in self.series:
            series.append({
                "key": key, "measurement": measurement, "max_ts": max_ts, "next_k": next_k,
                "last_arrival": last_arrival, "late": late,
                "last": {"device_id": r.device_id, "unit": r.unit, "facility": r.facility,
                         "line": r.line, "zone": r.zone},
                "panes": [[p, pane.ts[:n].tolist(), pane.vals[:n].tolist(), pane_late, bmin]
                          for p, pane, n, pane_late, bmin in sorted(panes, key=_first)],
            })
        return {"spec": self.spec.to_dict(), "counters": dict(self.counters),
                "series": series}


def _first(item: PaneCopy) -> int:
    return item[0]


def restore_windower(w: Windower, state: dict[str, Any], *, now_ms: int) -> Windower:
    """Fill the fresh windower `w` from `WindowerCapture.to_state()` output."""
    from edge.windows.windower import _Pane, _Series

    w.counters.update(state.get("counters", {}))
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
