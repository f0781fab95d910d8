"""What the windows hand out: closed windows (`WindowResult`) and readings they refused (`Late`).

Aggregate event body (`WindowResult.to_event().body`, JSON/msgpack-safe)::

    {"window": "w10s", "kind": "tumbling", "size_ms": 10000, "slide_ms": 10000,
     "key": "sensor-7", "measurement": "temperature", "unit": "C",
     "start_ms": ..., "end_ms": ...,              # [start, end) in event time
     "aggregates": {"count": 10, "min": ..., "max": ..., "mean": ..., "p50": ..., "p95": ...,
                    "p99": ..., "stddev": ..., "first": ..., "last": ..., "rate": ...},
     "late": 0,                                   # out-of-order readings merged in
     "closed_by": "watermark",                    # | "idle" | "flush" | "reload"
     "tags": {"facility": ..., "line": ..., "zone": ...},   # those that are set
     "battery_min": 3.61}                         # or None when no reading carried one

`due_ms` (not in the body) is when the window's close became due on the gateway's clock.

The event's `device_id` is the window key (the device id for per-device windows, e.g.
`facility=f1,line=2` for tag groups), `ts_ms` is the window start, and `key` is a stable
16-byte hash of (window geometry, key, measurement, start): the same window computed twice —
after a restart, or on a replayed buffer — has the same idempotency key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from edge.model import Event, Reading


@dataclass(frozen=True, slots=True)
class WindowResult:
    window: str
    kind: str
    size_ms: int
    slide_ms: int
    fingerprint: str
    key: str
    measurement: str
    start_ms: int
    end_ms: int
    aggregates: dict[str, Any]
    #: out-of-order readings (event time behind the series' newest) merged into this window
    late: int = 0
    closed_by: str = "watermark"
    unit: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    battery_min: float | None = None
    #: processing time the close became due (the arrival of the reading that moved the
    #: watermark past the end, or the idle deadline); None for flush/reload closes.  Not part
    #: of the event body: it is the gateway's latency bookkeeping, not the window's data.
    due_ms: int | None = field(default=None, compare=False)

    @property
    def count(self) -> int:
        return int(self.aggregates["count"])

    def event_key(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(b"aggregate\0")
        for part in (self.fingerprint, self.key, self.measurement, str(self.start_ms)):
            h.update(part.encode())
            h.update(b"\0")
        return h.digest()

    def to_body(self) -> dict[str, Any]:
        return {
            "window": self.window, "kind": self.kind, "size_ms": self.size_ms,
            "slide_ms": self.slide_ms, "key": self.key, "measurement": self.measurement,
            "unit": self.unit, "start_ms": self.start_ms, "end_ms": self.end_ms,
            "aggregates": dict(self.aggregates), "late": self.late,
            "closed_by": self.closed_by, "tags": dict(self.tags),
            "battery_min": self.battery_min,
        }

    def to_event(self) -> Event:
        return Event(kind="aggregate", key=self.event_key(), ts_ms=self.start_ms,
                     device_id=self.key, body=self.to_body())


@dataclass(frozen=True, slots=True)
class Late:
    """A reading a window family did not absorb, and why.

    `reason` is "late" (every window it belongs to had already closed: beyond the allowed
    lateness, or after its series went idle), "missing_key" (it lacks a tag the window groups
    by) or "bad_quality" (quality "bad" and the window excludes those).  The reading itself is
    untouched — it is still stored and uplinked raw; only this window family skipped it.
    """

    reading: Reading
    window: str
    key: str
    reason: str
