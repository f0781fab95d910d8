"""Test helpers: draw window inputs as ASCII timelines.

    "|1 2 . 3|4 . . 5|"

Bars are window boundaries; every token between them is one tick (1 s by default) of event
time: a number is a reading with that value, `.` is a tick without one.  Time starts at
`BASE_MS` (aligned to every window size that divides an hour), so the drawing's bars are the
engine's window boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.model import Reading
from edge.windows import Windower, WindowResult, WindowSpec

BASE_MS = 1_699_999_200_000  # 2023-11-14T22:00:00Z, a whole hour


@dataclass
class Timeline:
    points: list[tuple[int, float]]
    windows: list[list[float]]
    size_ms: int

    def readings(self, device: str = "d1", measurement: str = "temperature") -> list[Reading]:
        return [Reading(device, t, v, measurement=measurement) for t, v in self.points]


def timeline(text: str, tick_ms: int = 1000, t0: int = BASE_MS) -> Timeline:
    segments = text.strip().strip("|").split("|")
    t = t0
    points: list[tuple[int, float]] = []
    windows: list[list[float]] = []
    widths = set()
    for seg in segments:
        tokens = seg.split()
        widths.add(len(tokens))
        values = []
        for tok in tokens:
            if tok != ".":
                points.append((t, float(tok)))
                values.append(float(tok))
            t += tick_ms
        windows.append(values)
    assert len(widths) == 1, f"windows of different widths in {text!r}"
    return Timeline(points, windows, widths.pop() * tick_ms)


def run(w: Windower, readings: list[Reading], *, arrival_lag_ms: int = 0,
        settle: bool = True) -> tuple[list[WindowResult], list]:
    """Feed readings (arrival = event time + lag), advancing after each; then close all."""
    results: list[WindowResult] = []
    late = []
    now = 0
    for r in readings:
        now = max(now, r.ts_ms + arrival_lag_ms)
        refused = w.observe(r, now)
        if refused is not None:
            late.append(refused)
        results += w.advance(now)
    if settle:
        results += w.advance(now + 10 * 3_600_000)
    return results, late


def tumbling(size_ms: int, **kw: object) -> Windower:
    return Windower(WindowSpec(id="w", size_ms=size_ms, **kw))  # type: ignore[arg-type]


def test_timeline_parses_bars_ticks_and_gaps() -> None:
    tl = timeline("|1 2 . 3|4 . . 5|")
    assert tl.size_ms == 4000
    assert tl.windows == [[1, 2, 3], [4, 5]]
    assert tl.points == [(BASE_MS, 1), (BASE_MS + 1000, 2), (BASE_MS + 3000, 3),
                         (BASE_MS + 4000, 4), (BASE_MS + 7000, 5)]


def test_timeline_rejects_uneven_windows() -> None:
    import pytest
    with pytest.raises(AssertionError):
        timeline("|1 2|3|")
