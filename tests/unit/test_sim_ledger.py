"""The ledger (written in batches from a worker thread, read back through `Ledger`) and the
run statistics."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from edge.config import parse_config
from edge.config.sim import SimConfig
from firmware_sim.device import Emission, expand_fleet
from firmware_sim.ledger import Ledger, LedgerWriter
from firmware_sim.stats import LatencyHistogram, RunStats

SPEC = expand_fleet(parse_config({"fleet": [{"count": 1}]}, SimConfig, environ={}))[0]


def _e(seq: int, *, acked: bool = True, expect: str = "stored", faults: str = "",
       sent: bool = True, failure: str | None = None) -> Emission:
    e = Emission(SPEC.device_id, "temperature", seq, 1000 + seq, 1000 + seq, 20.0 + seq,
                 b"{}", faults, expect)
    if sent:
        e.sent_ms, e.attempts = 2000 + seq, 1
    if acked:
        e.ack_ms = 2001 + seq
    e.failure = failure
    return e


async def test_rows_round_trip_and_expectations(tmp_path) -> None:
    path = tmp_path / "ledger.sqlite"
    w = LedgerWriter(path, flush_rows=3)
    await w.open({"seed": 5, "config": {"a": 1}}, [SPEC])
    rows = [_e(0), _e(1), _e(1, expect="duplicate", faults="duplicate"),
            _e(2, expect="rejected", faults="malformed:bad_json"),
            _e(3, acked=False, failure="no_ack"),
            _e(4, acked=False, sent=False, failure="offline_overflow"),
            _e(5, acked=False, expect="duplicate", faults="duplicate", failure="no_ack"),
            _e(6, acked=False, faults="late", failure="no_ack"),
            _e(6, expect="duplicate", faults="duplicate")]
    for e in rows:
        w.record(e)
    w.event(SPEC.device_id, "stale", 1234, "30 ticks")
    await w.close({"summary": {"sent": 8}})

    with Ledger.open(path) as led:
        assert len(led) == len(rows)
        got = list(led)
        assert [(r.seq, r.acked, r.expect, r.fault or "") for r in got] == \
               [(e.seq, e.ack_ms is not None, e.expect, e.faults) for e in rows]
        r0 = got[0]
        assert (r0.topic, r0.protocol, r0.qos, r0.sent_ms, r0.ack_ms, r0.value) == \
               (SPEC.topic, "mqtt", 1, 2000, 2001, 20.0)
        assert len(led.acknowledged()) == 5
        assert len(led.sent()) == 8
        # acknowledged and meant to be stored, once per key: 0, 1 (twice), 6 (via its dup)
        assert sorted(k[2] for k in led.expected_unique()) == [0, 1, 6]
        assert [r.seq for r in led.expected_rejected()] == [2]
        assert {r.failure for r in led.failed()} == {"no_ack", "offline_overflow"}
        assert led.events() == [(SPEC.device_id, "stale", 1234, "30 ticks")]
        assert led.meta() == {"seed": 5, "config": {"a": 1}, "summary": {"sent": 8}}


async def test_batches_flush_while_running(tmp_path) -> None:
    path = tmp_path / "l.sqlite"
    w = LedgerWriter(path, flush_rows=100)
    await w.open({}, [SPEC])
    for i in range(250):
        w.record(_e(i))
    await asyncio.sleep(0.2)
    # two batches went to the worker on their own; a reader sees them while the run goes on
    with Ledger.open(path) as led:
        assert len(led) >= 200
    await w.close()
    with Ledger.open(path) as led:
        assert len(led) == 250


def test_opening_a_missing_ledger_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no ledger"):
        Ledger.open(tmp_path / "nope.sqlite")


def test_histogram_percentiles_within_one_percent() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(0.0, 1.5) for _ in range(100_000)]
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    values.sort()
    for p in (50.0, 99.0, 99.9):
        exact = values[math.ceil(len(values) * p / 100) - 1]
        assert h.percentile(p) == pytest.approx(exact, rel=0.011)
    assert h.max_ms == values[-1] and h.n == len(values)
    assert LatencyHistogram().percentile(50) is None
    tiny = LatencyHistogram()
    tiny.add(0.0)
    assert tiny.percentile(50) == 0.001


def test_summary_shape() -> None:
    s = RunStats(devices=3, generated=10, sent=9, acknowledged=7, unconfirmed=1, duration_s=2)
    s.failed["no_ack"] = 2
    s.latency.add(1.0)
    out = s.summary()
    assert out["failed_total"] == 2 and out["send_rate_per_s"] == 4.5
    assert out["ack_latency_ms"]["count"] == 1 and out["ack_latency_ms"]["p99"] == \
        pytest.approx(1.0, rel=0.01)
    assert "cpu_s" not in out
