"""AlertEngine: each rule kind, hysteresis, consecutive windows, cooldown, acknowledgement."""

from __future__ import annotations

import json
from typing import Any

from test_windows_timeline import BASE_MS

from edge.model import Reading
from edge.rules import AlertEngine, AlertTransition, GatewayStatus, Output, parse_rules

W10 = {"id": "w10s", "size": "10s", "lateness": "1s", "idle_timeout": "1s"}


def engine(*rules: dict[str, Any], windows: list[dict] | None = None,
           now: int = BASE_MS) -> AlertEngine:
    rs = parse_rules({"windows": windows or [W10], "rules": list(rules)})
    return AlertEngine(rs, now_ms=now, gateway_id="gw-1")


class Driver:
    """Feeds one reading per second per window value list and collects everything."""

    def __init__(self, eng: AlertEngine, t0: int = BASE_MS) -> None:
        self.eng = eng
        self.now = t0
        self.transitions: list[AlertTransition] = []
        self.aggregates: list = []

    def take(self, out: Output) -> None:
        self.transitions += out.transitions
        self.aggregates += out.aggregates

    def windows(self, *maxima: float, device: str = "d1", per_window: int = 10,
                **fields: Any) -> None:
        """One 10 s window per value: readings ramp up to `value` as the window's max."""
        for value in maxima:
            for i in range(per_window):
                ts = self.now + i * (10_000 // per_window)
                v = value - (per_window - 1 - i) * 0.1
                self.take(self.eng.observe(Reading(device, ts, v, **fields), ts))
                self.take(self.eng.advance(ts))
            self.now += 10_000
        self.settle()

    def settle(self) -> None:
        self.take(self.eng.advance(self.now + 1_500))

    def kinds(self) -> list[tuple[str, str]]:
        return [(t.transition, t.dedup_key) for t in self.transitions]


OVERHEAT = {"id": "overheat", "window": "w10s", "match": {"measurement": "temperature"},
            "condition": "max > 90", "clear": "max < 85", "severity": "critical",
            "message": "{device_id} max {max:.1f} °C > 90 in window {start}"}


def test_seed_rule_fires_once_with_message_and_clears_with_hysteresis() -> None:
    d = Driver(engine(OVERHEAT))
    d.windows(80)
    for i in range(10):  # the sensor then reports 10 readings up to 92.04 and goes silent
        ts = BASE_MS + 10_000 + i * 1000
        d.take(d.eng.observe(Reading("d1", ts, 92.04 - (9 - i) * 0.1), ts))
    for now in range(BASE_MS + 19_000, BASE_MS + 25_000, 100):  # the gateway's 100 ms tick
        d.take(d.eng.advance(now))
    d.now = BASE_MS + 20_000
    (fired,) = d.transitions
    assert fired.transition == "firing" and fired.dedup_key == "overheat:d1"
    body = fired.body
    assert body["severity"] == "critical" and body["state"] == "firing"
    assert body["message"] == "d1 max 92.0 °C > 90 in window 2023-11-14T22:00:10Z"
    assert body["values"]["max"] == 92.04 and body["values"]["start_ms"] == BASE_MS + 10_000
    # the silent sensor's alert comes out idle_timeout (1 s) after its window's end
    assert fired.at_ms == BASE_MS + 20_000 + 1_000
    d.windows(95, 88, 86)  # still above the clear threshold: nothing new
    assert len(d.transitions) == 1
    d.windows(84)
    resolved = d.transitions[-1]
    assert (resolved.transition, resolved.body["reason"]) == ("resolved", "cleared")
    assert resolved.body["incarnation"] == 1 and resolved.body["values"]["max"] == 84
    assert resolved.body["resolved_at_ms"] == resolved.at_ms


def test_alert_events_are_json_safe_and_keyed_per_transition() -> None:
    d = Driver(engine(OVERHEAT))
    d.windows(95, 70, 95, 70)
    assert [k for k, _ in d.kinds()] == ["firing", "resolved", "firing", "resolved"]
    events = [t.to_event() for t in d.transitions]
    assert all(e.kind == "alert" and e.device_id == "d1" and len(e.key) == 16 for e in events)
    assert len({e.key for e in events}) == 4
    assert [e.body["incarnation"] for e in events] == [1, 1, 2, 2]
    assert {e.body["dedup_key"] for e in events} == {"overheat:d1"}
    json.dumps([e.body for e in events])
    assert [e.priority.name for e in events] == ["ALERT"] * 4


def test_devices_alert_independently_and_match_filters_apply() -> None:
    rule = {**OVERHEAT, "match": {"device": "oven-*", "measurement": "temperature",
                                  "tags": {"facility": "plant-?"}}}
    d = Driver(engine(rule))
    d.windows(95, device="oven-1", facility="plant-1")
    d.windows(95, device="oven-2", facility="plant-22")  # tag glob does not match
    d.windows(95, device="fridge-1", facility="plant-1")
    d.windows(95, device="oven-3", facility="plant-2", measurement="humidity")
    assert d.kinds() == [("firing", "overheat:oven-1")]


def test_for_n_windows_needs_consecutive_windows() -> None:
    rule = {"id": "p95", "window": "w10s", "match": {"measurement": "temperature"},
            "condition": "p95 > 85 for 3 windows", "clear": "p95 < 80 for 2 windows"}
    d = Driver(engine(rule))
    d.windows(90, 90, 70, 90, 90)
    assert d.transitions == []
    d.now += 30_000  # a gap: three empty windows restart the count
    d.windows(90)
    assert d.transitions == []
    d.windows(90, 90)
    assert d.kinds() == [("firing", "p95:d1")]
    d.windows(70, 90, 70)
    assert len(d.transitions) == 1  # clear needs 2 consecutive windows
    d.windows(70)
    assert d.kinds()[-1] == ("resolved", "p95:d1")


def test_cooldown_renotifies_until_acknowledged() -> None:
    eng = engine({**OVERHEAT, "cooldown": "20s"})
    d = Driver(eng)
    d.windows(95)
    fired_at = d.transitions[0].at_ms
    d.take(eng.advance(fired_at + 19_999))
    assert len(d.transitions) == 1
    d.take(eng.advance(fired_at + 20_000))
    renotify = d.transitions[-1]
    assert renotify.transition == "renotify" and renotify.dedup_key == "overheat:d1"
    assert renotify.body["notifications"] == 1
    assert renotify.to_event().key != d.transitions[0].to_event().key
    d.take(eng.advance(fired_at + 40_000))
    assert d.transitions[-1].body["notifications"] == 2
    ack = eng.acknowledge("overheat:d1", by="operator1", now_ms=fired_at + 41_000)
    assert ack is not None and ack.transition == "acknowledged"
    assert (ack.body["state"], ack.body["acked_by"]) == ("acknowledged", "operator1")
    assert eng.acknowledge("overheat:d1", by="operator2", now_ms=fired_at + 42_000) is None
    assert eng.acknowledge("nope:d1", by="operator2", now_ms=fired_at + 42_000) is None
    count = len(d.transitions)
    d.take(eng.advance(fired_at + 120_000))
    assert len(d.transitions) == count  # acknowledged: no more re-notifications
    d.now = fired_at + 120_000 - (fired_at + 120_000 - BASE_MS) % 10_000
    d.windows(50)
    last = d.transitions[-1]
    assert (last.transition, last.body["acked_by"], last.state) == ("resolved", "operator1",
                                                                    "resolved")
    assert eng.active_alerts() == []


def test_stale_sensor_fires_on_advance_and_resolves_on_next_reading() -> None:
    eng = engine({"id": "stale", "kind": "stale", "after": "30s", "severity": "warning"})
    t = BASE_MS
    eng.observe(Reading("d1", t, 1.0, facility="f"), t)
    eng.observe(Reading("d2", t + 10_000, 1.0), t + 10_000)
    assert not eng.advance(t + 29_999).transitions
    (fired,) = eng.advance(t + 30_000).transitions
    assert fired.dedup_key == "stale:d1" and fired.transition == "firing"
    assert fired.body["message"] == "d1 silent for 30 s (last reading 2023-11-14T22:00:00Z)"
    assert fired.body["values"]["facility"] == "f"
    assert not eng.advance(t + 35_000).transitions  # fires once
    (other,) = eng.advance(t + 40_000).transitions
    assert other.dedup_key == "stale:d2"
    out = eng.observe(Reading("d1", t + 50_000, 2.0), t + 50_000)
    (resolved,) = out.transitions
    assert (resolved.transition, resolved.dedup_key) == ("resolved", "stale:d1")
    assert resolved.body["values"]["silent_s"] == 50.0
    (again,) = eng.advance(t + 80_000).transitions
    assert again.dedup_key == "stale:d1" and again.body["incarnation"] == 2


def test_low_battery_on_last_reading_with_hysteresis() -> None:
    eng = engine({"id": "batt", "kind": "low_battery", "below": 3.3, "clear_above": 3.4})
    t = BASE_MS
    seq = [3.5, 3.29, 3.2, 3.35, 3.39, 3.4, 3.1]
    got = []
    for i, volts in enumerate(seq):
        out = eng.observe(Reading("d1", t + i, 20.0, battery_voltage=volts), t + i)
        got += [(i, tr.transition) for tr in out.transitions]
    assert got == [(1, "firing"), (5, "resolved"), (6, "firing")]
    # a separate battery measurement counts too; readings without a voltage change nothing
    eng2 = engine({"id": "batt", "kind": "low_battery", "below": 3.3})
    assert not eng2.observe(Reading("d1", t, 20.0), t).transitions
    out = eng2.observe(Reading("d1", t, 3.0, measurement="battery_voltage"), t)
    assert out.transitions[0].body["message"] == "d1 battery at 3.00 V (below 3.30 V)"


def test_low_battery_on_window_minimum() -> None:
    eng = engine({"id": "batt", "kind": "low_battery", "below": 3.3, "source": "window_min",
                  "match": {"measurement": "temperature"},
                  "message": "{device_id} battery min {voltage:.2f} V in {window}"})
    d = Driver(eng)
    d.windows(20, battery_voltage=3.25)
    (fired,) = d.transitions
    assert fired.body["message"] == "d1 battery min 3.25 V in w10s"


def test_rate_of_change_uses_absolute_rate() -> None:
    eng = engine({"id": "roc", "kind": "rate_of_change", "window": "w10s", "limit": 0.5,
                  "clear_below": 0.2, "match": {"measurement": "temperature"}})
    t = BASE_MS
    d = Driver(eng)
    for i in range(10):  # falling 1 °C/s
        d.take(eng.observe(Reading("d1", t + i * 1000, 50.0 - i), t + i * 1000))
    d.now = t + 10_000
    d.settle()
    (fired,) = d.transitions
    assert fired.body["values"]["rate"] == -1.0 and fired.body["values"]["value"] == 1.0
    d.windows(20)  # readings 0.1 apart per second: 0.1/s, below the clear
    assert d.kinds()[-1] == ("resolved", "roc:d1")


def test_gateway_rules_from_status() -> None:
    eng = engine({"id": "buf", "kind": "buffer_fill", "above_percent": 80,
                  "clear_below_percent": 70, "severity": "critical"},
                 {"id": "up", "kind": "uplink_down", "after": "5m"})
    t = BASE_MS
    seen = []
    for step, status in enumerate([GatewayStatus(0.5), GatewayStatus(0.85),
                                   GatewayStatus(0.75), GatewayStatus(0.69)]):
        seen += [(step, x.transition, x.dedup_key)
                 for x in eng.advance(t + step, status).transitions]
    assert seen == [(1, "firing", "buf:gw-1"), (3, "resolved", "buf:gw-1")]
    down = GatewayStatus(0.1, uplink_down_since_ms=t)
    assert not eng.advance(t + 299_999, down).transitions
    (fired,) = eng.advance(t + 300_000, down).transitions
    assert fired.body["message"] == "gw-1 uplink down for 300 s (since 2023-11-14T22:00:00Z)"
    assert not eng.advance(t + 400_000).transitions  # no status: nothing known, no change
    assert not eng.advance(t + 500_000, down).transitions
    (resolved,) = eng.advance(t + 600_000, GatewayStatus(0.1)).transitions
    assert resolved.dedup_key == "up:gw-1" and resolved.transition == "resolved"


def test_group_windows_alert_per_group_key() -> None:
    win = {"id": "line", "size": "10s", "lateness": "1s", "idle_timeout": "1s",
           "key_by": ["facility", "line"]}
    rule = {"id": "line-hot", "window": "line", "match": {"measurement": "temperature",
                                                           "tags": {"facility": "f1"}},
            "condition": "mean > 50", "message": "{key} mean {mean:.0f}"}
    d = Driver(engine(rule, windows=[win]))
    for dev in ("a", "b"):
        d.eng.observe(Reading(dev, BASE_MS, 60.0, facility="f1", line="3"), BASE_MS)
    d.eng.observe(Reading("c", BASE_MS, 99.0, facility="f2", line="3"), BASE_MS)
    d.now = BASE_MS + 10_000
    d.settle()
    (fired,) = d.transitions
    assert fired.dedup_key == "line-hot:facility=f1,line=3"
    assert fired.body["message"] == "facility=f1,line=3 mean 60"
    assert len(d.aggregates) == 2


def test_late_and_refused_readings_come_back_in_the_output() -> None:
    eng = engine(OVERHEAT)
    t = BASE_MS
    eng.observe(Reading("d1", t + 15_000, 1.0), t + 15_000)
    eng.advance(t + 15_000)
    out = eng.observe(Reading("d1", t + 1_000, 1.0), t + 15_000)
    assert [(x.reason, x.window, x.key) for x in out.late] == [("late", "w10s", "d1")]
    out = eng.observe(Reading("d1", t + 16_000, 1.0, quality="bad"), t + 16_000)
    assert [x.reason for x in out.late] == ["bad_quality"]
    assert eng.observe(Reading("d1", t + 16_000, 1.0), t + 16_000) is not None
    assert not eng.observe(Reading("d1", t + 16_500, 1.0), t + 16_500)


def test_output_events_put_aggregates_before_alerts() -> None:
    eng = engine(OVERHEAT)
    for i in range(3):
        eng.observe(Reading("d1", BASE_MS + i * 1000, 95.0), BASE_MS + i * 1000)
    out = eng.advance(BASE_MS + 11_000)
    assert [e.kind for e in out.events()] == ["aggregate", "alert"]


def test_flush_closes_and_evaluates_open_windows() -> None:
    eng = engine(OVERHEAT)
    eng.observe(Reading("d1", BASE_MS, 95.0), BASE_MS)
    out = eng.flush(BASE_MS + 100)
    assert [a.closed_by for a in out.aggregates] == ["flush"]
    assert [t.transition for t in out.transitions] == ["firing"]


def test_observe_many_gathers_transitions_and_refusals() -> None:
    eng = engine({"id": "batt", "kind": "low_battery", "below": 3.3})
    t = BASE_MS
    out = eng.observe_many([Reading("d1", t, 20.0, battery_voltage=3.2),
                            Reading("d2", t, 20.0, quality="bad"),
                            Reading("d3", t, 20.0, battery_voltage=3.1)], now_ms=t)
    assert [x.dedup_key for x in out.transitions] == ["batt:d1", "batt:d3"]
    assert [x.reason for x in out.late] == ["bad_quality"]
