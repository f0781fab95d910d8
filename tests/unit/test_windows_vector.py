"""The vectorized close path: column math against the numpy reference in every width class,
`ClosedWindows` against `WindowResult`, and the bounded `close_due` (each window closed
exactly once, oldest due first, whatever the bound)."""

from __future__ import annotations

import json
import math
import random
from array import array

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_windows_props import assert_matches, reference
from test_windows_timeline import BASE_MS

from edge.model import Reading
from edge.windows import (
    AGGREGATES,
    Chain,
    ClosedWindows,
    Windower,
    WindowResult,
    WindowSpec,
    compute_batch,
    compute_columns,
)
from edge.windows.batch import closed_by_counts
from edge.windows.timers import GRANULARITY_MS, DeadlineWheel

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def packed(windows: list[list[tuple[int, float]]]) -> tuple[array, array, list[int]]:
    values, times = array("d"), array("q")
    for w in windows:
        times.extend(t for t, _ in w)
        values.extend(v for _, v in w)
    return values, times, [len(w) for w in windows]


def check(windows: list[list[tuple[int, float]]]) -> None:
    got = compute_batch(*packed(windows))
    assert len(got) == len(windows)
    for g, w in zip(got, windows):
        assert_matches(g, reference(w))
        # percentiles: bit-identical, not merely close
        want = np.percentile(np.array([v for _, v in w]), [50, 95, 99], method="linear")
        assert [g["p50"], g["p95"], g["p99"]] == [float(x) for x in want]


points_st = st.lists(st.tuples(st.integers(0, 20), st.floats(-1e6, 1e6)), min_size=1,
                     max_size=12)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 60), st.randoms(use_true_random=False))
def test_equal_counts_one_2d_sort(n: int, m: int, rnd: random.Random) -> None:
    check([[(rnd.randrange(20), rnd.uniform(-100, 100)) for _ in range(n)] for _ in range(m)])


@SETTINGS
@given(st.lists(points_st, min_size=2, max_size=40))
def test_mixed_counts_within_twice_one_padded_class(windows: list) -> None:
    # counts between k and 2k share one width class padded with +inf
    low = min(len(w) for w in windows)
    check([w[:max(low, min(len(w), 2 * low))] for w in windows])


@settings(SETTINGS, max_examples=15)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=20), st.integers(0, 60),
       st.randoms(use_true_random=False))
def test_wide_mix_power_of_two_and_exact_classes(counts: list[int], common: int,
                                                 rnd: random.Random) -> None:
    # `common` windows of 10 values (an exact class of their own beyond 32 of them) among
    # windows of any size (power-of-two classes)
    sizes = counts + [10] * common
    rnd.shuffle(sizes)
    check([[(rnd.randrange(1000), rnd.choice([1.0, 2.5, rnd.uniform(-1e3, 1e3)]))
            for _ in range(c)] for c in sizes])


def test_one_huge_window_among_small_ones() -> None:
    rnd = random.Random(3)
    sizes = [20_000] + [rnd.randrange(1, 12) for _ in range(500)]
    check([[(rnd.randrange(10_000), rnd.gauss(0, 50)) for _ in range(c)] for c in sizes])


def test_non_finite_values_give_none_not_a_crash() -> None:
    nan, inf = float("nan"), float("inf")
    windows = [[(0, 1.0), (1, nan), (2, 3.0)], [(0, 1.0), (1, 2.0)], [(0, inf), (5, 1.0)],
               [(0, 1e308), (1, 1e308)]]
    got = compute_batch(*packed(windows))
    assert got[0]["p50"] is None and got[0]["max"] is None
    assert_matches(got[1], reference(windows[1]))
    assert got[2]["max"] is None and got[2]["min"] == 1.0 and got[2]["rate"] is None
    assert got[3]["mean"] is None and got[3]["max"] == 1e308     # the sum overflows
    json.dumps(got)


def test_columns_are_numpy_with_nan_for_missing() -> None:
    cols = compute_columns(*packed([[(5, 1.0)], [(0, 1.0), (1000, 3.0)]]))
    assert set(cols) == set(AGGREGATES)
    assert cols["count"].tolist() == [1, 2]
    assert math.isnan(cols["rate"][0]) and cols["rate"][1] == 2.0
    empty = compute_columns(array("d"), array("q"), [])
    assert all(len(c) == 0 for c in empty.values())


# -- ClosedWindows -------------------------------------------------------------------------

