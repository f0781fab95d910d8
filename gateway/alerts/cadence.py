"""When to take the expensive full engine snapshot — a pure policy, times passed in.

A snapshot holds every open window (10,000 devices: about a megabyte compressed and a few
hundred ms of CPU), so it is taken

* only when something changed since the last one (`changed()`),
* at most every `interval_s`, and less often when it is expensive: the next one waits until
  its CPU time is at most `cpu_share` of the time in between (`taken(cpu_s)`),
* preferably in a lull: not within `lull_s` after windows closed (closes come in waves at
  window boundaries, and their alerts should not wait behind a snapshot) — unless three
  intervals have passed, so a fleet that always has some window closing still gets one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SnapshotCadence:
    interval_s: float
    cpu_share: float = 0.02
    lull_s: float = 1.0
    last_s: float = float("-inf")
    last_close_s: float = float("-inf")
    dirty: bool = False
    #: the interval in force (stretched by expensive snapshots)
    every_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.every_s = self.interval_s

    def changed(self) -> None:
        self.dirty = True

    def closed(self, now_s: float) -> None:
        """Windows closed at `now_s`."""
        self.dirty = True
        self.last_close_s = now_s

    def due(self, now_s: float) -> bool:
        since = now_s - self.last_s
        if not self.dirty or since < self.every_s:
            return False
        return now_s - self.last_close_s >= self.lull_s or since >= 3 * self.every_s

    def taken(self, now_s: float, cpu_s: float) -> None:
        self.last_s = now_s
        self.dirty = False
        self.every_s = max(self.interval_s, cpu_s / max(self.cpu_share, 1e-6))
