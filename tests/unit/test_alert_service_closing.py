"""When the alert service closes windows: at once when a reading makes them due or an idle
deadline passes (not at the next tick), a backlog in bounded batches with its alerts
committed batch by batch, and the aggregates forwarded after — from the lazy batches."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge.backoff import Backoff
from edge.clock import SystemClock
from edge.model import Reading
from edge.rules import parse_rules
from edge.testing import FakeClock
from edge.windows import Windower, WindowSpec
from gateway.alerts import AlertService, AlertSettings
from gateway.alerts.aggregates import AggregateForwarder
from gateway.alerts.testing import RecordingBroker, RecordingSink, feed, wait_until

T0 = 1_705_322_400_000


def rules(idle: str = "5s") -> Any:
    return parse_rules({
        "version": 1,
        "windows": [{"id": "w1s", "kind": "tumbling", "size": "1s", "lateness": "100ms",
                     "idle_timeout": idle}],
        "rules": [{"id": "overheat", "window": "w1s", "match": {"measurement": "temperature"},
                   "condition": "max > 90", "clear": "max < 85", "severity": "critical",
                   "message": "{device_id} max {max:.1f}"}],
    })


Make = Callable[..., Any]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    started: list[AlertService] = []

    async def _make(clock: Any = None, idle: str = "5s", **over: Any
                    ) -> tuple[AlertService, RecordingBroker, RecordingSink]:
        broker, sink = RecordingBroker(), RecordingSink()
        base: dict[str, Any] = {"state_path": tmp_path / f"a{len(started)}.sqlite3",
                                "gateway_id": "gw-1"}
        svc = AlertService(AlertSettings(**(base | over)), buffer=sink, mqtt=broker,
                           clock=clock or SystemClock(), ruleset=rules(idle))
        await svc.__aenter__()
        started.append(svc)
        return svc, broker, sink

    yield _make
    for svc in started:
        await svc.__aexit__(None, None, None)


def firings(broker: RecordingBroker) -> list[str]:
    return [s["device"] for s in broker.states("alerts/") if s["state"] == "firing"]


async def test_a_reading_that_makes_a_window_due_closes_it_at_once(make: Make) -> None:
    svc, broker, _ = await make(tick_s=30.0)          # no tick during the test
    now = svc.clock.now_ms()
    start = now - now % 1000 - 3000
    svc.observe([Reading("oven-1", start + 500, 95.0, received_ms=now)])
    await asyncio.sleep(0.2)
    assert firings(broker) == []                     # not due: nothing closed
    crossing = svc.clock.now_ms()
    svc.observe([Reading("oven-1", start + 1000 + 100, 60.0, received_ms=crossing)])
    await wait_until(lambda: firings(broker) == ["oven-1"], 2.0)
    lag = svc.stats()["close_lag_ms"]
    assert lag["windows"] == 1 and 0 <= lag["max"] < 500
    assert svc.stats()["windows_closed_by"] == {"watermark": 1}


async def test_an_idle_deadline_wakes_the_ticker(make: Make) -> None:
    svc, broker, _ = await make(tick_s=30.0, idle="300ms")
    now = svc.clock.now_ms()
    end = now - now % 1000 + 1000
    svc.observe([Reading("oven-1", end - 100, 95.0, received_ms=now)])
    # the window ends (by the sensor's clock) 100 ms after its reading; idle 300 ms later
    deadline = now + 100 + 300
    assert svc.engine.next_deadline_ms() == deadline + (-deadline) % 10
    await wait_until(lambda: firings(broker) == ["oven-1"], 3.0)
    assert svc.stats()["windows_closed_by"] == {"idle": 1}
    assert svc.stats()["close_lag_ms"]["max"] < 500


async def test_a_backlog_closes_in_bounded_batches_alerts_committed_batch_by_batch(
        make: Make) -> None:
    clock = FakeClock(wall_ms=T0)
    svc, broker, sink = await make(clock=clock, tick_s=None, close_batch=3, idle="300ms")
    devices = {f"oven-{i}": 95.0 for i in range(10)}
    await feed(svc, clock, 1.5, devices)
    calls = [(closed, transitions) for _, _, closed, transitions in svc.ticks if closed]
    assert calls and all(closed <= 3 for closed, _ in calls)
    assert sum(t for _, t in calls) == 10 == svc.stats()["transitions"]["firing"]
    assert sorted(firings(broker)) == sorted(devices)
    await wait_until(lambda: len(sink.of_kind("aggregate")) == 10)
    assert sorted(e.device_id for e in sink.of_kind("aggregate")) == sorted(devices)


async def test_forwarder_waits_while_windows_are_being_closed() -> None:
    sink = RecordingSink()
    clear = asyncio.Event()
    counters: Counter[str] = Counter()
    fwd = AggregateForwarder(sink, backoff=Backoff(base=0.01, cap=0.05), max_pending=1000,
                             counters=counters, clear=clear)
    task = asyncio.get_running_loop().create_task(fwd.run(), name="test-forwarder")
    try:
        batch = closed(12)
        fwd.add(batch)
        assert len(fwd) == 12
        await asyncio.sleep(0.7)                 # past the linger: still waiting
        assert sink.events == [] and len(fwd) == 12
        clear.set()
        assert await fwd.drain(2.0)
        assert sink.events == [r.to_event() for r in batch]
        assert counters["aggregates_buffered"] == 12 and fwd.cpu_s > 0
    finally:
        task.cancel()


async def test_forwarder_overflow_drops_the_oldest_windows() -> None:
    sink = RecordingSink()
    counters: Counter[str] = Counter()
    fwd = AggregateForwarder(sink, backoff=Backoff(base=0.01, cap=0.05), max_pending=10,
                             counters=counters)
    old, new = closed(8, device="old"), closed(6, device="new")
    fwd.add(old)
    fwd.add(new)
    assert len(fwd) == 10 and counters["aggregates_dropped"] == 4
    task = asyncio.get_running_loop().create_task(fwd.run(), name="test-forwarder")
    try:
        assert await fwd.drain(2.0)
        assert sink.events == [r.to_event() for r in list(old)[4:] + list(new)]
    finally:
        task.cancel()


def closed(n: int, device: str = "d") -> Any:
    w = Windower(WindowSpec(id="w", size_ms=1000, lateness_ms=0, idle_timeout_ms=100))
    for i in range(n):
        w.observe(Reading(f"{device}{i}", T0 + 10, float(i)), T0 + 10)
    batch = w.close_due(T0 + 5000)
    assert len(batch) == n
    return batch