def closed_batch(n_series: int = 40) -> tuple[Windower, ClosedWindows]:
    spec = WindowSpec(id="w", size_ms=10_000, slide_ms=5_000, lateness_ms=0,
                      idle_timeout_ms=1000, key_by=("facility", "line"))
    w = Windower(spec)
    rnd = random.Random(5)
    for i in range(n_series * 10):
        t = BASE_MS + i * 37
        w.observe(Reading(f"d{i % 7}", t, rnd.uniform(0, 100), unit="C",
                          facility=f"f{i % n_series}", line="1",
                          battery_voltage=3.0 + (i % 5) / 10), t)
    return w, w.close_due(BASE_MS + 3_600_000)


def test_closed_windows_events_equal_the_results_events() -> None:
    _, batch = closed_batch()
    assert len(batch) > 40
    fresh = ClosedWindows(batch.spec, batch._sealed, batch._cols)
    events = fresh.events()                      # straight from the columns, first
    results = list(batch)
    assert events == [r.to_event() for r in results]
    assert batch.events(3, 9) == events[3:9]
    assert all(r.key == f"facility={r.tags['facility']},line=1" for r in results)
    assert all(r.battery_min is not None and r.due_ms is not None for r in results)


def test_closed_windows_builds_elements_only_when_read() -> None:
    _, batch = closed_batch()
    assert batch._built.count(None) == len(batch)
    first, last = batch[0], batch[-1]
    assert batch[0] is first and batch[len(batch) - 1] is last
    assert batch._built.count(None) == len(batch) - 2
    assert batch[1:3] == [batch[1], batch[2]]


def test_chain_concatenates_without_building() -> None:
    _, a = closed_batch(3)
    _, b = closed_batch(4)
    chain = Chain([a, [], b])
    assert len(chain) == len(a) + len(b)
    assert chain[len(a)] is b[0] and chain[-1] is b[-1]
    assert closed_by_counts(chain) == {"idle": len(a) + len(b)}
    assert [r.start_ms for r in chain] == [r.start_ms for r in list(a) + list(b)]
    with pytest.raises(IndexError):
        chain[len(chain)]


# -- the deadline wheel ----------------------------------------------------------------------

class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.bucket: int | None = None


def test_wheel_hands_out_never_early_and_skips_superseded_entries() -> None:
    wheel: DeadlineWheel[Item] = DeadlineWheel()
    a, b, c = Item("a"), Item("b"), Item("c")
    wheel.set(a, 1005)
    wheel.set(b, 1003)
    wheel.set(c, 990)
    wheel.set(a, 2000)                           # re-filed: the 1005 entry is dead
    assert wheel.earliest_ms() == 990
    assert wheel.pop_due(989) is None
    assert wheel.pop_due(990) is c
    assert wheel.pop_due(1009) is None           # b's deadline 1003 is in the bucket to 1010
    assert wheel.pop_due(1010) is b
    assert wheel.earliest_ms() == 2000           # a's dead entry skipped
    wheel.set(c, 500)                            # a past deadline becomes the earliest
    assert wheel.pop_due(2000) is c and wheel.pop_due(2000) is a
    assert wheel.pop_due(10**9) is None and wheel.earliest_ms() is None
    assert a.bucket is None and GRANULARITY_MS == 10


# -- bounded close_due -------------------------------------------------------------------------

def fleet_arrivals(devices: int, seconds: int, seed: int) -> list[tuple[int, Reading]]:
    rnd = random.Random(seed)
    phase = [rnd.randrange(1000) for _ in range(devices)]
    out = []
    for s in range(seconds):
        for d in range(devices):
            if rnd.random() < 0.05:
                continue                              # a missed reading now and then
            ts = BASE_MS + s * 1000 + phase[d]
            out.append((ts + rnd.randrange(0, 300), Reading(f"s{d}", ts, rnd.uniform(0, 9))))
    out.sort(key=lambda x: x[0])
    return out


