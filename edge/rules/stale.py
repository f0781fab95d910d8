"""Last-seen tracking for stale-sensor rules.

Per stale rule, every device it matches is either *seen* (ordered by the processing time its
last reading arrived, oldest first, so finding the newly silent ones costs only the number of
them) or *silent* (its stale alert fired and it has not reported since).  Only devices that
have reported at least once since tracking began (or before a restore) are known; a device
that never reports is not flagged.

Per reading this costs one dict update and one `move_to_end`; `advance` looks at the oldest
entries only.  Arrival times must be non-decreasing per rule for the ordering to hold (the
engine passes its processing clock); an out-of-order arrival only delays detection.  Of the
readings themselves only measurement and tags are needed (for a stale alert's message and
scope): a device's reading is kept only when those change, so the readings of 10,000
devices a second are freed as soon as they are filed, not a second later.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from edge.model import Reading

#: (arrival ms, last reading) of one device
Seen = tuple[int, Reading]


def _same_scope(a: Reading, b: Reading) -> bool:
    return (a.measurement == b.measurement and a.facility == b.facility and a.line == b.line
            and a.zone == b.zone)


class StaleTracker:
    def __init__(self) -> None:
        #: per rule: device -> arrival of its last reading, oldest first
        self._seen: dict[str, OrderedDict[str, int]] = {}
        #: per rule: device -> a reading with its current measurement and tags
        self._readings: dict[str, dict[str, Reading]] = {}
        self._silent: dict[str, dict[str, Seen]] = {}

    def track(self, rule_id: str) -> None:
        self._seen.setdefault(rule_id, OrderedDict())
        self._readings.setdefault(rule_id, {})
        self._silent.setdefault(rule_id, {})

    def rules(self) -> list[str]:
        return list(self._seen)

    def saw(self, rule_id: str, r: Reading, arrival_ms: int) -> Seen | None:
        """Record a reading.  Returns the device's previous entry if it had been silent."""
        dev = r.device_id
        seen = self._seen[rule_id]
        seen[dev] = arrival_ms
        seen.move_to_end(dev)
        readings = self._readings[rule_id]
        known = readings.get(dev)
        if known is None or not _same_scope(known, r):
            readings[dev] = r
        silent = self._silent[rule_id]
        return silent.pop(dev, None) if silent else None

    def newly_silent(self, rule_id: str, horizon_ms: int) -> list[tuple[str, Seen]]:
        """Devices whose last reading arrived at or before `horizon_ms`; now silent."""
        seen = self._seen[rule_id]
        readings = self._readings[rule_id]
        silent = self._silent[rule_id]
        out = []
        while seen:
            dev = next(iter(seen))
            arrival = seen[dev]
            if arrival > horizon_ms:
                break
            del seen[dev]
            entry = silent[dev] = (arrival, readings.pop(dev))
            out.append((dev, entry))
        return out

    def forget_silent(self, rule_id: str, dev: str) -> None:
        self._silent.get(rule_id, {}).pop(dev, None)

    def drop(self, rule_id: str) -> None:
        self._seen.pop(rule_id, None)
        self._readings.pop(rule_id, None)
        self._silent.pop(rule_id, None)

    def keep_seen(self, rule_id: str, keep: Callable[[str, Reading], bool]) -> None:
        seen = self._seen[rule_id]
        readings = self._readings[rule_id]
        for dev in [d for d in seen if not keep(d, readings[d])]:
            del seen[dev]
            del readings[dev]

    # -- persistence ---------------------------------------------------------------------

    @staticmethod
    def entry_state(entry: Seen) -> list[Any]:
        arrival, r = entry
        return [arrival, r.measurement, r.facility, r.line, r.zone]

    def copy_entries(self) -> dict[str, tuple[dict[str, int], dict[str, Reading],
                                              dict[str, Seen]]]:
        """Per rule, (seen arrivals, their readings, silent) copied, in a few dict copies —
        the readings and silent entries are immutable (`state_of` makes the JSON form)."""
        return {rid: (dict(seen), dict(self._readings[rid]), dict(self._silent[rid]))
                for rid, seen in self._seen.items()}

    @classmethod
    def state_of(cls, copies: dict[str, tuple[dict[str, int], dict[str, Reading],
                                              dict[str, Seen]]]) -> dict[str, Any]:
        """The JSON-safe state of `copy_entries()`."""
        entry = cls.entry_state
        return {rid: {"seen": {d: entry((a, readings[d])) for d, a in seen.items()},
                      "silent": {d: entry(e) for d, e in silent.items()}}
                for rid, (seen, readings, silent) in copies.items()}

    @staticmethod
    def _reading(dev: str, item: list[Any]) -> Seen:
        arrival, measurement, facility, line, zone = item
        return arrival, Reading(device_id=dev, ts_ms=arrival, value=0.0,
                                measurement=measurement, facility=facility, line=line,
                                zone=zone)

    def to_state(self) -> dict[str, Any]:
        return self.state_of(self.copy_entries())

    @classmethod
    def from_state(cls, state: dict[str, Any], *, now_ms: int) -> StaleTracker:
        """Rebuild; seen devices get `now_ms` as their arrival at the latest, so the time the
        gateway itself was down does not count as every device being silent."""
        tracker = cls()
        for rid, item in state.items():
            seen: OrderedDict[str, int] = OrderedDict()
            readings: dict[str, Reading] = {}
            for dev, e in sorted(item["seen"].items(), key=lambda kv: kv[1][0]):
                arrival, readings[dev] = cls._reading(dev, e)
                seen[dev] = max(arrival, now_ms)
            tracker._seen[rid] = seen
            tracker._readings[rid] = readings
            tracker._silent[rid] = {dev: cls._reading(dev, e)
                                    for dev, e in item["silent"].items()}
        return tracker
