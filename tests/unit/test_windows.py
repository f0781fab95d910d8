"""Windows drawn as timelines: closing, lateness, idle timeout, keys, aggregates, events."""

from __future__ import annotations

import json
import sys
from array import array

import msgpack
import pytest
from test_windows_timeline import BASE_MS, run, timeline, tumbling

from edge.model import Event, Reading
from edge.windows import Windower, WindowSpec, format_duration_ms, parse_duration_ms
from edge.windows.state import drop_series


def values_of(results) -> list[tuple[int, int, float, float]]:
    return [(r.start_ms - BASE_MS, r.count, r.aggregates["min"], r.aggregates["max"])
            for r in results]


def test_tumbling_windows_from_a_timeline() -> None:
    tl = timeline("|1 2 . 3|4 . . 5|")
    results, late = run(tumbling(tl.size_ms, lateness_ms=0), tl.readings())
    assert late == []
    assert values_of(results) == [(0, 3, 1, 3), (4000, 2, 4, 5)]
    first = results[0].aggregates
    assert first["mean"] == pytest.approx(2.0)
    assert first["first"] == 1 and first["last"] == 3
    assert first["rate"] == pytest.approx((3 - 1) / 3.0)  # per second over 3 s
    assert [r.end_ms - r.start_ms for r in results] == [4000, 4000]


def test_empty_windows_are_not_emitted() -> None:
    tl = timeline("|1 . .|. . .|. . .|. . 2|")
    results, _ = run(tumbling(tl.size_ms, lateness_ms=0), tl.readings())
    assert values_of(results) == [(0, 1, 1, 1), (9000, 1, 2, 2)]


def test_window_closes_when_the_watermark_passes_its_end() -> None:
    # lateness 2 s: window [0, 4) closes when event time 6 s has been seen, not at 5 s
    w = tumbling(4000, lateness_ms=2000, idle_timeout_ms=60_000)
    for t, v in [(0, 1.0), (1000, 2.0), (5000, 3.0)]:
        assert w.observe(Reading("d1", BASE_MS + t, v), BASE_MS + t) is None
    assert w.advance(BASE_MS + 5000) == []
    w.observe(Reading("d1", BASE_MS + 6000, 4.0), BASE_MS + 6000)
    (closed,) = w.advance(BASE_MS + 6000)
    assert (closed.start_ms, closed.count, closed.closed_by) == (BASE_MS, 2, "watermark")


def test_silent_sensor_gets_its_last_window_closed_by_idle_timeout() -> None:
    w = tumbling(10_000, lateness_ms=2000, idle_timeout_ms=3000)
    w.observe(Reading("d1", BASE_MS + 13_000, 7.0), BASE_MS + 13_000)
    # window [10 s, 20 s) ends at 20 s; the sensor is silent; idle timeout 3 s after that
    assert w.advance(BASE_MS + 22_999) == []
    (closed,) = w.advance(BASE_MS + 23_000)
    assert (closed.start_ms - BASE_MS, closed.count, closed.closed_by) == (10_000, 1, "idle")


def test_idle_close_follows_the_sensor_clock_not_ours() -> None:
    # the sensor's clock is 1 hour behind the gateway's: idle closing uses elapsed time
    skew = -3_600_000
    w = tumbling(10_000, lateness_ms=0, idle_timeout_ms=1000)
    w.observe(Reading("d1", BASE_MS + skew + 5000, 1.0), BASE_MS + 5000)
    assert w.advance(BASE_MS + 10_999) == []
    (closed,) = w.advance(BASE_MS + 11_000)
    assert closed.start_ms == BASE_MS + skew


def test_reading_arriving_on_time_is_never_made_late_by_idle_close() -> None:
    # reports every 6 s into 10 s windows; arrivals lag event time by a steady 300 ms
    w = tumbling(10_000, lateness_ms=0, idle_timeout_ms=500)
    readings = [Reading("d1", BASE_MS + t, float(t)) for t in range(0, 60_000, 6000)]
    results, late = run(w, readings, arrival_lag_ms=300)
    assert late == []
    assert sum(r.count for r in results) == len(readings)


def test_late_reading_is_returned_counted_and_never_changes_a_closed_window() -> None:
    w = tumbling(4000, lateness_ms=1000, idle_timeout_ms=60_000)
    tl = timeline("|1 2 3 4|5 6 . .|")
    results, late = run(w, tl.readings(), settle=False)
    assert values_of(results) == [(0, 4, 1, 4)]
    refused = w.observe(Reading("d1", BASE_MS + 2500, 100.0), BASE_MS + 6000)
    assert refused is not None and (refused.reason, refused.key) == ("late", "d1")
    assert w.counters["late"] == 1 and w.late_by_key() == {"d1": 1}
    rest = w.advance(BASE_MS + 10 * 3_600_000)
    assert values_of(rest) == [(4000, 2, 5, 6)]  # window 0 is not re-emitted


