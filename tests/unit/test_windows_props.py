"""Property tests: every aggregate against a plain numpy reference; order independence
within the allowed lateness; late readings counted and never changing a closed window."""

from __future__ import annotations

import math
import random
from array import array

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_windows_timeline import BASE_MS

from edge.model import Reading
from edge.windows import AGGREGATES, Windower, WindowResult, WindowSpec, compute_batch

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

values_st = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def reference(points: list[tuple[int, float]]) -> dict[str, float | int | None]:
    """The obvious computation, one window at a time."""
    v = np.array([x for _, x in points], dtype=np.float64)
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    (t0, first), (t1, last) = points[order[0]], points[order[-1]]
    p50, p95, p99 = np.percentile(v, [50, 95, 99], method="linear")
    return {
        "count": len(v), "min": float(v.min()), "max": float(v.max()),
        "mean": float(v.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
        "stddev": float(np.std(v)), "first": first, "last": last,
        "rate": None if t1 == t0 else (last - first) / ((t1 - t0) / 1000),
    }


def assert_matches(got: dict, want: dict) -> None:
    assert set(got) == set(AGGREGATES)
    scale = max(1.0, abs(want["min"]), abs(want["max"]))
    for name in AGGREGATES:
        g, w = got[name], want[name]
        if w is None:
            assert g is None, name
        elif name in ("count", "min", "max", "first", "last"):
            assert g == w, (name, g, w)
        else:
            tol = 1e-9 * scale if name != "rate" else 1e-9 * max(1.0, abs(w))
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=tol), (name, g, w)


@SETTINGS
@given(st.lists(st.lists(st.tuples(st.integers(0, 20), values_st), min_size=1, max_size=40),
                min_size=1, max_size=12))
def test_compute_batch_matches_numpy_reference(windows: list[list[tuple[int, float]]]) -> None:
    values, times = array("d"), array("q")
    for w in windows:
        times.extend(t for t, _ in w)
        values.extend(v for _, v in w)
    got = compute_batch(values, times, [len(w) for w in windows])
    assert len(got) == len(windows)
    for g, w in zip(got, windows):
        assert_matches(g, reference(w))


def test_percentiles_are_bit_identical_to_numpy() -> None:
    rng = random.Random(7)
    for n in range(1, 60):
        vals = [rng.uniform(-100, 100) for _ in range(n)]
        (got,) = compute_batch(array("d", vals), array("q", range(n)), [n])
        want = np.percentile(np.array(vals), [50, 95, 99], method="linear")
        assert [got["p50"], got["p95"], got["p99"]] == [float(x) for x in want]


def feed(spec: WindowSpec, arrivals: list[tuple[int, Reading]]
         ) -> tuple[list[WindowResult], list[int], dict]:
    """Observe in the given (arrival_ms, reading) order, advancing at each arrival.

    Returns the windows, the positions of refused readings and, per window, the position of
    the first reading observed after it was emitted."""
    w = Windower(spec)
    out: list[WindowResult] = []
    late = []
    emitted_at: dict[tuple[str, str, int], int] = {}
    for i, (now, r) in enumerate(arrivals):
        for res in w.advance(now):
            out.append(res)
            emitted_at[(res.key, res.measurement, res.start_ms)] = i
        if w.observe(r, now) is not None:
            late.append(i)
    out += w.advance(arrivals[-1][0] + 100 * 3_600_000)
    return out, late, emitted_at


def windows_of(spec: WindowSpec, ts: int) -> list[int]:
    P, S = spec.slide, spec.size_ms
    last = ts // P
    return [k * P for k in range(last - S // P + 1, last + 1)]


def expected(spec: WindowSpec, readings: list[Reading]) -> dict[tuple[str, int], dict]:
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in readings:
        for start in windows_of(spec, r.ts_ms):
            groups.setdefault((r.device_id, start), []).append((r.ts_ms, r.value))
    return {k: reference(v) for k, v in groups.items()}


specs_st = st.builds(
    lambda size, panes, lateness: WindowSpec(
        id="p", size_ms=size * panes, slide_ms=size, lateness_ms=lateness,
        idle_timeout_ms=lateness),
    st.sampled_from([1000, 2000, 5000]), st.sampled_from([1, 1, 2, 3]),
    st.sampled_from([0, 500, 3000]))

series_st = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 60_000),
                               st.integers(-50, 50).map(float)),
                     min_size=1, max_size=80)


@SETTINGS
@given(specs_st, series_st, st.randoms(use_true_random=False))
def test_out_of_order_within_lateness_equals_sorted(spec: WindowSpec, raw: list,
                                                    rnd: random.Random) -> None:
    readings = [Reading(dev, BASE_MS + t, v) for dev, t, v in raw]
    in_order = sorted(readings, key=lambda r: r.ts_ms)
    sorted_run, late_a, _ = feed(spec, [(r.ts_ms, r) for r in in_order])
    # each reading arrives up to `lateness` after its event time: never behind the newest
    # event time seen by more than the lateness, and never held back beyond the idle timeout
    arrivals = sorted(((r.ts_ms + rnd.randint(0, spec.lateness_ms), i, r)
                       for i, r in enumerate(readings)), key=lambda x: (x[0], x[1]))
    shuffled_run, late_b, _ = feed(spec, [(a, r) for a, _, r in arrivals])
    assert late_a == [] and late_b == []
    want = expected(spec, readings)
    for run_ in (sorted_run, shuffled_run):
        got = {(res.key, res.start_ms): res.aggregates for res in run_}
        assert len(got) == len(run_), "a window was emitted twice"
        assert set(got) == set(want)
        for k in want:
            assert_matches(got[k], want[k])


@SETTINGS
@given(specs_st, series_st, st.lists(st.integers(0, 79), max_size=10),
       st.integers(5_000, 40_000))
def test_late_readings_are_counted_and_never_change_a_closed_window(
        spec: WindowSpec, raw: list, delayed: list[int], delay: int) -> None:
    readings = sorted((Reading(dev, BASE_MS + t, v) for dev, t, v in raw),
                      key=lambda r: r.ts_ms)
    held = {i for i in delayed if i < len(readings)}
    arrivals = sorted(((r.ts_ms + (delay if i in held else 0), i, r)
                       for i, r in enumerate(readings)), key=lambda x: (x[0], x[1]))
    ordered = [(a, r) for a, _, r in arrivals]
    results, late, emitted_at = feed(spec, ordered)
    refused = set(late)
    final = len(ordered)
    assert len({(r.key, r.start_ms) for r in results}) == len(results), "emitted twice"
    emitted = {(r.key, r.start_ms): emitted_at.get((r.key, r.measurement, r.start_ms), final)
               for r in results}
    for pos, (_, r) in enumerate(ordered):
        mine = [emitted.get((r.device_id, start)) for start in windows_of(spec, r.ts_ms)]
        if pos in refused:
            # refused only when every window it belongs to was already closed; and only
            # readings that were held back can be refused
            assert arrivals[pos][1] in held
            assert all(at is None or at <= pos for at in mine)
        else:
            assert any(at is not None and at > pos for at in mine)
    # each window holds exactly the accepted readings observed before it closed: a reading
    # arriving after a window closed never changes it
    for res in results:
        at = emitted[(res.key, res.start_ms)]
        members = [(r.ts_ms, r.value) for pos, (_, r) in enumerate(ordered)
                   if pos < at and pos not in refused and r.device_id == res.key
                   and res.start_ms in windows_of(spec, r.ts_ms)]
        assert_matches(res.aggregates, reference(members))