@pytest.mark.parametrize("spec", [
    WindowSpec(id="t", size_ms=4000, lateness_ms=1000, idle_timeout_ms=1000),
    WindowSpec(id="t", size_ms=4000, lateness_ms=1000, idle_timeout_ms=2500),
    WindowSpec(id="s", size_ms=6000, slide_ms=2000, lateness_ms=500, idle_timeout_ms=800),
])
@pytest.mark.parametrize("bound", [1, 3, 17])
def test_bounded_close_closes_every_window_once_oldest_due_first(spec: WindowSpec,
                                                                   bound: int) -> None:
    arrivals = fleet_arrivals(30, 25, seed=bound)
    whole, parts = Windower(spec), Windower(spec)
    want: list[WindowResult] = []
    got: list[WindowResult] = []
    tick = arrivals[0][0]
    calls = 0
    for now, r in arrivals + [(arrivals[-1][0] + 60_000, None)]:
        while tick <= now:
            want += whole.advance(tick)
            # bounded: at most `bound` series visits per call, a few calls per tick
            for _ in range(3):
                batch = parts.close_due(tick, bound)
                calls += 1
                assert len({(x.key, x.start_ms) for x in batch}) == len(batch)
                dues = [d for d in batch.due_ms() if d is not None]
                assert all(d <= tick for d in dues)
                got += batch
            tick += 100
        if r is not None:
            assert (whole.observe(r, now) is None) == (parts.observe(r, now) is None)
    while parts.closes_pending(tick):
        got += parts.close_due(tick, bound)
    key = [(x.key, x.start_ms) for x in got]
    assert len(set(key)) == len(key), "a window closed twice"
    assert sorted(key) == sorted((x.key, x.start_ms) for x in want), "a window skipped"
    by_key = {(x.key, x.start_ms): x for x in want}
    for x in got:
        if x.closed_by == by_key[(x.key, x.start_ms)].closed_by:
            assert x.aggregates == by_key[(x.key, x.start_ms)].aggregates
    for dev in {x.key for x in got}:
        starts = [x.start_ms for x in got if x.key == dev]
        assert starts == sorted(starts), "windows of one series out of order"
    assert calls > len(want) / (bound * 3)


def test_bounded_close_takes_the_oldest_due_first() -> None:
    spec = WindowSpec(id="t", size_ms=1000, lateness_ms=0, idle_timeout_ms=60_000)
    w = Windower(spec)
    for dev in ["c", "a", "b", "d"]:
        w.observe(Reading(dev, BASE_MS + 500, 1.0), BASE_MS + 500)
    for i, dev in enumerate(["c", "a", "b", "d"]):  # each crosses the end in this order
        w.observe(Reading(dev, BASE_MS + 1000, 2.0), BASE_MS + 1000 + i)
    assert w.due_count == 4 and w.closes_pending(BASE_MS + 1010)
    first = w.close_due(BASE_MS + 1010, 2)
    assert [x.key for x in first] == ["c", "a"] and first.due_ms() == [BASE_MS + 1000,
                                                                       BASE_MS + 1001]
    assert [x.key for x in w.close_due(BASE_MS + 1010, 2)] == ["b", "d"]
    assert not w.closes_pending(BASE_MS + 1010)


def test_idle_close_due_time_is_the_exact_extrapolation() -> None:
    w = Windower(WindowSpec(id="t", size_ms=10_000, lateness_ms=2000, idle_timeout_ms=3000))
    w.observe(Reading("d", BASE_MS + 9_000, 1.0), BASE_MS + 9_123)   # 123 ms lag
    deadline = BASE_MS + 10_000 + 3000 + 123
    assert w.next_deadline_ms() == deadline + (-deadline) % GRANULARITY_MS
    assert not w.closes_pending(deadline - 1)
    (res,) = w.close_due(deadline + 10)
    assert (res.closed_by, res.due_ms) == ("idle", deadline)


def test_capture_is_the_state_at_capture_time() -> None:
    w = Windower(WindowSpec(id="t", size_ms=10_000, lateness_ms=0, idle_timeout_ms=1000))
    w.observe(Reading("d", BASE_MS + 1000, 1.0, battery_voltage=3.5), BASE_MS + 1000)
    cap = w.capture()
    want = w.to_state()
    w.observe(Reading("d", BASE_MS + 2000, 2.0, battery_voltage=3.1), BASE_MS + 2000)
    w.observe(Reading("d", BASE_MS + 12_000, 3.0), BASE_MS + 12_000)
    w.advance(BASE_MS + 12_000)                  # the captured pane closed since
    assert cap.to_state() == want
    assert want["keys"] == ["d"]
    assert [array("q", want[name]).tolist() for name in (
        "pane_series", "pane_index", "pane_count", "pane_late")] == [
        [0], [(BASE_MS + 1000) // 10_000], [1], [0]]
    assert array("q", want["ts"]).tolist() == [BASE_MS + 1000]
    assert array("d", want["vals"]).tolist() == [1.0]
    assert array("d", want["pane_bmin"]).tolist() == [3.5]
    msgpack.packb(want)