def test_out_of_order_within_lateness_is_merged_and_counted() -> None:
    w = tumbling(4000, lateness_ms=2000)
    order = [0, 2000, 1000, 3000, 5000, 4000, 7000]  # event times in arrival order
    results, late = run(w, [Reading("d1", BASE_MS + t, t / 1000) for t in order])
    assert late == []
    assert [(r.count, r.late) for r in results] == [(4, 1), (3, 1)]
    assert results[0].aggregates["first"] == 0 and results[0].aggregates["last"] == 3


def test_sliding_windows_from_a_timeline() -> None:
    # size 4 s, slide 2 s: windows start every 2 s and overlap by half
    w = Windower(WindowSpec(id="s", size_ms=4000, slide_ms=2000, lateness_ms=0))
    tl = timeline("|1 2|3 4|5 6|")
    results, _ = run(w, tl.readings())
    got = [(r.start_ms - BASE_MS, r.aggregates["min"], r.aggregates["max"], r.count)
           for r in results]
    assert got == [(-2000, 1, 2, 2), (0, 1, 4, 4), (2000, 3, 6, 4), (4000, 5, 6, 2)]
    assert results[0].kind == "sliding" and results[0].slide_ms == 2000


def test_group_windows_by_tags_and_missing_tags_are_refused() -> None:
    w = Windower(WindowSpec(id="g", size_ms=10_000, key_by=("facility", "line")))
    t = BASE_MS
    for dev, v in [("a", 1.0), ("b", 3.0)]:
        w.observe(Reading(dev, t, v, facility="f1", line="2", zone="z"), t)
    refused = w.observe(Reading("c", t, 9.0, facility="f1"), t)
    assert refused is not None and refused.reason == "missing_key"
    (res,) = w.advance(t + 10 * 3_600_000)
    assert res.key == "facility=f1,line=2"
    assert res.tags == {"facility": "f1", "line": "2"}
    assert (res.count, res.aggregates["mean"]) == (2, 2.0)
    assert w.counters["missing_key"] == 1


def test_measurements_are_separate_series_and_filters_apply() -> None:
    w = Windower(WindowSpec(id="t", size_ms=10_000, measurements=frozenset({"temperature"})))
    t = BASE_MS
    assert w.observe(Reading("d", t, 1.0, measurement="humidity"), t) is None  # not ours
    bad = w.observe(Reading("d", t, 1.0, quality="bad"), t)
    assert bad is not None and bad.reason == "bad_quality"
    w.observe(Reading("d", t, 5.0, unit="C", facility="f"), t)
    (res,) = w.advance(t + 10 * 3_600_000)
    assert (res.measurement, res.unit, res.count, res.tags) == ("temperature", "C", 1,
                                                                {"facility": "f"})
    both = Windower(WindowSpec(id="all", size_ms=10_000))
    both.observe(Reading("d", t, 1.0, measurement="humidity"), t)
    both.observe(Reading("d", t, 2.0), t)
    assert sorted(r.measurement for r in both.advance(t + 3_600_000)) == ["humidity",
                                                                           "temperature"]


def test_single_point_and_event_time_ties() -> None:
    w = tumbling(10_000, lateness_ms=5000)
    t = BASE_MS
    # arrival order 5, 3 at the same first instant; 8, 9 at the same last instant
    for ts, v in [(t, 5.0), (t, 3.0), (t + 4000, 9.0), (t + 4000, 8.0)]:
        w.observe(Reading("d", ts, v, battery_voltage=3.7 if v > 5 else 3.6), ts)
    w.observe(Reading("e", t, 1.0), t)
    res = {r.key: r for r in w.advance(t + 3_600_000)}
    agg = res["d"].aggregates
    assert (agg["first"], agg["last"]) == (3.0, 9.0)  # ties broken by value
    assert agg["rate"] == pytest.approx((9.0 - 3.0) / 4.0)
    assert res["d"].battery_min == 3.6
    single = res["e"].aggregates
    assert single["rate"] is None and single["stddev"] == 0.0 and single["p99"] == 1.0
    assert res["e"].battery_min is None


