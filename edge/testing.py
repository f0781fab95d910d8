"""Fakes shipped with fieldlink for tests at clean seams (clocks, random sources)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeClock:
    """A clock that moves only when told to.  Satisfies `edge.clock.Clock`."""

    wall_ms: int = 1_705_322_445_000
    mono: float = 1000.0

    def now_ms(self) -> int:
        return self.wall_ms

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall_ms += int(round(seconds * 1000))
        self.mono += seconds
