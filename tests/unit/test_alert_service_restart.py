"""Persistence: a crashed (aborted, never shut down) or restarted alert service neither
forgets a firing alert nor fires it twice, and delivers what was pending."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
import zstandard
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from edge.model import Reading
from edge.rules import parse_rules
from edge.testing import FakeClock
from gateway.alerts import AlertService, AlertSettings, AlertStore, WebhookTarget
from gateway.alerts.store import Entry, Mark, encode_snapshot
from gateway.alerts.testing import (
    RecordingBroker,
    RecordingSink,
    WebhookReceiver,
    feed,
    wait_until,
)

T0 = 1_705_322_400_000
RULES: dict[str, Any] = {
    "version": 1,
    "windows": [{"id": "w1s", "kind": "tumbling", "size": "1s", "lateness": "100ms",
                 "idle_timeout": "200ms"}],
    "rules": [{"id": "overheat", "window": "w1s", "match": {"measurement": "temperature"},
               "condition": "max > 90", "clear": "max < 85", "severity": "critical",
               "message": "{device_id} max {max:.1f}"},
              {"id": "stale", "kind": "stale", "after": "2s", "severity": "warning"}],
}


class Life:
    """One process lifetime of the service: its own broker and sink (a restart gets new
    ones, as a new process would), the state file and clock are shared."""

    def __init__(self, svc: AlertService, broker: RecordingBroker, sink: RecordingSink,
                 clock: FakeClock) -> None:
        self.svc, self.broker, self.sink, self.clock = svc, broker, sink, clock

    async def feed(self, seconds: float, values: dict[str, float]) -> None:
        await feed(self.svc, self.clock, seconds, values)

    def published(self, rule: str = "overheat") -> list[tuple[str, int, int]]:
        return [(s["transition"], s["incarnation"], s["at_ms"])
                for s in self.broker.states("alerts/") if s["rule"] == rule]

    def transitions(self, rule: str = "overheat", *, before: Life | None = None
                    ) -> list[tuple[str, int]]:
        """(transition, incarnation) published in this life; with `before`, without the
        ones that life had published already (delivery is at least once: a crash between
        a delivery and its record repeats it after the restart)."""
        seen = set(before.published(rule)) if before is not None else set()
        return [(t, i) for t, i, at in self.published(rule) if (t, i, at) not in seen]


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    clock = FakeClock(wall_ms=T0)
    lives: list[Life] = []

    async def _start(*hooks: WebhookTarget, rules: dict[str, Any] | None = None,
                     **over: Any) -> Life:
        s = AlertSettings(state_path=tmp_path / "alerts.sqlite3", gateway_id="gw-1",
                          tick_s=None, webhooks=hooks, retry_base_s=0.02, retry_cap_s=0.1,
                          **over)
        broker, sink = RecordingBroker(), RecordingSink()
        svc = AlertService(s, buffer=sink, mqtt=broker, clock=clock,
                           ruleset=parse_rules(rules or RULES))
        await svc.__aenter__()
        life = Life(svc, broker, sink, clock)
        lives.append(life)
        return life

    yield _start
    for life in lives:
        await life.svc.__aexit__(None, None, None)   # no-op for aborted ones


@pytest.mark.parametrize("snapshot_every_s", [0.3, 1e9])
async def test_crash_after_firing_no_second_firing_one_resolution(
        start: Start, snapshot_every_s: float) -> None:
    first = await start(snapshot_interval_s=snapshot_every_s)
    await first.feed(1.5, {"oven-1": 95.0})
    assert first.transitions() == [("firing", 1)]
    assert (first.svc.stats().get("snapshots", 0) > 0) == (snapshot_every_s < 1)
    first.svc.abort()                                # no shutdown, no final snapshot

    second = await start()
    assert second.svc.alert("overheat:oven-1")["state"] == "firing"
    await second.feed(2.0, {"oven-1": 96.0})         # the same condition goes on
    assert second.transitions(before=first) == []
    await second.feed(2.0, {"oven-1": 60.0})         # clear
    assert second.transitions(before=first) == [("resolved", 1)]
    await second.feed(1.5, {"oven-1": 95.0})         # a new alert: the next incarnation
    assert second.transitions(before=first) == [("resolved", 1), ("firing", 2)]


async def test_crash_with_resolution_pending_delivers_it_once_after_restart(
        start: Start) -> None:
    async with WebhookReceiver() as hook:
        target = WebhookTarget(hook.url, "pagerduty", "RK")
        first = await start(target)
        await first.feed(1.5, {"oven-1": 95.0})
        await hook.wait_for(1)
        hook.script = [503] * 1000                   # the receiver goes down
        await first.feed(2.0, {"oven-1": 60.0})      # resolved: stuck in the outbox
        await wait_until(lambda: len(hook.requests) >= 2)
        first.svc.abort()

        hook.script = []                             # ... and is back for the restart
        second = await start(target)
        await hook.wait_for(2)
        await second.feed(2.0, {"oven-1": 60.0})
        assert [b["event_action"] for b in hook.bodies] == ["trigger", "resolve"]
        assert second.svc.alert("overheat:oven-1") is None
        # the buffer had taken both before the crash, and that was recorded: not again
        assert [e.body["transition"] for e in first.sink.of_kind("alert")] == [
            "firing", "resolved"]
        assert second.sink.of_kind("alert") == []


async def test_acknowledgement_survives_a_crash(start: Start) -> None:
    first = await start()
    await first.feed(1.5, {"oven-1": 95.0})
    assert await first.svc.acknowledge("overheat:oven-1", "ops", source="test") is not None
    first.svc.abort()
    second = await start()
    alert = second.svc.alert("overheat:oven-1")
    assert alert["state"] == "acknowledged" and alert["acked_by"] == "ops"
    assert await second.svc.acknowledge("overheat:oven-1", "ops2", source="test") is None


async def test_stale_alert_restored_resolves_on_the_next_reading(start: Start) -> None:
    first = await start()
    await first.feed(1.0, {"oven-1": 60.0, "oven-2": 60.0})
    await first.feed(3.0, {"oven-1": 60.0})          # oven-2 silent for 2 s: stale fires
    assert first.transitions("stale") == [("firing", 1)]
    first.svc.abort()
    second = await start()
    await second.feed(3.0, {"oven-1": 60.0})         # still silent: not flagged twice
    assert second.transitions("stale", before=first) == []
    await second.feed(0.5, {"oven-1": 60.0, "oven-2": 60.0})
    assert second.transitions("stale", before=first) == [("resolved", 1)]


async def test_clean_restart_keeps_the_open_window(start: Start) -> None:
    first = await start()
    await first.feed(0.5, {"oven-1": 95.0})          # half a window, hot
    await first.svc.__aexit__(None, None, None)      # clean: full snapshot with windows
    second = await start()
    await second.feed(1.0, {"oven-1": 80.0})         # the rest of it is cool
    # the window [0 s, 1 s) still holds the hot half: its max fires the alert
    assert second.transitions() == [("firing", 1)]


async def test_replay_without_any_snapshot(start: Start, tmp_path: Path) -> None:
    first = await start(snapshot_interval_s=1e9)
    await first.feed(1.5, {"oven-1": 95.0})
    first.svc.abort()                                # the firing is only in the outbox
    store = AlertStore(tmp_path / "alerts.sqlite3")
    try:
        loaded = store.load()
    finally:
        store.close()
    assert loaded.snapshot is None and [r["transition"] for r in loaded.replay] == ["firing"]
    second = await start()
    assert second.svc.alert("overheat:oven-1")["incarnation"] == 1
    await second.feed(1.5, {"oven-1": 95.0})
    assert second.transitions(before=first) == []


async def test_unrestorable_state_is_kept_aside_and_the_service_starts(
        start: Start, tmp_path: Path) -> None:
    first = await start()
    await first.feed(1.5, {"oven-1": 95.0})
    await first.svc.__aexit__(None, None, None)
    store = AlertStore(tmp_path / "alerts.sqlite3")
    try:
        store.commit([], snapshot=encode_snapshot({"version": 42}))
    finally:
        store.close()
    second = await start()
    assert second.svc.stats()["restore_failed"] == 1
    assert second.svc.alert("overheat:oven-1") is None
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()  # noqa: ASYNC240
            if "unrestorable" in p.name] == ["alerts.sqlite3.unrestorable"]


async def test_reload_keeps_state_and_refuses_a_bad_file(start: Start, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    life = await start(rules_file=rules)
    life.svc._ruleset = None                         # reload reads the file from now on
    await life.feed(1.5, {"oven-1": 95.0})
    changed = {**RULES, "rules": [dict(RULES["rules"][0], message="hot {device_id}")]}
    rules.write_text(yaml.safe_dump(changed))
    assert life.svc.reload() is True
    await life.feed(1.5, {"oven-1": 95.0})
    # still firing (no new firing); the stale rule is gone (nothing was firing for it)
    assert life.transitions() == [("firing", 1)]
    rules.write_text("version: 1\nrules:\n  - id: x\n    condition: 'p96 > 1'\n")
    assert life.svc.reload() is False
    assert life.svc.stats()["rule_reloads"] == {"ok": 1, "failed": 1}
    await life.feed(2.0, {"oven-1": 60.0})           # the kept rules still resolve it
    assert life.transitions() == [("firing", 1), ("resolved", 1)]
    rules.write_text(yaml.safe_dump({**RULES, "rules": []}))
    await life.feed(1.5, {"oven-1": 95.0})
    assert life.svc.reload() is True                 # removing the rule resolves its alert
    await life.feed(0.2, {})
    assert life.transitions()[-2:] == [("firing", 2), ("resolved", 2)]
    assert [s["reason"] for s in life.broker.states("alerts/")][-1] == "rule_removed"


async def test_readings_during_a_snapshot_are_filed_at_once(start: Start) -> None:
    life = await start()
    await life.feed(0.5, {"oven-1": 60.0})
    saving = asyncio.create_task(life.svc.save_snapshot())
    await asyncio.sleep(0)               # the engine state is copied; the write goes on
    now = life.clock.now_ms()
    life.svc.observe([Reading("oven-1", now, 99.0, received_ms=now)])
    assert life.svc.engine.windowers["w1s"].series_count == 1   # filed, not held
    await saving
    assert life.svc.stats()["snapshots"] == 1
    await life.feed(1.5, {"oven-1": 60.0})
    assert life.transitions() == [("firing", 1)]     # the 99 °C reading counted


async def test_transitions_committed_while_a_snapshot_is_written_are_replayed(
        start: Start) -> None:
    first = await start()
    await first.feed(1.5, {"oven-1": 95.0})
    assert first.transitions() == [("firing", 1)]
    saving = asyncio.create_task(first.svc.save_snapshot())
    await asyncio.sleep(0)               # copied: the snapshot has the alert firing
    assert await first.svc.acknowledge("overheat:oven-1", "ops", source="test") is not None
    await saving
    first.svc.abort()
    second = await start()
    alert = second.svc.alert("overheat:oven-1")
    assert alert is not None and alert["state"] == "acknowledged"


def test_store_ids_are_never_reused_and_prune_keeps_what_is_needed(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "s.sqlite3")
    try:
        def rec(i: int) -> dict[str, Any]:
            return {"dedup_key": "r:d", "transition": "firing", "at_ms": i}
        first = store.commit([Entry(rec(1), (("mqtt", 0),)), Entry(rec(2), (("mqtt", 0),))])
        assert [p.outbox_id for p in first] == [1, 2]
        store.mark([Mark(1, "mqtt", "delivered", 1)])
        store.commit([], snapshot=encode_snapshot({"version": 1}))   # covers 1 and 2
        # 2 is still pending: only 1 may go
        assert store.prune(older_than_ms=10**15, keep_rows=0) == 1
        later = store.commit([Entry(rec(3), (("mqtt", 0),))])
        assert [p.outbox_id for p in later] == [3]   # not 1 again
        store.mark([Mark(2, "mqtt", "delivered", 1), Mark(3, "mqtt", "delivered", 1)])
        assert store.prune(older_than_ms=10**15, keep_rows=0) == 1   # 3 is after the snapshot
        loaded = store.load()
        assert [r["at_ms"] for r in loaded.replay] == [3] and loaded.pending == []
        assert store.counts() == {"mqtt": {"delivered": 1}}
    finally:
        store.close()


@hsettings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=60) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=8),
    max_leaves=400))
def test_snapshot_packed_piecewise_is_exactly_packb(tree: Any) -> None:
    """`encode_snapshot` packs big containers element by element (the GIL goes back to the
    event loop in between); the bytes must be those of one `packb`."""
    snap = {"version": 1, "windows": {"w10s": {"series": [tree] * 40}}, "tree": tree,
            "arrays": {"a": b"\x01" * 4096, "b": b"\x02" * 65535, "c": b"\x03" * 65536,
                       "d": b"\x04" * 70_000, "e": b"\x05" * 4095}}
    blob = encode_snapshot(snap)
    assert zstandard.ZstdDecompressor().decompress(blob) == msgpack.packb(snap,
                                                                          use_bin_type=True)