def test_to_event_is_json_safe_with_a_stable_key() -> None:
    tl = timeline("|1 2 3|4 . .|")
    a, _ = run(tumbling(tl.size_ms), tl.readings())
    b, _ = run(tumbling(tl.size_ms), tl.readings())
    ev = a[0].to_event()
    assert isinstance(ev, Event) and ev.kind == "aggregate" and len(ev.key) == 16
    assert ev.key == b[0].to_event().key
    assert ev.key != a[1].to_event().key
    assert (ev.device_id, ev.ts_ms) == ("d1", BASE_MS)
    body = json.loads(json.dumps(ev.body))
    assert body["aggregates"]["max"] == 3 and body["window"] == "w"
    assert body["start_ms"] == BASE_MS and body["end_ms"] == BASE_MS + 3000
    other_size, _ = run(tumbling(6000), tl.readings())
    assert other_size[0].to_event().key != ev.key  # the geometry is part of the key


def test_flush_closes_everything_and_later_readings_are_late() -> None:
    w = tumbling(10_000)
    w.observe(Reading("d", BASE_MS + 1000, 1.0), BASE_MS)
    (res,) = w.flush()
    assert res.closed_by == "flush"
    refused = w.observe(Reading("d", BASE_MS + 2000, 1.0), BASE_MS)
    assert refused is not None and refused.reason == "late"


def test_state_round_trip_continues_exactly() -> None:
    readings = [Reading("d", BASE_MS + t, float(t % 7), battery_voltage=3.5)
                for t in range(0, 30_000, 700)]
    whole, _ = run(tumbling(4000, lateness_ms=1500), readings)
    w = tumbling(4000, lateness_ms=1500)
    first, _ = run(w, readings[:20], settle=False)
    state = msgpack.unpackb(msgpack.packb(w.to_state()))
    w2 = Windower.from_state(w.spec, state, now_ms=readings[19].ts_ms)
    rest, _ = run(w2, readings[20:])
    assert [(r.start_ms, r.aggregates) for r in first + rest] == \
           [(r.start_ms, r.aggregates) for r in whole]


def _sliding() -> Windower:
    return Windower(WindowSpec(id="s", size_ms=8000, slide_ms=2000, lateness_ms=1500))


