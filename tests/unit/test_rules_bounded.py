"""AlertEngine on the vectorized close path: rules decided on the columns give exactly what
stepping every window gives; a bounded advance (`max_windows`) plus `close_windows` gives
the same windows and the same transitions, in the same order per dedup key, as closing
everything at once; the snapshot capture is the state at capture time."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_windows_timeline import BASE_MS

import edge.rules.engine as engine_module
from edge.model import Reading
from edge.rules import AlertEngine, AlertTransition, parse_rules
from edge.rules.vector import candidates

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
WINDOWS = [{"id": "w2s", "size": "2s", "lateness": "500ms", "idle_timeout": "1200ms"},
           {"id": "slide", "kind": "sliding", "size": "4s", "slide": "2s",
            "lateness": "500ms", "idle_timeout": "900ms"}]
AGGS = ["count", "min", "max", "mean", "p50", "p95", "p99", "stddev", "first", "last", "rate"]


def rule_st(i: int) -> st.SearchStrategy[dict[str, Any]]:
    threshold = st.builds(
        lambda agg, op, value, n, window: {
            "id": f"r{i}", "window": window, "match": {"measurement": "temperature"},
            "condition": f"{agg} {op} {value} for {n} windows", "severity": "warning",
            "message": "{device_id} {value}"},
        st.sampled_from(AGGS), st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
        st.sampled_from([0, 1, 3, 5.5, 7]), st.integers(1, 3), st.sampled_from(["w2s", "slide"]))
    rate = st.builds(
        lambda limit, n: {"id": f"r{i}", "kind": "rate_of_change", "window": "slide",
                          "match": {"measurement": "temperature"}, "limit": limit,
                          "for_windows": n},
        st.sampled_from([0.5, 1, 3]), st.integers(1, 2))
    battery = st.just({"id": f"r{i}", "kind": "low_battery", "source": "window_min",
                       "window": "w2s", "below": 3.3, "clear_above": 3.5})
    return st.one_of(threshold, rate, battery)


def readings(seed: int, devices: int = 6, seconds: int = 30) -> list[tuple[int, Reading]]:
    """1-3 readings/s per device at their own phase, values drifting through the thresholds,
    arrivals jittered (some beyond the lateness), a device silent for a while, the odd
    single-point window (rate None)."""
    rnd = random.Random(seed)
    out = []
    for d in range(devices):
        level = rnd.uniform(0, 8)
        phase = rnd.randrange(1000)
        for s in range(seconds):
            if d == 0 and 10 <= s < 16:
                continue
            for k in range(rnd.choice([1, 1, 2, 3])):
                level = min(9.0, max(0.0, level + rnd.gauss(0, 1.2)))
                ts = BASE_MS + s * 1000 + (phase + k * 300) % 1000
                r = Reading(f"dev-{d}", ts, round(level, 1), unit="C",
                            battery_voltage=round(rnd.uniform(3.1, 3.7), 2))
                out.append((ts + rnd.choice([5, 40, 200, 700]), r))
    out.sort(key=lambda x: x[0])
    return out


Run = tuple[list[AlertTransition], list[tuple[str, str, int, str, int]]]


def drive(eng: AlertEngine, stream: list[tuple[int, Reading]],
          close: Callable[[AlertEngine, int], list[Any]]) -> Run:
    transitions: list[AlertTransition] = []
    windows: list[tuple[str, str, int, str, int]] = []

    def take(outs: list[Any]) -> None:
        for out in outs:
            transitions.extend(out.transitions)
            windows.extend((a.window, a.key, a.start_ms, a.closed_by, a.count)
                           for a in out.aggregates)

    tick = stream[0][0]
    for now, r in stream + [(stream[-1][0] + 20_000, None)]:
        while tick <= now:
            take(close(eng, tick))
            tick += 100
        if r is not None:
            take([eng.observe(r, now)])
    return transitions, windows


def whole(eng: AlertEngine, now: int) -> list[Any]:
    return [eng.advance(now)]


def bounded(n: int) -> Callable[[AlertEngine, int], list[Any]]:
    def close(eng: AlertEngine, now: int) -> list[Any]:
        outs = [eng.advance(now, max_windows=n)]
        while eng.closes_pending(now):
            outs.append(eng.close_windows(now, max_windows=n))
        return outs
    return close


def essence(t: AlertTransition) -> tuple[Any, ...]:
    b = t.body
    return (t.transition, b["dedup_key"], b["incarnation"], b["message"],
            json.dumps(b["values"], sort_keys=True), b["notifications"])


def per_key(ts: list[AlertTransition]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for t in ts:
        out.setdefault(t.dedup_key, []).append(essence(t))
    return out


def every_window(rule: Any, batch: Any, idx: list[int], keys: list[str],
                 stateful: set[str]) -> list[int]:
    return list(idx)


@SETTINGS
@given(st.lists(st.integers(0, 2), min_size=1, max_size=4).flatmap(
    lambda picks: st.tuples(*[rule_st(i) for i in range(len(picks))])),
       st.integers(0, 10_000))
def test_column_prefilter_equals_stepping_every_window(rules: tuple, seed: int) -> None:
    rs = parse_rules({"windows": WINDOWS, "rules": list(rules)})
    stream = readings(seed)
    fast = drive(AlertEngine(rs, now_ms=BASE_MS), stream, whole)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "candidates", every_window)
        slow = drive(AlertEngine(rs, now_ms=BASE_MS), stream, whole)
    assert [essence(t) for t in fast[0]] == [essence(t) for t in slow[0]]
    assert fast[1] == slow[1]


@SETTINGS
@given(st.tuples(rule_st(0), rule_st(1)), st.integers(0, 10_000), st.sampled_from([1, 2, 5]))
def test_bounded_advance_gives_the_same_windows_and_transitions(
        rules: tuple, seed: int, bound: int) -> None:
    rs = parse_rules({"windows": WINDOWS, "rules": list(rules)})
    stream = readings(seed)
    a_trans, a_windows = drive(AlertEngine(rs, now_ms=BASE_MS), stream, whole)
    b_trans, b_windows = drive(AlertEngine(rs, now_ms=BASE_MS), stream, bounded(bound))
    assert len(set(b_windows)) == len(b_windows), "a window closed twice"
    assert sorted(a_windows) == sorted(b_windows), "a window skipped or changed"
    # the same transitions, in the same order for each alert
    assert per_key(a_trans) == per_key(b_trans)


def test_candidates_pick_hot_windows_and_subjects_with_state() -> None:
    rs = parse_rules({"windows": [WINDOWS[0]], "rules": [
        {"id": "hot", "window": "w2s", "match": {"measurement": "temperature"},
         "condition": "max > 5 for 2 windows"}]})
    eng = AlertEngine(rs, now_ms=BASE_MS)
    for d, v in (("a", 9.0), ("b", 1.0), ("c", 1.0)):
        for t in (0, 500, 2600):
            eng.observe(Reading(d, BASE_MS + t, v if t < 2000 else 1.0), BASE_MS + t)
    batch = eng.windowers["w2s"].close_due(BASE_MS + 2600)
    keys = batch.keys()
    idx = list(range(len(batch)))
    rule = rs.rules[0]
    assert [keys[i] for i in candidates(rule, batch, idx, keys, set())] == ["a"]
    assert sorted(keys[i] for i in candidates(rule, batch, idx, keys, {"c"})) == ["a", "c"]


def test_closes_pending_after_a_reading_and_close_windows_runs_no_periodic_checks() -> None:
    rs = parse_rules({"windows": [WINDOWS[0]], "rules": [
        {"id": "hot", "window": "w2s", "match": {"measurement": "temperature"},
         "condition": "max > 5"},
        {"id": "quiet", "kind": "stale", "after": "1s"}]})
    eng = AlertEngine(rs, now_ms=BASE_MS)
    eng.observe(Reading("a", BASE_MS + 100, 9.0), BASE_MS + 100)
    eng.observe(Reading("b", BASE_MS + 100, 1.0), BASE_MS + 100)
    assert not eng.windows_due and not eng.closes_pending(BASE_MS + 100)
    eng.observe(Reading("a", BASE_MS + 2600, 1.0), BASE_MS + 2600)   # a's watermark passes 2 s
    assert eng.windows_due and eng.closes_pending(BASE_MS + 2600)
    out = eng.close_windows(BASE_MS + 2600)
    assert [(t.transition, t.dedup_key) for t in out.transitions] == [("firing", "hot:a")]
    assert [a.key for a in out.aggregates] == ["a"]
    # b is silent past the stale limit, but only `advance` checks that
    assert not eng.windows_due
    deadline = eng.next_deadline_ms()
    assert deadline is not None and deadline >= BASE_MS + 2000 + 1200
    assert [t.dedup_key for t in eng.advance(BASE_MS + 2600).transitions] == ["quiet:b"]
    out = eng.close_windows(deadline)                         # b's window, by idle
    assert [(a.key, a.closed_by) for a in out.aggregates] == [("b", "idle")]


def test_capture_is_the_snapshot_at_capture_time() -> None:
    rs = parse_rules({"windows": [WINDOWS[0]], "rules": [
        {"id": "hot", "window": "w2s", "match": {"measurement": "temperature"},
         "condition": "max > 5 for 2 windows"},
        {"id": "quiet", "kind": "stale", "after": "10s"}]})
    eng = AlertEngine(rs, now_ms=BASE_MS)
    stream = readings(3, devices=4, seconds=8)
    drive(eng, stream[: len(stream) // 2], whole)
    cap = eng.capture(include_windows=True)
    want = through_msgpack(eng.snapshot(include_windows=True))
    drive(eng, stream[len(stream) // 2:], whole)        # the engine moves on
    assert through_msgpack(cap.to_dict()) == want
    assert eng.capture().to_dict() == eng.snapshot()


def through_msgpack(snap: dict) -> dict:
    """As the gateway stores a snapshot (window values are bytes: not JSON)."""
    return msgpack.unpackb(msgpack.packb(snap, use_bin_type=True), raw=False,
                           strict_map_key=False)


@pytest.mark.parametrize("bound", [None, 1])
def test_windows_closed_together_are_evaluated_in_start_order(bound: int | None) -> None:
    rs = parse_rules({"windows": [WINDOWS[0]], "rules": [
        {"id": "hot", "window": "w2s", "match": {"measurement": "temperature"},
         "condition": "max > 5", "clear": "max < 2"}]})
    eng = AlertEngine(rs, now_ms=BASE_MS)
    # a backlog: hot, cold, hot, cold windows of one device arrive before any close
    for k, v in enumerate([9.0, 1.0, 9.0, 1.0]):
        eng.observe(Reading("a", BASE_MS + k * 2000 + 100, v), BASE_MS + 10)
    eng.observe(Reading("b", BASE_MS + 100, 9.0), BASE_MS + 10)
    eng.observe(Reading("a", BASE_MS + 9000, 1.0), BASE_MS + 10)
    eng.observe(Reading("b", BASE_MS + 9000, 1.0), BASE_MS + 10)
    outs = [eng.advance(BASE_MS + 20, max_windows=bound)]
    while eng.closes_pending(BASE_MS + 20):
        outs.append(eng.close_windows(BASE_MS + 20, max_windows=bound))
    got = [(t.transition, t.dedup_key, t.body["values"]["start_ms"] - BASE_MS)
           for out in outs for t in out.transitions]
    assert [g for g in got if g[1] == "hot:a"] == [
        ("firing", "hot:a", 0), ("resolved", "hot:a", 2000), ("firing", "hot:a", 4000),
        ("resolved", "hot:a", 6000)]
    assert [g for g in got if g[1] == "hot:b"] == [("firing", "hot:b", 0)]
    # a series' due windows close together: one visit closes all four of a's
    assert [a.key for a in outs[0].aggregates][:4] == ["a"] * 4
    assert len(outs[0].aggregates) == (5 if bound is None else 4)
