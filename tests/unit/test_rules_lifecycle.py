"""Persistence and reload: snapshot/restore mid-firing, replace_rules keeping state."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from test_rules_engine import OVERHEAT, W10, Driver
from test_windows_timeline import BASE_MS

from edge.model import Reading
from edge.rules import AlertEngine, parse_rules

STALE = {"id": "stale", "kind": "stale", "after": "30s"}


def ruleset(*rules: dict[str, Any], windows: list[dict] | None = None):
    return parse_rules({"windows": windows or [W10], "rules": list(rules)})


def through_json(snap: dict) -> dict:
    return json.loads(json.dumps(snap))


def through_msgpack(snap: dict) -> dict:
    """As the gateway stores a snapshot (window values are bytes: not JSON)."""
    return msgpack.unpackb(msgpack.packb(snap, use_bin_type=True), raw=False,
                           strict_map_key=False)


def test_restore_mid_firing_neither_forgets_nor_fires_twice() -> None:
    rs = ruleset({**OVERHEAT, "cooldown": "1m"})
    d = Driver(AlertEngine(rs, now_ms=BASE_MS))
    d.windows(95)
    assert d.kinds() == [("firing", "overheat:d1")]
    snap = through_json(d.eng.snapshot())
    # the gateway restarts: same windows fed again (a replayed buffer) and more hot ones
    eng = AlertEngine.restore(rs, snap, now_ms=d.now)
    assert [a["dedup_key"] for a in eng.active_alerts()] == ["overheat:d1"]
    d2 = Driver(eng, t0=BASE_MS)
    d2.windows(95, 96)
    assert "firing" not in [k for k, _ in d2.kinds()]
    d2.windows(80)
    resolved = [t for t in d2.transitions if t.transition == "resolved"]
    assert len(resolved) == 1 and resolved[0].body["incarnation"] == 1
    assert resolved[0].body["fired_at_ms"] == d.transitions[0].body["fired_at_ms"]


def test_restore_keeps_acknowledgement_incarnations_and_streaks() -> None:
    p95 = {"id": "p95", "window": "w10s", "match": {"measurement": "temperature"},
           "condition": "p95 > 85 for 3 windows"}
    rs = ruleset(OVERHEAT, p95)
    d = Driver(AlertEngine(rs, now_ms=BASE_MS))
    d.windows(95, 70, 95)  # overheat incarnation 2 firing; p95 streak at 1
    d.eng.acknowledge("overheat:d1", "op", d.now)
    eng = AlertEngine.restore(rs, through_json(d.eng.snapshot()), now_ms=d.now)
    (alert,) = eng.active_alerts()
    assert (alert["state"], alert["acked_by"], alert["incarnation"]) == ("acknowledged", "op", 2)
    d2 = Driver(eng, t0=d.now)
    d2.windows(88, 88)  # the streak continues across the restart: 3 windows in a row
    assert d2.kinds() == [("firing", "p95:d1")]
    d2.windows(70)
    fired = [t for t in d2.transitions if t.dedup_key == "overheat:d1"]
    assert [(t.transition, t.body["incarnation"]) for t in fired] == [("resolved", 2)]


def test_restore_with_windows_loses_no_partial_window() -> None:
    rs = ruleset(OVERHEAT)
    eng = AlertEngine(rs, now_ms=BASE_MS)
    for i in range(5):
        eng.observe(Reading("d1", BASE_MS + i * 1000, 95.0 if i == 2 else 20.0),
                    BASE_MS + i * 1000)
    snap = through_msgpack(eng.snapshot(include_windows=True))
    assert "windows" in snap and "windows" not in eng.snapshot()
    eng2 = AlertEngine.restore(rs, snap, now_ms=BASE_MS + 60_000)
    for i in range(5, 10):
        eng2.observe(Reading("d1", BASE_MS + i * 1000, 20.0), BASE_MS + 60_000)
    out = eng2.advance(BASE_MS + 62_000)
    (agg,) = out.aggregates
    assert (agg.count, agg.aggregates["max"]) == (10, 95.0)
    assert [t.transition for t in out.transitions] == ["firing"]


def test_restore_does_not_turn_downtime_into_a_stale_storm() -> None:
    rs = ruleset(STALE)
    eng = AlertEngine(rs, now_ms=BASE_MS)
    for dev in ("a", "b"):
        eng.observe(Reading(dev, BASE_MS, 1.0), BASE_MS)
    eng.advance(BASE_MS + 1000)
    back = BASE_MS + 3_600_000  # an hour later
    eng2 = AlertEngine.restore(rs, through_json(eng.snapshot()), now_ms=back)
    assert not eng2.advance(back + 29_999).transitions
    eng2.observe(Reading("a", back + 100, 1.0), back + 100)
    (fired,) = eng2.advance(back + 30_000).transitions  # b never came back
    assert fired.dedup_key == "stale:b"


def test_restore_resolves_alerts_of_rules_that_are_gone() -> None:
    rs = ruleset(OVERHEAT, STALE)
    d = Driver(AlertEngine(rs, now_ms=BASE_MS))
    d.windows(95)
    snap = through_json(d.eng.snapshot())
    eng = AlertEngine.restore(ruleset(STALE), snap, now_ms=d.now)
    (resolved,) = eng.advance(d.now).transitions
    assert (resolved.dedup_key, resolved.body["reason"]) == ("overheat:d1", "rule_removed")
    assert not eng.advance(d.now + 1).transitions


def test_restore_refuses_an_unknown_snapshot_version() -> None:
    with pytest.raises(ValueError, match="snapshot version"):
        AlertEngine.restore(ruleset(OVERHEAT), {"version": 99}, now_ms=BASE_MS)


def test_replace_rules_keeps_state_of_persisting_rules_and_windows() -> None:
    rs = ruleset(OVERHEAT, STALE)
    d = Driver(AlertEngine(rs, now_ms=BASE_MS))
    d.windows(95)
    for i in range(3):  # an open window with data
        d.take(d.eng.observe(Reading("d1", d.now + i * 1000, 96.0), d.now + i * 1000))
    reload = d.eng.replace_rules(ruleset({**OVERHEAT, "message": "hot {max}"}, STALE))
    assert reload.windows_kept == ("w10s",) and not reload.output
    assert reload.rules_added == () and reload.rules_removed == ()
    count = len(d.transitions)
    d.now += 10_000
    d.settle()
    assert len(d.transitions) == count  # still firing: no second firing
    (agg,) = d.aggregates[-1:]
    assert agg.count == 3  # the open window survived the reload
    d.windows(50)
    assert d.kinds()[-1] == ("resolved", "overheat:d1")


def test_replace_rules_resolves_removed_and_unmatched_and_restarts_changed_windows() -> None:
    d = Driver(AlertEngine(ruleset(OVERHEAT, STALE), now_ms=BASE_MS))
    d.windows(95)
    d.windows(95, device="oven-1")
    d.take(d.eng.observe(Reading("d1", d.now, 20.0), d.now))
    changed_window = {**W10, "size": "20s"}
    narrowed = {**OVERHEAT, "match": {"device": "oven-*", "measurement": "temperature"}}
    reload = d.eng.replace_rules(ruleset(narrowed, windows=[changed_window]))
    got = sorted((t.dedup_key, t.body["reason"]) for t in reload.output.transitions)
    assert got == [("overheat:d1", "rule_changed")]  # oven-1 still matches and keeps firing
    assert reload.windows_restarted == ("w10s",) and reload.rules_removed == ("stale",)
    assert [(a.closed_by, a.count) for a in reload.output.aggregates] == [("reload", 1)]
    assert [a["dedup_key"] for a in d.eng.active_alerts()] == ["overheat:oven-1"]
    d.take(d.eng.observe(Reading("d9", d.now + 1, 1.0), d.now + 1))
    assert not d.eng.advance(d.now + 3_600_000).transitions  # stale rule gone entirely


def test_replace_rules_cooldown_change_applies_to_firing_alerts() -> None:
    d = Driver(AlertEngine(ruleset(OVERHEAT), now_ms=BASE_MS))
    d.windows(95)
    fired_at = d.transitions[0].at_ms
    d.eng.replace_rules(ruleset({**OVERHEAT, "cooldown": "10s"}))
    out = d.eng.advance(fired_at + 10_000)
    assert [t.transition for t in out.transitions] == ["renotify"]