def _fleet(devices: str, until_ms: int) -> list[Reading]:
    """Out-of-order readings of several devices, some with a battery voltage."""
    out = [Reading(d, BASE_MS + t + (300 if t % 2100 == 0 else 0), float((t // 100 + i) % 11),
                   battery_voltage=3.0 + i / 10 if t % 1400 == 0 else None)
           for t in range(0, until_ms, 700) for i, d in enumerate(devices)]
    return out


def _results(rs: list) -> list:
    return sorted((r.key, r.start_ms, r.aggregates) for r in rs)


def test_state_with_sliding_panes_continues_exactly_through_msgpack() -> None:
    readings = _fleet("abc", 30_000)
    whole, _ = run(_sliding(), readings)
    w = _sliding()
    first, _ = run(w, readings[:60], settle=False)
    state = msgpack.unpackb(msgpack.packb(w.to_state()))
    assert state["layout"] == 2 and sorted(state["keys"]) == ["a", "b", "c"]
    assert len(array("q", state["pane_series"])) > 3  # several open panes per series
    w2 = Windower.from_state(w.spec, state, now_ms=readings[59].ts_ms)
    rest, _ = run(w2, readings[60:])
    assert _results(first + rest) == _results(whole)


def test_drop_series_removes_exactly_those_keys() -> None:
    readings = _fleet("abc", 30_000)
    w = _sliding()
    first, _ = run(w, readings[:60], settle=False)
    state = w.to_state()
    drop_series(state, {"b", "zz"})
    assert sorted(state["keys"]) == ["a", "c"]
    w2 = Windower.from_state(w.spec, state, now_ms=readings[59].ts_ms)
    rest, _ = run(w2, [r for r in readings[60:] if r.device_id != "b"])
    whole, _ = run(_sliding(), [r for r in readings if r.device_id != "b"])
    assert _results([r for r in first if r.key != "b"] + rest) == _results(whole)


def test_state_written_in_the_other_byte_order_restores_the_same() -> None:
    readings = _fleet("ab", 20_000)
    w = _sliding()
    run(w, readings[:30], settle=False)
    state = w.to_state()
    swapped = dict(state, byteorder="big" if sys.byteorder == "little" else "little")
    for name, kind in (("max_ts", "q"), ("next_k", "q"), ("last_arrival", "q"),
                       ("late", "q"), ("pane_series", "q"), ("pane_index", "q"),
                       ("pane_count", "q"), ("pane_late", "q"), ("pane_bmin", "d"),
                       ("ts", "q"), ("vals", "d")):
        arr = array(kind, state[name])
        arr.byteswap()
        swapped[name] = arr.tobytes()
    assert swapped["ts"] != state["ts"]
    now = readings[29].ts_ms
    again = Windower.from_state(w.spec, swapped, now_ms=now).to_state()
    assert again == Windower.from_state(w.spec, state, now_ms=now).to_state()


def test_a_layout_1_state_saved_by_an_older_gateway_still_restores() -> None:
    readings = _fleet("ab", 30_000)
    whole, _ = run(_sliding(), readings)
    w = _sliding()
    first, _ = run(w, readings[:40], settle=False)
    new = w.to_state()
    col = {name: array("d" if name in ("vals", "pane_bmin") else "q", new[name])
           for name in ("max_ts", "next_k", "last_arrival", "late", "pane_series",
                        "pane_index", "pane_count", "pane_late", "pane_bmin", "ts", "vals")}
    series = []
    for i, key in enumerate(new["keys"]):
        device_id, unit, facility, line, zone = new["tags"][i]
        panes = []
        for j, si in enumerate(col["pane_series"]):
            if si == i:
                start, n, b = sum(col["pane_count"][:j]), col["pane_count"][j], col["pane_bmin"][j]
                panes.append([col["pane_index"][j], col["ts"][start:start + n].tolist(),
                              col["vals"][start:start + n].tolist(), col["pane_late"][j],
                              None if b != b else b])
        series.append({"key": key, "measurement": new["measurements"][i],
                       "max_ts": col["max_ts"][i], "next_k": col["next_k"][i],
                       "last_arrival": col["last_arrival"][i], "late": col["late"][i],
                       "last": {"device_id": device_id, "unit": unit, "facility": facility,
                                "line": line, "zone": zone}, "panes": panes})
    old = json.loads(json.dumps({"spec": new["spec"], "counters": new["counters"],
                                 "series": series}))
    w2 = Windower.from_state(w.spec, old, now_ms=readings[39].ts_ms)
    assert w2.to_state()["ts"] == new["ts"]
    rest, _ = run(w2, readings[40:])
    assert _results(first + rest) == _results(whole)


def test_silent_series_are_forgotten_after_forget_after() -> None:
    w = tumbling(1000, lateness_ms=0, idle_timeout_ms=0, forget_after_ms=120_000)
    w.observe(Reading("d", BASE_MS, 1.0), BASE_MS)
    w.advance(BASE_MS + 60_000)
    assert w.series_count == 1
    w.advance(BASE_MS + 180_000)
    assert w.series_count == 0 and w.counters["series_forgotten"] == 1


@pytest.mark.parametrize("kwargs, field", [
    ({"size_ms": 0}, "size"),
    ({"size_ms": 10_000, "slide_ms": 3000}, "size"),
    ({"size_ms": 10_000, "slide_ms": 20_000}, "slide"),
    ({"lateness_ms": -1}, "lateness"),
    ({"key_by": ("device_id", "colour")}, "key_by"),
    ({"key_by": ()}, "key_by"),
    ({"id": "bad id"}, "id"),
])
def test_inconsistent_specs_are_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        WindowSpec(**kwargs)


def test_spec_round_trips_through_a_dict() -> None:
    spec = WindowSpec(id="x", size_ms=60_000, slide_ms=15_000, key_by=("facility",),
                      measurements=frozenset({"a", "b"}))
    assert WindowSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.kind == "sliding" and spec.panes_per_window == 4


@pytest.mark.parametrize("text, ms", [("10s", 10_000), ("500ms", 500), ("5m", 300_000),
                                      ("1.5h", 5_400_000), ("1d", 86_400_000), (2, 2000),
                                      ("3", 3000), (0.25, 250)])
def test_durations(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["10 sec", "-1s", -3, True, None, "s", [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(bad)


def test_format_duration_round_trips() -> None:
    for ms in (500, 1000, 90_000, 300_000, 3_600_000, 86_400_000, 1500):
        assert parse_duration_ms(format_duration_ms(ms)) == ms


def test_importing_windows_and_rules_does_not_need_numpy() -> None:
    # the core `edge` install has no numpy: it may only be imported when a window closes
    import subprocess
    import sys
    code = ("import sys; import edge.windows, edge.rules; "
            "sys.exit(1 if 'numpy' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
