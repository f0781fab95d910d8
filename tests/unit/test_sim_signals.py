"""Signal models and counter-based randomness of the simulator: pure, deterministic."""

from __future__ import annotations

import math
import statistics

import pytest

from edge.config.sim import BatteryParams, DeviceGroup, DeviceKind, GpsParams, SignalParams
from firmware_sim.prng import gauss, gauss_pair, stream_key, uniform
from firmware_sim.signals import Battery, GpsSignal, ScalarSignal, decimals_of, quantise

T0 = 1_705_322_445_000
DAY_MS = 86_400_000


def _temperature(**over: float) -> SignalParams:
    return DeviceGroup(kind=DeviceKind.TEMPERATURE, signal=SignalParams(**over)).signal


def test_stream_key_and_uniform_are_deterministic() -> None:
    k = stream_key(7, "dev", "walk")
    assert k == stream_key(7, "dev", "walk")
    assert k != stream_key(8, "dev", "walk") != stream_key(7, "dev2", "walk")
    assert [uniform(k, i) for i in range(5)] == [uniform(k, i) for i in range(5)]


def test_uniform_and_gauss_are_well_distributed() -> None:
    k = stream_key(1, "x")
    us = [uniform(k, i) for i in range(50_000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert abs(statistics.fmean(us) - 0.5) < 0.01
    # each decile holds ~10 %
    for d in range(10):
        share = sum(1 for u in us if d / 10 <= u < (d + 1) / 10) / len(us)
        assert abs(share - 0.1) < 0.01
    gs = [g for i in range(25_000) for g in gauss_pair(k, i)]
    assert abs(statistics.fmean(gs)) < 0.02
    assert abs(statistics.pstdev(gs) - 1.0) < 0.02
    # the two halves of a pair are independent
    a = [gauss_pair(k, i)[0] for i in range(20_000)]
    b = [gauss_pair(k, i)[1] for i in range(20_000)]
    assert abs(statistics.correlation(a, b)) < 0.03
    assert gauss(k, 3) == gauss_pair(k, 3)[0]


def test_quantise_prints_exact_multiples() -> None:
    assert quantise(22.349, 0.1) == 22.3
    assert repr(quantise(22.35000001, 0.1)) == "22.4"
    assert quantise(3.14159, 0.5) == 3.0
    assert quantise(4.123456, 0.01) == 4.12
    assert decimals_of(0.1) == 1 and decimals_of(1.0) == 0 and decimals_of(0.25) == 2


def test_same_key_same_values_different_key_different_values() -> None:
    p = _temperature()
    a = ScalarSignal(p, 1.0, 11)
    b = ScalarSignal(p, 1.0, 11)
    c = ScalarSignal(p, 1.0, 12)
    va = [a.step(k, T0 + k * 1000) for k in range(200)]
    vb = [b.step(k, T0 + k * 1000) for k in range(200)]
    vc = [c.step(k, T0 + k * 1000) for k in range(200)]
    assert va == vb
    assert va != vc


def test_temperature_has_0_1_resolution_and_stays_near_set_point() -> None:
    s = ScalarSignal(_temperature(), 1.0, stream_key(3, "t"))
    values = [s.step(k, T0 + k * 1000) for k in range(5000)]
    for v in values:
        assert repr(v) == repr(round(v, 1))
    # set point 22 ± daily 3 ± walk (std 0.5): far outside would mean a runaway walk
    assert 15.0 < min(values) and max(values) < 29.0


def test_random_walk_reverts_with_the_configured_spread() -> None:
    # no daily cycle, no noise: what remains is the walk, stationary std = walk_std
    p = _temperature(daily_amplitude=0.0, noise=0.0, walk_std=2.0, tau_s=5.0,
                     resolution=0.001)
    s = ScalarSignal(p, 1.0, stream_key(5, "w"))
    values = [s.step(k, T0 + k * 1000) - 22.0 for k in range(40_000)]
    assert abs(statistics.fmean(values)) < 0.1
    assert abs(statistics.pstdev(values) - 2.0) < 0.1


def test_daily_cycle_peaks_at_peak_hour() -> None:
    p = _temperature(walk_std=0.0, noise=0.0, daily_amplitude=3.0, peak_hour=15.0)
    s = ScalarSignal(p, 3600.0, 1)
    midnight = (T0 // DAY_MS) * DAY_MS
    by_hour = {k: s.step(k, midnight + k * 3_600_000) for k in range(24)}
    assert max(by_hour, key=lambda h: by_hour[h]) == 15
    assert min(by_hour, key=lambda h: by_hour[h]) == 3
    assert by_hour[15] == pytest.approx(25.0) and by_hour[3] == pytest.approx(19.0)


def test_clamp_to_sensor_range() -> None:
    p = _temperature(set_point=200.0, walk_std=0.0, noise=0.0, daily_amplitude=0.0)
    s = ScalarSignal(p, 1.0, 1)
    assert s.step(0, T0) == 125.0


def test_stepping_out_of_order_is_refused() -> None:
    s = ScalarSignal(_temperature(), 1.0, 1)
    s.step(0, T0)
    with pytest.raises(ValueError, match="out of order"):
        s.step(2, T0 + 2000)


def test_gps_moves_at_speed_and_stays_near_the_fence() -> None:
    gp = GpsParams(speed_mps=2.0, radius_m=300.0)
    g = GpsSignal(gp, 1.0, stream_key(9, "gps"))
    m_per_deg = 111_320.0
    prev = None
    for k in range(3000):
        lat, lon = g.step(k, T0 + k * 1000)
        dy = (lat - gp.origin_lat) * m_per_deg
        dx = (lon - gp.origin_lon) * m_per_deg * math.cos(math.radians(gp.origin_lat))
        # it turns back at the fence, so it never gets far beyond it
        assert math.hypot(dx, dy) < 300.0 + 5.0
        assert lat == round(lat, 6) and lon == round(lon, 6)
        if prev is not None:
            step = math.hypot((lat - prev[0]) * m_per_deg,
                              (lon - prev[1]) * m_per_deg * math.cos(math.radians(lat)))
            assert step == pytest.approx(2.0, abs=0.3)
        prev = (lat, lon)


def test_battery_decays_and_sags_under_radio_load() -> None:
    p = BatteryParams(initial_v=4.2, idle_drain_v_per_day=0.5, tx_cost_v=0.0001, tx_sag_v=0.05,
                      recovery_s=2.0, resolution=0.001)
    b = Battery(p)
    steady = [b.transmit(k * 1000, 1) for k in range(600)]
    # decays: later readings lower than earlier ones (monotone at steady load after warm-up)
    assert steady[-1] < steady[10]
    assert all(later <= earlier for earlier, later in zip(steady[10:], steady[11:]))
    # a burst of 20 messages pulls the reported voltage down, and it recovers afterwards
    burst = b.transmit(600_000, 20)
    assert burst < steady[-1] - 0.5
    recovered = b.transmit(620_000, 1)
    assert recovered > burst + 0.5
    # never below empty
    flat = Battery(BatteryParams(initial_v=3.4, empty_v=3.3, tx_sag_v=1.0))
    assert flat.transmit(0, 5) == 3.3
