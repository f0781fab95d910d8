"""Pipeline: decode → dead-letter / commit → observers, against a real SQLite buffer."""

from __future__ import annotations

import json

import pytest

from edge.model import FLAG_TS_MISSING
from edge.testing import FakeClock
from gateway.buffer import Buffer, BufferSettings
from gateway.errors import BufferBusy
from gateway.ingest import Origin
from gateway.pipeline import DeviceDefaults, Pipeline

SEED = {"device_id": "sensor_001_line1", "device_type": "temperature",
        "timestamp": 1705322445000, "value": 72.5, "unit": "celsius",
        "location": {"facility": "factory_a", "line": 1, "zone": "assembly"},
        "quality": "good", "battery_voltage": 4.8}


def msg(**over):
    m = dict(SEED)
    m.update(over)
    return json.dumps(m).encode()


@pytest.fixture
async def buffer(tmp_path):
    async with Buffer(BufferSettings(path=str(tmp_path / "b.sqlite3"), commit_interval_ms=1),
                      clock=FakeClock()) as buf:
        yield buf


async def test_valid_payload_is_committed_and_observed(buffer) -> None:
    seen = []
    pipe = Pipeline(buffer, clock=FakeClock())
    pipe.add_observer(seen.extend)
    out = await pipe.ingest(msg(), Origin("mqtt", device_hint="sensor_001_line1"))
    assert out.ok and out.accepted == 1
    assert [r.value for r in seen] == [72.5]
    st = buffer.stats()
    assert st.rows["raw"] == 1
    # a redelivery is recognised by its idempotency key
    again = await pipe.ingest(msg(), Origin("mqtt", device_hint="sensor_001_line1"))
    assert again.duplicates == 1 and again.accepted == 0
    assert buffer.stats().rows["raw"] == 1


async def test_malformed_payload_is_dead_lettered_not_raised(buffer) -> None:
    pipe = Pipeline(buffer, clock=FakeClock())
    out = await pipe.ingest(b"{not json", Origin("coap", peer="10.0.0.9"))
    assert out.rejected == "malformed_payload"
    letters = await buffer.dead_letters()
    assert len(letters) == 1
    assert letters[0].raw == b"{not json" and letters[0].source == "coap"
    assert pipe.stats.rejected["malformed_payload"] == 1


async def test_partial_batch_stores_good_and_dead_letters_raw(buffer) -> None:
    pipe = Pipeline(buffer, clock=FakeClock())
    items = [SEED, dict(SEED, value="hot"), dict(SEED, timestamp=1705322446000, value=73.0)]
    payload = json.dumps(items).encode()
    out = await pipe.ingest(payload, Origin("coap"))
    assert out.ok and out.accepted == 2
    assert "[1] wrong_type" in out.detail
    letters = await buffer.dead_letters()
    assert [d.raw for d in letters] == [payload]
    assert letters[0].reason == "wrong_type"


async def test_unknown_device_rejected_by_policy(buffer) -> None:
    pipe = Pipeline(buffer, known_device=lambda d: d == "known", clock=FakeClock())
    out = await pipe.ingest(msg(), Origin("mqtt"))
    assert out.rejected == "unknown_device"
    assert (await buffer.dead_letters())[0].reason == "unknown_device"
    assert buffer.stats().rows.get("raw", 0) == 0


async def test_bare_number_uses_registry_defaults(buffer) -> None:
    clock = FakeClock()
    pipe = Pipeline(buffer, registry={"p7": DeviceDefaults(facility="factory_a", line="2",
                                                            measurement="pressure",
                                                            unit="bar")}, clock=clock)
    out = await pipe.ingest(b"3.25", Origin("mqtt", device_hint="p7"))
    assert out.ok
    r = out.readings[0]
    assert (r.device_id, r.measurement, r.unit, r.facility, r.line) == (
        "p7", "pressure", "bar", "factory_a", "2")
    assert r.flags & FLAG_TS_MISSING and r.ts_ms == clock.now_ms() == r.received_ms


class RefusingBuffer:
    async def append(self, readings, *, durable=True):
        from gateway.buffer import AppendResult
        return AppendResult(refused=len(readings), refused_reason="full_of_alerts")

    async def dead_letter(self, raw, **kw):  # pragma: no cover - not reached
        raise AssertionError


async def test_buffer_refusal_is_retriable_so_nothing_is_acked() -> None:
    pipe = Pipeline(RefusingBuffer(), clock=FakeClock())
    with pytest.raises(BufferBusy):
        await pipe.ingest(msg(), Origin("mqtt"), durable=True)
    assert pipe.stats.refused["full_of_alerts"] == 1


async def test_observer_failure_does_not_cost_the_ack(buffer) -> None:
    pipe = Pipeline(buffer, clock=FakeClock())

    def boom(_):
        raise RuntimeError("bug")
    pipe.add_observer(boom)
    out = await pipe.ingest(msg(), Origin("serial"))
    assert out.ok and pipe.stats.observer_errors == 1
