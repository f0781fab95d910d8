"""Replaying committed transitions onto an older engine snapshot (gateway.alerts.journal).

The reference is the engine itself: run it past a snapshot, keep the transitions it produced,
replay them onto the snapshot, and the alert book must be the engine's own later one."""

from __future__ import annotations

from typing import Any

import pytest

from edge.model import Reading
from edge.rules import AlertEngine, AlertTransition, GatewayStatus, parse_rules
from gateway.alerts.journal import apply_transitions, scope_of

T0 = 1_705_322_400_000
RULES = parse_rules({
    "version": 1,
    "windows": [{"id": "w1s", "kind": "tumbling", "size": "1s", "lateness": "100ms",
                 "idle_timeout": "200ms"}],
    "rules": [
        {"id": "overheat", "window": "w1s", "match": {"measurement": "temperature"},
         "condition": "max > 90", "clear": "max < 85", "severity": "critical",
         "cooldown": "2s", "message": "{device_id} max {max:.1f}"},
        {"id": "hot3", "window": "w1s", "match": {"measurement": "temperature"},
         "condition": "mean > 80 for 3 windows", "clear": "mean < 70"},
        {"id": "stale", "kind": "stale", "after": "3s"},
        {"id": "battery", "kind": "low_battery", "below": 3.3, "clear_above": 3.4},
        {"id": "buffer", "kind": "buffer_fill", "above_percent": 80,
         "clear_below_percent": 70},
    ],
})


def record(t: AlertTransition) -> dict[str, Any]:
    return {"transition": t.transition, "at_ms": t.at_ms, **t.body}


class Run:
    """An engine fed 10 readings per second per device, one advance per 100 ms."""

    def __init__(self) -> None:
        self.eng = AlertEngine(RULES, now_ms=T0, gateway_id="gw-1")
        self.now = T0
        self.out: list[AlertTransition] = []

    def run(self, seconds: float, values: dict[str, float], *, battery: float = 3.7,
            fill: float = 0.1) -> None:
        for _ in range(int(seconds * 10)):
            for dev, v in values.items():
                r = Reading(dev, self.now, v, facility="plant-1", battery_voltage=battery,
                            received_ms=self.now)
                self.out += self.eng.observe(r, self.now).transitions
            self.now += 100
            self.out += self.eng.advance(self.now, GatewayStatus(fill)).transitions

    def ack(self, key: str) -> None:
        t = self.eng.acknowledge(key, "ops", self.now)
        assert t is not None
        self.out.append(t)


def book(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Active alerts without `values` (the engine refreshes them silently between
    transitions) keyed by dedup key."""
    return {f"{a['rule_id']}:{a['subject']}": {k: v for k, v in a.items() if k != "values"}
            for a in snap["alerts"]["active"]}


def test_replay_reproduces_the_alert_book() -> None:
    run = Run()
    run.run(2, {"oven-1": 60.0, "oven-2": 60.0, "oven-3": 95.0})
    base = run.eng.snapshot(include_windows=True)
    start = len(run.out)
    run.run(3, {"oven-1": 95.0, "oven-3": 95.0}, battery=3.2, fill=0.9)   # oven-2 goes silent
    run.ack("overheat:oven-1")
    run.run(3, {"oven-1": 95.0, "oven-3": 60.0}, fill=0.5)                # renotify, clears
    run.run(1, {"oven-1": 95.0, "oven-2": 60.0, "oven-3": 60.0})          # oven-2 is back
    records = [record(t) for t in run.out[start:]]
    kinds = {(r["transition"], r["rule_id"]) for r in records}
    assert {("firing", "overheat"), ("acknowledged", "overheat"), ("renotify", "overheat"),
            ("resolved", "overheat"), ("firing", "stale"), ("resolved", "stale"),
            ("firing", "battery"), ("resolved", "battery"), ("firing", "buffer"),
            ("resolved", "buffer")} <= kinds

    final = run.eng.snapshot(include_windows=True)
    replayed = apply_transitions(base, records)
    assert book(replayed) == book(final)
    assert replayed["alerts"]["incarnations"] == final["alerts"]["incarnations"]
    assert {r: s["silent"].keys() for r, s in replayed["stale"].items()} == \
           {r: s["silent"].keys() for r, s in final["stale"].items()}
    assert base["alerts"] != final["alerts"]  # the test is not vacuous
    # every subject with a transition restarts its windows; the others keep theirs
    keys = set(replayed["windows"]["w1s"]["keys"])
    assert keys == set(base["windows"]["w1s"]["keys"]) - {r["device_id"] for r in records}


def test_restored_engine_neither_refires_nor_forgets() -> None:
    run = Run()
    run.run(1.5, {"oven-1": 60.0})
    base = run.eng.snapshot(include_windows=True)
    start = len(run.out)
    run.run(2, {"oven-1": 95.0})
    records = [record(t) for t in run.out[start:]]
    assert [r["transition"] for r in records if r["rule_id"] == "overheat"] == ["firing"]

    eng = AlertEngine.restore(RULES, apply_transitions(base, records), now_ms=run.now)
    again = Run()
    again.eng, again.now = eng, run.now
    again.run(2, {"oven-1": 96.0})                  # the same condition: no second firing
    assert [t.transition for t in again.out if t.body["rule_id"] == "overheat"] == [
        "renotify"]                                 # (its 2 s cooldown still applies)
    again.run(2, {"oven-1": 60.0})                  # the clear: one resolution
    ends = [t for t in again.out if t.body["rule_id"] == "overheat"
            and t.transition in ("firing", "resolved")]
    assert [(t.transition, t.body["incarnation"]) for t in ends] == [("resolved", 1)]


def test_replay_onto_an_empty_engine_and_of_unrelated_updates() -> None:
    run = Run()
    base = AlertEngine(RULES, now_ms=T0, gateway_id="gw-1").snapshot(include_windows=True)
    run.run(2, {"oven-9": 99.0})
    records = [record(t) for t in run.out]
    snap = apply_transitions(base, records)
    assert set(book(snap)) == {"overheat:oven-9"}
    # a renotify of an alert the snapshot already knows resolved changes nothing
    stray = dict(records[0], transition="renotify", incarnation=7)
    assert book(apply_transitions(snap, [stray])) == book(snap)


def test_scope_matches_what_the_engine_keeps() -> None:
    run = Run()
    run.run(2, {"oven-1": 99.0}, battery=3.0, fill=0.95)
    snap = run.eng.snapshot()
    scopes = {f"{a['rule_id']}:{a['subject']}": a["scope"] for a in snap["alerts"]["active"]}
    for t in run.out:
        assert scope_of(record(t)) == scopes[t.dedup_key], t.dedup_key


def test_other_snapshot_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        apply_transitions({"version": 99}, [])
