"""Compiled rules: what `load_rules` produces and `AlertEngine` evaluates.

A `RuleSet` is immutable: window specs by id, and rules in file order.  Each `Rule` carries
its kind and only the fields that kind uses:

=================  ======================================  =================================
kind               evaluated                               value tested by `fire`/`clear`
=================  ======================================  =================================
threshold          on each closed window it matches        the named window aggregate
rate_of_change     on each closed window it matches        abs(rate), per second
low_battery        per reading (source=last) or per        battery voltage (last reading's,
                   closed window (source=window_min)       or the window's minimum)
stale              on `advance(now)`                       seconds since the device's last
                                                           reading (fires at `after`)
buffer_fill        on `advance(now, gateway_status)`       buffer fill, percent
uplink_down        on `advance(now, gateway_status)`       seconds the uplink has been down
=================  ======================================  =================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from edge.rules.condition import Condition
from edge.rules.template import Template
from edge.windows import AGGREGATES, WindowResult, WindowSpec

SEVERITIES = ("info", "warning", "critical")
RULE_KINDS = ("threshold", "rate_of_change", "low_battery", "stale", "buffer_fill",
              "uplink_down")
WINDOW_KINDS = frozenset({"threshold", "rate_of_change"})
GATEWAY_KINDS = frozenset({"buffer_fill", "uplink_down"})

# -- placeholder names each kind's message may use, with their types --------------------------
COMMON_NAMES: dict[str, type] = {"rule_id": str, "device_id": str, "severity": str}
WINDOW_NAMES: dict[str, type] = {
    **COMMON_NAMES, "key": str, "measurement": str, "unit": str, "window": str,
    "start": str, "end": str, "start_ms": int, "end_ms": int, "value": float,
    "threshold": float, "facility": str, "line": str, "zone": str,
    **{name: (int if name == "count" else float) for name in AGGREGATES},
}
STALE_NAMES: dict[str, type] = {**COMMON_NAMES, "last_seen": str, "last_seen_ms": int,
                                "silent_s": float, "after_s": float, "measurement": str,
                                "facility": str, "line": str, "zone": str}
BATTERY_NAMES: dict[str, type] = {**COMMON_NAMES, "voltage": float, "threshold": float,
                                  "measurement": str, "facility": str, "line": str,
                                  "zone": str}
BATTERY_WINDOW_NAMES: dict[str, type] = {**WINDOW_NAMES, "voltage": float}
BUFFER_NAMES: dict[str, type] = {**COMMON_NAMES, "fill_percent": float, "threshold": float}
UPLINK_NAMES: dict[str, type] = {**COMMON_NAMES, "down_since": str, "down_s": float,
                                 "after_s": float}

DEFAULT_MESSAGES = {
    "threshold": "{device_id} {measurement} {value} (condition {condition}) in window {start}",
    "rate_of_change": "{device_id} {measurement} changing at {rate:.3g} {unit}/s in window "
                      "{start}",
    "low_battery": "{device_id} battery at {voltage:.2f} V (below {threshold:.2f} V)",
    "stale": "{device_id} silent for {silent_s:.0f} s (last reading {last_seen})",
    "buffer_fill": "{device_id} buffer {fill_percent:.0f}% full",
    "uplink_down": "{device_id} uplink down for {down_s:.0f} s (since {down_since})",
}


def names_for(kind: str, source: str = "last") -> dict[str, type]:
    if kind in WINDOW_KINDS:
        names = dict(WINDOW_NAMES)
        if kind == "threshold":
            names["condition"] = str
        return names
    if kind == "low_battery":
        return BATTERY_WINDOW_NAMES if source == "window_min" else BATTERY_NAMES
    return {"stale": STALE_NAMES, "buffer_fill": BUFFER_NAMES,
            "uplink_down": UPLINK_NAMES}[kind]


@dataclass(frozen=True, slots=True)
class Matcher:
    """Which series a rule applies to: device (or window key) glob, measurement, tag globs.

    A tag glob matches only when the tag is present.  Globs are `fnmatch`, case-sensitive.
    """

    device: str = "*"
    measurement: str | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def matches(self, device: str, measurement: str | None,
                tags: Mapping[str, str]) -> bool:
        if self.measurement is not None and measurement != self.measurement:
            return False
        if self.device != "*" and not fnmatchcase(device, self.device):
            return False
        for name, glob in self.tags:
            value = tags.get(name)
            if value is None or not fnmatchcase(value, glob):
                return False
        return True


@dataclass(frozen=True, eq=False)
class Rule:
    id: str
    kind: str
    severity: str
    message: Template
    #: re-notify a still-firing, unacknowledged alert this often; 0 = never
    cooldown_ms: int = 0
    matcher: Matcher = field(default_factory=Matcher)
    #: window id (window kinds, and low_battery with source=window_min)
    window: str | None = None
    fire: Condition | None = None
    clear: Condition | None = None
    #: stale / uplink_down: how long before it fires
    after_ms: int = 0
    #: low_battery: "last" (each reading) or "window_min"
    source: str = "last"
    #: the rule as written, normalised — equal configs give equal `config`
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def on_windows(self) -> bool:
        return self.kind in WINDOW_KINDS or (self.kind == "low_battery"
                                             and self.source == "window_min")

    @property
    def on_readings(self) -> bool:
        return self.kind == "stale" or (self.kind == "low_battery" and self.source == "last")

    @property
    def on_gateway(self) -> bool:
        return self.kind in GATEWAY_KINDS

    def window_value(self, res: WindowResult) -> float | None:
        """The number `fire`/`clear` test for a closed window."""
        if self.kind == "rate_of_change":
            rate = res.aggregates.get("rate")
            return None if rate is None else abs(rate)
        if self.kind == "low_battery":
            return res.battery_min
        assert self.fire is not None
        value = res.aggregates.get(self.fire.name)
        return None if value is None else float(value)


@dataclass(frozen=True)
class RuleSet:
    """Window specs and rules, validated.  Build with `load_rules` / `parse_rules`."""

    windows: Mapping[str, WindowSpec]
    rules: tuple[Rule, ...] = ()
    file: str = "<rules>"

    def rule(self, rule_id: str) -> Rule | None:
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)
