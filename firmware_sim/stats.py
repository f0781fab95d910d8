"""Counters and latency percentiles of a simulated run — pure, fixed memory.

`LatencyHistogram` keeps log-spaced buckets (≈1 % wide) from 1 µs to ~1 h, so percentiles
of millions of acknowledgements cost a few kilobytes and are accurate to about 1 %.

`RunStats` is what the fleet counts while it runs; `summary()` is the dictionary printed by
`fieldlink sim run --json` (keys documented in docs/simulator.md).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_BUCKETS_PER_DECADE = 230  # 10 ** (1/230) ≈ 1.0101: ≈1 % resolution
_MIN_MS = 0.001
_DECADES = 10
_INV_MIN_MS = 1.0 / _MIN_MS
_LAST = _BUCKETS_PER_DECADE * _DECADES


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS_PER_DECADE * _DECADES + 1)
        self.n = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        if ms <= _MIN_MS:
            i = 0
        else:
            i = int(math.log10(ms * _INV_MIN_MS) * _BUCKETS_PER_DECADE) + 1
            if i > _LAST:
                i = _LAST
        self.counts[i] += 1
        self.n += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0 < p <= 100) in ms, or None when empty."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(self.n * p / 100.0))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                if i == 0:
                    return _MIN_MS
                # the bucket's geometric middle, never above the true maximum
                lo = _MIN_MS * 10 ** ((i - 1) / _BUCKETS_PER_DECADE)
                hi = _MIN_MS * 10 ** (i / _BUCKETS_PER_DECADE)
                return min(math.sqrt(lo * hi), self.max_ms)
        return self.max_ms


@dataclass
class RunStats:
    devices: int = 0
    connected: int = 0
    #: readings generated (every one is sent, queued or counted as failed)
    generated: int = 0
    sent: int = 0
    acknowledged: int = 0
    #: sent on a transport with no acknowledgement (QoS 0, non-confirmable, serial)
    unconfirmed: int = 0
    retransmitted: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: how far the scheduler fell behind the devices' tick times (s)
    max_lag_s: float = 0.0
    duration_s: float = 0.0
    connect_phase_s: float = 0.0
    #: process CPU (all threads) and wall time from the first tick to the end of the drain
    cpu_s: float | None = None
    cpu_wall_s: float | None = None

    def summary(self) -> dict[str, Any]:
        lat = self.latency
        pct = {name: _round(lat.percentile(p)) for name, p in
               (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))}
        rate = self.sent / self.duration_s if self.duration_s > 0 else 0.0
        out: dict[str, Any] = {
            "devices": self.devices,
            "connected": self.connected,
            "duration_s": round(self.duration_s, 3),
            "connect_phase_s": round(self.connect_phase_s, 3),
            "generated": self.generated,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "unconfirmed": self.unconfirmed,
            "retransmitted": self.retransmitted,
            "failed": dict(sorted(self.failed.items())),
            "failed_total": sum(self.failed.values()),
            "ack_latency_ms": {**pct, "max": _round(lat.max_ms if lat.n else None),
                               "count": lat.n},
            "faults": dict(sorted(self.faults.items())),
            "connects": self.connects,
            "connect_failures": dict(sorted(self.connect_failures.items())),
            "disconnects": self.disconnects,
            "send_rate_per_s": round(rate, 1),
            "max_lag_s": round(self.max_lag_s, 3),
        }
        if self.cpu_s is not None:
            out["cpu_s"] = round(self.cpu_s, 3)
            out["cpu_us_per_reading"] = (round(self.cpu_s * 1e6 / self.sent, 1)
                                         if self.sent else None)
            if self.cpu_wall_s:
                out["cpu_cores"] = round(self.cpu_s / self.cpu_wall_s, 3)
        return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
