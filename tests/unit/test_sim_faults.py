"""The fault schedule: deterministic, rates honoured, kinds independent of each other."""

from __future__ import annotations

import math

from edge.config.sim import FaultsConfig
from firmware_sim.faults import DEVICE_FAULTS, FaultDraws, storm_at, storm_hits


def _faults(**rates: float) -> FaultsConfig:
    return FaultsConfig().with_rates(rates)


def test_no_faults_configured_fires_nothing() -> None:
    d = FaultDraws(1, "dev", FaultsConfig())
    assert all(d.fired(k) == () for k in range(1000))


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    cfg = _faults(spike=0.05, duplicate=0.05)
    a = [FaultDraws(1, "dev", cfg).fired(k) for k in range(2000)]
    b = [FaultDraws(1, "dev", cfg).fired(k) for k in range(2000)]
    c = [FaultDraws(2, "dev", cfg).fired(k) for k in range(2000)]
    d = [FaultDraws(1, "other", cfg).fired(k) for k in range(2000)]
    assert a == b
    assert a != c and a != d


def test_rates_are_honoured_within_tolerance() -> None:
    n = 200_000
    for kind, rate in (("spike", 0.01), ("malformed", 0.001), ("duplicate", 0.2)):
        d = FaultDraws(3, "dev", _faults(**{kind: rate}))
        hits = sum(1 for k in range(n) if kind in d.fired(k))
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(hits - n * rate) < 5 * sigma, (kind, hits)


def test_rate_one_always_fires() -> None:
    d = FaultDraws(3, "dev", _faults(no_timestamp=1.0))
    assert all(d.fired(k) == ("no_timestamp",) for k in range(100))


def test_kinds_are_independent() -> None:
    """Turning a second fault on does not move the first one's schedule."""
    only = FaultDraws(4, "dev", _faults(spike=0.05))
    both = FaultDraws(4, "dev", _faults(spike=0.05, late=0.3, burst=0.3))
    assert [("spike" in only.fired(k)) for k in range(5000)] == \
           [("spike" in both.fired(k)) for k in range(5000)]
    # and co-occurrence happens at about rate_a * rate_b
    co = sum(1 for k in range(50_000) if {"late", "burst"} <= set(both.fired(k)))
    assert abs(co / 50_000 - 0.09) < 0.01


def test_fired_kinds_come_in_declared_order() -> None:
    d = FaultDraws(5, "dev", _faults(**{k: 1.0 for k in DEVICE_FAULTS}))
    assert d.fired(0) == DEVICE_FAULTS


def test_parameters_are_deterministic_and_balanced() -> None:
    d = FaultDraws(6, "dev", _faults(spike=1.0))
    signs = [d.sign(k, 0) for k in range(10_000)]
    assert signs == [FaultDraws(6, "dev", _faults(spike=1.0)).sign(k, 0) for k in range(10_000)]
    assert abs(sum(signs)) < 400
    # different slots are different draws
    assert [d.param(k, 0) for k in range(50)] != [d.param(k, 1) for k in range(50)]


def test_storm_schedule_and_fraction() -> None:
    seconds = [s for s in range(20_000) if storm_at(1, s, 0.01)]
    assert abs(len(seconds) - 200) < 5 * math.sqrt(200)
    assert seconds == [s for s in range(20_000) if storm_at(1, s, 0.01)]
    assert not any(storm_at(1, s, 0.0) for s in range(1000))
    hit = sum(storm_hits(1, f"dev{i}", 17, 0.3) for i in range(10_000))
    assert abs(hit - 3000) < 5 * math.sqrt(10_000 * 0.3 * 0.7)
