"""Last-seen tracking for stale-sensor rules.

Per stale rule, every device it matches is either *seen* (ordered by the processing time its
last reading arrived, oldest first, so finding the newly silent ones costs only the number of
them) or *silent* (its stale alert fired and it has not reported since).  Only devices that
have reported at least once since tracking began (or before a restore) are known; a device
that never reports is not flagged.

Per reading this costs one dict update and one `move_to_end`; `advance` looks at the oldest
entries only.  Arrival times must be non-decreasing per rule for the ordering to hold (the
engine passes its processing clock); an out-of-order arrival only delays detection.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from edge.model import Reading

#: (arrival ms, last reading) of one device
Seen = tuple[int, Reading]


class StaleTracker:
    def __init__(self) -> None:
        self._seen: dict[str, OrderedDict[str, Seen]] = {}
        self._silent: dict[str, dict[str, Seen]] = {}

    def track(self, rule_id: str) -> None:
        self._seen.setdefault(rule_id, OrderedDict())
        self._silent.setdefault(rule_id, {})

    def rules(self) -> list[str]:
        return list(self._seen)

    def saw(self, rule_id: str, r: Reading, arrival_ms: int) -> Seen | None:
        """Record a reading.  Returns the device's previous entry if it had been silent."""
        dev = r.device_id
        seen = self._seen[rule_id]
        seen[dev] = (arrival_ms, r)
        seen.move_to_end(dev)
        silent = self._silent[rule_id]
        return silent.pop(dev, None) if silent else None

    def newly_silent(self, rule_id: str, horizon_ms: int) -> list[tuple[str, Seen]]:
        """Devices whose last reading arrived at or before `horizon_ms`; now silent."""
        seen = self._seen[rule_id]
        silent = self._silent[rule_id]
        out = []
        while seen:
            dev = next(iter(seen))
            entry = seen[dev]
            if entry[0] > horizon_ms:
                break
            del seen[dev]
            silent[dev] = entry
            out.append((dev, entry))
        return out

    def forget_silent(self, rule_id: str, dev: str) -> None:
        self._silent.get(rule_id, {}).pop(dev, None)

    def drop(self, rule_id: str) -> None:
        self._seen.pop(rule_id, None)
        self._silent.pop(rule_id, None)

    def keep_seen(self, rule_id: str, keep: Callable[[str, Reading], bool]) -> None:
        seen = self._seen[rule_id]
        for dev in [d for d, (_, r) in seen.items() if not keep(d, r)]:
            del seen[dev]

    # -- persistence ---------------------------------------------------------------------

    @staticmethod
    def entry_state(entry: Seen) -> list[Any]:
        arrival, r = entry
        return [arrival, r.measurement, r.facility, r.line, r.zone]

    def copy_entries(self) -> dict[str, tuple[dict[str, Seen], dict[str, Seen]]]:
        """Per rule, (seen, silent) copied — the entries themselves are immutable."""
        return {rid: (dict(seen), dict(self._silent[rid])) for rid, seen in self._seen.items()}

    @staticmethod
    def _reading(dev: str, item: list[Any]) -> Seen:
        arrival, measurement, facility, line, zone = item
        return arrival, Reading(device_id=dev, ts_ms=arrival, value=0.0,
                                measurement=measurement, facility=facility, line=line,
                                zone=zone)

    def to_state(self) -> dict[str, Any]:
        return {rid: {"seen": {d: self.entry_state(e) for d, e in seen.items()},
                      "silent": {d: self.entry_state(e) for d, e in self._silent[rid].items()}}
                for rid, seen in self._seen.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, now_ms: int) -> StaleTracker:
        """Rebuild; seen devices get `now_ms` as their arrival at the latest, so the time the
        gateway itself was down does not count as every device being silent."""
        tracker = cls()
        for rid, item in state.items():
            seen: OrderedDict[str, Seen] = OrderedDict()
            for dev, e in sorted(item["seen"].items(), key=lambda kv: kv[1][0]):
                arrival, r = cls._reading(dev, e)
                seen[dev] = (max(arrival, now_ms), r)
            tracker._seen[rid] = seen
            tracker._silent[rid] = {dev: cls._reading(dev, e)
                                    for dev, e in item["silent"].items()}
        return tracker
