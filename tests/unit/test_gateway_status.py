"""The gateway status record: the pure event builder, and the reporter against a real
buffer file (the record is durable and claimed like any aggregate; it survives the codec)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import edge
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Event
from edge.testing import FakeClock
from gateway.buffer import Buffer, BufferSettings
from gateway.buffer.results import BufferStats
from gateway.statusreport import (
    KIND,
    StatusReporter,
    build_status_event,
    config_version,
    status_key,
    uplink_state,
)
from gateway.uplink.stats import UplinkStats

T0 = 1_705_322_400_000


def _stats(**kw: object) -> BufferStats:
    base: dict[str, object] = dict(
        rows={"raw": 120, "aggregate": 3, "alert": 1}, claimed_rows=10, claims_in_flight=1,
        db_bytes=0, wal_bytes=0, used_bytes=0,
        est_bytes_by_class={"raw": 6000, "aggregate": 600, "alert": 200}, max_bytes=10**9,
        oldest_unsent_age_ms=42_000, seen_keys=0, dead_letter_rows=2, appended={},
        duplicates={}, acked={}, dropped={"evicted": {"raw": 7, "aggregate": 2}, "expired":
                                          {"raw": 1}},
        refused={}, dead_letters={"bad_json": 2, "too_large": 1}, dead_letters_dropped={},
        counters={})
    base.update(kw)
    return BufferStats(**base)  # type: ignore[arg-type]


def test_event_carries_backlog_drops_versions_and_uplink_state() -> None:
    up = UplinkStats(uplink_down_since_ms=T0 - 5000)
    e = build_status_event(T0, gateway_id="gw-1", config_version="abc123", buffer=_stats(),
                           uplink=up)
    assert (e.kind, e.ts_ms, e.device_id) == (KIND, T0, "gw-1")
    assert e.body == {
        "gateway": "gw-1", "firmware_version": edge.__version__, "config_version": "abc123",
        "uplink_state": "backoff", "uplink_down_since_ms": T0 - 5000,
        "backlog_rows": 124, "backlog_bytes": 6800, "backlog_age_ms": 42_000,
        "drops": {"evicted": 9, "expired": 1}, "deadletters": {"bad_json": 2, "too_large": 1}}


def test_empty_backlog_is_zero_and_unknown_buffer_is_none() -> None:
    e = build_status_event(T0, gateway_id="gw", config_version="c",
                           buffer=_stats(rows={}, est_bytes_by_class={},
                                         oldest_unsent_age_ms=None, dropped={},
                                         dead_letters={}), uplink=UplinkStats())
    assert (e.body["backlog_rows"], e.body["backlog_age_ms"], e.body["drops"]) == (0, 0, {})
    assert e.body["uplink_state"] == "up"
    unknown = build_status_event(T0, gateway_id="gw", config_version="c", buffer=None,
                                 uplink=None)
    assert unknown.body["backlog_rows"] is None and unknown.body["backlog_age_ms"] is None
    assert unknown.body["uplink_state"] == "disabled"


def test_uplink_states() -> None:
    assert uplink_state(UplinkStats()) == "up"
    assert uplink_state(UplinkStats(uplink_down_since_ms=1)) == "backoff"
    assert uplink_state(UplinkStats(circuit_open=True, uplink_down_since_ms=1)) == \
        "circuit_open"


def test_key_is_16_bytes_and_a_function_of_gateway_and_time() -> None:
    k = status_key("gw-1", T0)
    assert len(k) == 16 and k == status_key("gw-1", T0)
    assert k != status_key("gw-1", T0 + 1) and k != status_key("gw-2", T0)
    a = build_status_event(T0, gateway_id="gw-1", config_version="x", buffer=None, uplink=None)
    assert a.key == k


def test_config_version_is_stable_and_changes_with_the_config() -> None:
    assert config_version(b"a: 1\n") == config_version(b"a: 1\n")
    assert config_version(b"a: 1\n") != config_version(b"a: 2\n")
    assert len(config_version(b"")) == 12


def test_config_version_of_the_gateway_config_ignores_secrets() -> None:
    from edge.config import parse_config
    from edge.config.gateway import GatewayConfig

    def cfg(secret: str, gw: str = "gw-1") -> GatewayConfig:
        return parse_config({"gateway": {"id": gw}, "uplink": {
            "enabled": True, "url": "https://127.0.0.1:8443", "gateway_secret": secret}},
            GatewayConfig)
    assert config_version(cfg("s" * 20)) == config_version(cfg("t" * 20))
    assert config_version(cfg("s" * 20)) != config_version(cfg("s" * 20, gw="gw-2"))
    assert "s" * 20 not in cfg("s" * 20).model_dump_json()


def test_event_survives_the_wire_codec() -> None:
    e = build_status_event(T0, gateway_id="gw-1", config_version="abc", buffer=_stats(),
                           uplink=UplinkStats(circuit_open=True))
    frame = encode_batch(Batch("gw-1", 1, T0, [], [e]))
    [back] = decode_batch(frame).events
    assert back == e


async def test_reporter_buffers_a_record_at_start_and_every_interval(tmp_path: Path) -> None:
    clock = FakeClock(wall_ms=T0)
    async with Buffer(BufferSettings(path=str(tmp_path / "b.db"), commit_interval_ms=1,
                                     check_at_open=False)) as buf:
        async with StatusReporter(buf, gateway_id="gw-1", config_version="cfg",
                                  uplink=lambda: UplinkStats(), interval_s=0.3,
                                  clock=clock) as rep:
            for _ in range(200):
                if rep.sent >= 1:
                    break
                await asyncio.sleep(0.01)
            clock.advance(1.0)
            for _ in range(200):
                if rep.sent >= 2:
                    break
                await asyncio.sleep(0.01)
        assert rep.sent >= 2 and rep.failures == 0
        claim = await buf.claim(100)
        assert claim is not None
        events = [r.record for r in claim.rows if isinstance(r.record, Event)]
        assert len(events) == len(claim.rows) and all(ev.kind == KIND for ev in events)
        assert events[0].ts_ms == T0 and events[1].ts_ms == T0 + 1000 and events[0].body["config_version"] == "cfg"
        assert len(events) == rep.sent


async def test_reporter_counts_a_refusing_buffer_and_keeps_going(tmp_path: Path) -> None:
    buf = Buffer(BufferSettings(path=str(tmp_path / "b.db"), check_at_open=False))
    # never opened: stats() and append_events() fail, the reporter must survive
    async with StatusReporter(buf, gateway_id="gw-1", config_version="cfg",
                              interval_s=0.05) as rep:
        for _ in range(300):
            if rep.failures >= 2:
                break
            await asyncio.sleep(0.01)
    assert rep.failures >= 2 and rep.sent == 0
