"""Alert delivery from the durable outbox: webhook retries and dead rows (real HTTP on
127.0.0.1), channel independence, order per dedup key, the buffer, the log line."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge.rules import parse_rules
from edge.testing import FakeClock
from gateway.alerts import AlertService, AlertSettings, WebhookTarget
from gateway.alerts.store import AlertStore
from gateway.alerts.testing import RecordingBroker, RecordingSink, WebhookReceiver, feed, wait_until

T0 = 1_705_322_400_000
RULES = parse_rules({
    "version": 1,
    "windows": [{"id": "w1s", "kind": "tumbling", "size": "1s", "lateness": "100ms",
                 "idle_timeout": "200ms"}],
    "rules": [{"id": "overheat", "window": "w1s", "match": {"measurement": "temperature"},
               "condition": "max > 90", "clear": "max < 85", "severity": "critical",
               "message": "{device_id} max {max:.1f}"}],
})


class Rig:
    def __init__(self, svc: AlertService, clock: FakeClock, broker: RecordingBroker,
                 sink: RecordingSink) -> None:
        self.svc, self.clock, self.broker, self.sink = svc, clock, broker, sink

    async def feed(self, seconds: float, values: dict[str, float]) -> None:
        await feed(self.svc, self.clock, seconds, values)


def settings(tmp_path: Path, *hooks: WebhookTarget, **over: Any) -> AlertSettings:
    base: dict[str, Any] = {"state_path": tmp_path / "alerts.sqlite3", "gateway_id": "gw-1",
                            "tick_s": None, "webhooks": hooks, "retry_base_s": 0.02,
                            "retry_cap_s": 0.1}
    base.update(over)
    return AlertSettings(**base)


Make = Callable[..., Any]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    started: list[AlertService] = []

    async def _make(*hooks: WebhookTarget, sink: RecordingSink | None = None,
                    **over: Any) -> Rig:
        clock = FakeClock(wall_ms=T0)
        broker, sink = RecordingBroker(), sink or RecordingSink()
        svc = AlertService(settings(tmp_path, *hooks, **over), buffer=sink, mqtt=broker,
                           clock=clock, ruleset=RULES)
        await svc.__aenter__()
        started.append(svc)
        return Rig(svc, clock, broker, sink)

    yield _make
    for svc in started:
        await svc.__aexit__(None, None, None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_5xx_and_timeouts_are_retried_until_delivered_once(make: Make) -> None:
    async with WebhookReceiver([503, (202, 1.0), 500]) as hook:
        rig = await make(WebhookTarget(hook.url, "pagerduty", "RK", timeout_s=0.3))
        await rig.feed(1.5, {"oven-1": 95.0})
        await wait_until(lambda: hook.answers[-1:] == [202] and len(hook.requests) == 4)
        await asyncio.sleep(0.3)
        assert hook.answers == [503, 202, 500, 202]       # the slow 202 timed out: retried
        # (the server may drop the slow request when the client gives up on it)
        assert [b["event_action"] for b in hook.bodies][-1:] == ["trigger"]
        stats = rig.svc.stats()
        channel = hook_channel(rig)
        assert stats["deliveries"][channel] == {"retried": 3, "delivered": 1}
        assert stats["notifications_failed"] == 3 and stats["outbox_depth"] == 0
        row = (await rig.svc.recent(1))[0]["deliveries"][channel]
        assert row["status"] == "delivered" and row["attempts"] == 4


def hook_channel(rig: Rig) -> str:
    return next(name for name in rig.svc.stats()["deliveries"] if name.startswith("webhook-"))


async def test_4xx_is_dead_kept_with_its_error_and_does_not_block(make: Make) -> None:
    async with WebhookReceiver([400]) as hook:
        rig = await make(WebhookTarget(hook.url, "generic"))
        await rig.feed(1.5, {"oven-1": 95.0})
        await rig.feed(2.0, {"oven-1": 60.0})           # resolves
        await wait_until(lambda: len(hook.bodies) == 1)
        await asyncio.sleep(0.3)                         # no retry of the refused one
        assert hook.answers == [400, 202]
        assert [b["transition"] for b in hook.bodies] == ["resolved"]
        channel = hook_channel(rig)
        assert rig.svc.stats()["deliveries"][channel] == {"dead": 1, "delivered": 1}
        firing = (await rig.svc.recent(2))[1]
        assert firing["transition"] == "firing"
        dead = firing["deliveries"][channel]
        assert dead["status"] == "dead" and "HTTP 400" in dead["error"]


async def test_429_waits_at_least_retry_after(make: Make) -> None:
    async with WebhookReceiver([429], headers={"Retry-After": "0.4"}) as hook:
        rig = await make(WebhookTarget(hook.url, "generic"), retry_cap_s=5.0)
        await rig.feed(1.5, {"oven-1": 95.0})
        await wait_until(lambda: len(hook.bodies) == 1)
        (first, s1), (second, s2) = hook.requests
        assert (s1, s2) == (429, 202) and second - first >= 0.39


async def test_a_down_channel_blocks_no_other_and_order_per_key_holds(make: Make) -> None:
    down = WebhookTarget(f"http://127.0.0.1:{closed_port()}/hook", "generic", timeout_s=0.5)
    async with WebhookReceiver([503, 503, 503]) as flaky:
        rig = await make(down, WebhookTarget(flaky.url, "pagerduty", "RK"))
        await rig.feed(1.5, {"oven-1": 95.0})
        # MQTT and the buffer have it at once, whatever the webhooks do
        assert [s["state"] for s in rig.broker.states("alerts/")] == ["firing"]
        await wait_until(lambda: len(rig.sink.of_kind("alert")) == 1)
        await rig.feed(2.0, {"oven-1": 60.0})
        assert [s["state"] for s in rig.broker.states("alerts/")] == ["firing", "resolved"]
        await wait_until(lambda: len(flaky.bodies) == 2)
        # the flaky webhook got them in order although the first one was retried 3 times
        assert [b["event_action"] for b in flaky.bodies] == ["trigger", "resolve"]
        # the buffer channel may take the resolution after the webhook: only the down
        # channel's two deliveries may be left in the outbox below
        await wait_until(lambda: len(rig.sink.of_kind("alert")) == 2)
        stats = rig.svc.stats()
        assert stats["deliveries"][down.channel].get("delivered", 0) == 0
        assert stats["deliveries"][down.channel]["retried"] >= 1
        assert stats["outbox_depth"] == 2 and stats["outbox_oldest_age_ms"] >= 0
        resolved, firing = await rig.svc.recent(2)
        assert resolved["deliveries"][down.channel]["attempts"] == 0   # waits behind firing
        row = firing["deliveries"][down.channel]
        assert row["status"] == "pending" and row["attempts"] >= 1
        assert "Cannot connect" in row["error"] or "Connect" in row["error"]


async def test_buffer_gets_alert_and_aggregate_events_through_busy_spells(make: Make) -> None:
    sink = RecordingSink(busy=2)
    rig = await make(sink=sink)
    await rig.feed(1.5, {"oven-1": 95.0})
    await wait_until(lambda: len(sink.of_kind("alert")) == 1
                     and bool(sink.of_kind("aggregate")))
    ev = sink.of_kind("alert")[0]
    assert ev.body["transition"] == "firing" and ev.body["dedup_key"] == "overheat:oven-1"
    assert ev.priority > sink.of_kind("aggregate")[0].priority
    stats = rig.svc.stats()
    assert stats["windows_closed"] >= 1
    assert stats["deliveries"]["buffer"].get("retried", 0) + stats.get(
        "aggregate_retries", 0) == 2


async def test_mqtt_retained_state_and_its_clear(make: Make) -> None:
    rig = await make(retain_resolved_s=0.5)
    await rig.feed(1.5, {"oven-1": 95.0})
    topic = "alerts/critical/overheat/oven-1"
    assert json.loads(rig.broker.retained[topic])["state"] == "firing"
    await rig.feed(2.0, {"oven-1": 60.0})
    assert json.loads(rig.broker.retained[topic])["state"] == "resolved"
    assert rig.svc.stats()["retained_clears_scheduled"] == 1
    rig.clock.advance(0.5)
    await wait_until(lambda: topic not in rig.broker.retained)
    assert rig.broker.published[-1].payload == b"" and rig.broker.published[-1].retain


async def test_a_newer_state_supersedes_a_scheduled_clear(make: Make) -> None:
    rig = await make(retain_resolved_s=0.5)
    await rig.feed(1.5, {"oven-1": 95.0})
    await rig.feed(2.0, {"oven-1": 60.0})              # resolved: clear due in 0.5 s
    await rig.feed(1.5, {"oven-1": 95.0})              # fires again (incarnation 2)
    rig.clock.advance(0.5)
    await wait_until(lambda: rig.svc.stats()["retained_clears_scheduled"] == 0)
    topic = "alerts/critical/overheat/oven-1"
    state = json.loads(rig.broker.retained[topic])
    assert (state["state"], state["incarnation"]) == ("firing", 2)
    assert rig.svc.stats()["deliveries"]["mqtt-clear"] == {"superseded": 1}


async def test_each_transition_is_one_structured_log_line(
        make: Make, caplog: pytest.LogCaptureFixture) -> None:
    rig = await make()
    with caplog.at_level(logging.INFO, logger="fieldlink.gateway.alerts"):
        await rig.feed(1.5, {"oven-1": 95.0})
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "alert"]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR  # critical firing
    assert lines[0].fields["dedup_key"] == "overheat:oven-1"  # type: ignore[attr-defined]


async def test_outbox_rows_are_on_disk_before_delivery(make: Make, tmp_path: Path) -> None:
    rig = await make()
    await rig.feed(1.5, {"oven-1": 95.0})
    store = AlertStore(tmp_path / "alerts.sqlite3")    # a second reader sees the commit
    try:
        counts = store.counts()
    finally:
        store.close()
    assert set(counts) == {"mqtt", "buffer"}


async def test_mqtt_channels_wait_for_the_broker_to_be_attached(tmp_path: Path) -> None:
    clock = FakeClock(wall_ms=T0)
    svc = AlertService(settings(tmp_path), buffer=RecordingSink(), clock=clock, ruleset=RULES)
    async with svc:
        await feed(svc, clock, 1.5, {"oven-1": 95.0})
        assert svc.stats()["outbox_depth"] == 1          # the MQTT row waits
        broker = RecordingBroker()
        svc.attach_mqtt(broker)
        await wait_until(lambda: bool(broker.states()))
        assert [s["state"] for s in broker.states()] == ["firing"]
        assert len(broker.subscriptions) == 1            # acks are taken from now on
        svc.detach_mqtt()                                # the broker is stopping
        assert broker.subscriptions == []
        await feed(svc, clock, 2.0, {"oven-1": 60.0})
        assert [s["state"] for s in broker.states()] == ["firing"]
        assert svc.stats()["outbox_depth"] == 1          # the resolution is kept
        again = RecordingBroker()
        svc.attach_mqtt(again)
        await wait_until(lambda: bool(again.states()))
        assert [s["state"] for s in again.states()] == ["resolved"]
