"""Window specifications: what a window is, independent of any data.

A `WindowSpec` describes one family of event-time windows:

* geometry — `size_ms` and `slide_ms`.  `slide_ms == size_ms` is a tumbling window; a smaller
  slide is a sliding (hopping) window.  `size_ms` must be a whole multiple of `slide_ms` so a
  window is an exact union of slide-sized *panes*; windows are aligned to the Unix epoch
  (window k covers `[k*slide, k*slide + size)`).
* grouping — `key_by`, the Reading fields whose values name a window's key: `("device_id",)`
  (the default: one series per device) or a tag group such as `("facility", "line")`.  The
  measurement is always part of a series' identity: a device's temperature and humidity are
  separate series.
* timing — `lateness_ms` (how far behind the newest event time a reading may arrive and still
  be merged) and `idle_timeout_ms` (how long, on the processing clock, a silent series waits
  past a window's end before that window is closed).  See `edge.windows.windower`.
* filters — `measurements` (None: every measurement) and `include_bad_quality`.

`fingerprint` names the geometry and grouping (not the timing knobs): it goes into every
aggregate's idempotency key, so two gateways or two restarts computing the same window of the
same series produce the same key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Reading fields a window may group by
KEY_FIELDS = ("device_id", "facility", "line", "zone")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def parse_duration_ms(value: object) -> int:
    """`"10s"`, `"500ms"`, `"5m"`, `"1h"`, `"1d"` or a bare number of seconds -> milliseconds.

    Raises ValueError with a human message for anything else (negative numbers included).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '10s', '500ms' or '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != value:
            raise ValueError(f"a duration must be >= 0, got {value!r}")
        return int(round(value * 1000))
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(round(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"]))
    raise ValueError(f"expected a duration like '10s', '500ms' or '5m', got {value!r}")


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling `parse_duration_ms` reads back (`10000` -> `"10s"`)."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One window family.  Raises ValueError naming the offending field when inconsistent."""

    id: str = "default"
    size_ms: int = 10_000
    #: None means tumbling (slide == size)
    slide_ms: int | None = None
    lateness_ms: int = 2_000
    idle_timeout_ms: int = 2_000
    key_by: tuple[str, ...] = ("device_id",)
    #: None: every measurement
    measurements: frozenset[str] | None = None
    include_bad_quality: bool = False
    #: a series silent this long (processing time) with no open window is forgotten
    forget_after_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ValueError(f"id: {self.id!r} must be 1-64 of A-Z a-z 0-9 _ . - "
                             "starting with a letter or digit")
        if self.size_ms <= 0:
            raise ValueError(f"size: must be > 0, got {self.size_ms} ms")
        if self.slide_ms is not None:
            if self.slide_ms <= 0:
                raise ValueError(f"slide: must be > 0, got {self.slide_ms} ms")
            if self.slide_ms > self.size_ms:
                raise ValueError(f"slide: {self.slide_ms} ms is longer than size "
                                 f"{self.size_ms} ms (windows would leave gaps)")
            if self.size_ms % self.slide_ms:
                raise ValueError(f"size: {self.size_ms} ms must be a whole multiple of slide "
                                 f"{self.slide_ms} ms")
        if self.lateness_ms < 0:
            raise ValueError(f"lateness: must be >= 0, got {self.lateness_ms} ms")
        if self.idle_timeout_ms < 0:
            raise ValueError(f"idle_timeout: must be >= 0, got {self.idle_timeout_ms} ms")
        if not self.key_by:
            raise ValueError("key_by: must name at least one field")
        for name in self.key_by:
            if name not in KEY_FIELDS:
                raise ValueError(f"key_by: unknown field {name!r} (expected some of "
                                 f"{', '.join(KEY_FIELDS)})")
        if len(set(self.key_by)) != len(self.key_by):
            raise ValueError("key_by: a field is named twice")
        if self.forget_after_ms < self.idle_timeout_ms:
            raise ValueError("forget_after: must be >= idle_timeout")

    @property
    def slide(self) -> int:
        return self.size_ms if self.slide_ms is None else self.slide_ms

    @property
    def kind(self) -> str:
        return "tumbling" if self.slide == self.size_ms else "sliding"

    @property
    def panes_per_window(self) -> int:
        return self.size_ms // self.slide

    @property
    def fingerprint(self) -> str:
        return f"{self.kind}:{self.size_ms}:{self.slide}:{','.join(self.key_by)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (snapshots compare it to decide whether window state still fits)."""
        return {
            "id": self.id, "size_ms": self.size_ms, "slide_ms": self.slide_ms,
            "lateness_ms": self.lateness_ms, "idle_timeout_ms": self.idle_timeout_ms,
            "key_by": list(self.key_by),
            "measurements": sorted(self.measurements) if self.measurements is not None else None,
            "include_bad_quality": self.include_bad_quality,
            "forget_after_ms": self.forget_after_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowSpec:
        """Inverse of `to_dict` (raises ValueError/TypeError/KeyError on a bad mapping)."""
        slide, measurements = data.get("slide_ms"), data.get("measurements")
        return cls(
            id=str(data["id"]), size_ms=int(data["size_ms"]),
            slide_ms=None if slide is None else int(slide),
            lateness_ms=int(data["lateness_ms"]), idle_timeout_ms=int(data["idle_timeout_ms"]),
            key_by=tuple(data["key_by"]),
            measurements=None if measurements is None else frozenset(measurements),
            include_bad_quality=bool(data["include_bad_quality"]),
            forget_after_ms=int(data["forget_after_ms"]))
