"""Signal models of simulated sensors — pure and deterministic.

Each model is advanced one tick at a time, in order (`step(k, t_ms)` for k = 0, 1, 2, …):
its state (a random walk, a position, a battery charge) depends on every earlier tick, and
its randomness comes from counter-based draws (`firmware_sim.prng`), so the same
(seed, device, start time) always gives the same values.  Nothing here reads a clock: the
caller passes the tick's time.

* `ScalarSignal` — temperature / pressure / humidity: set point + daily cycle (wall-clock time
  of day, so values depend on the start time too) + mean-reverting random walk + white noise,
  clamped and quantised to the sensor's resolution (0.1 °C for temperature).
* `GpsSignal` — a mobile asset wandering inside a geofence; one (latitude, longitude) pair
  per tick, 1e-6° resolution.
* `Battery` — resting voltage decays with time and with each transmission; the reported
  voltage also sags with recent radio activity (bursts pull it down further).
"""

from __future__ import annotations

import math

from edge.config.sim import BatteryParams, GpsParams, SignalParams
from firmware_sim.prng import gauss, gauss_pair

_DAY_MS = 86_400_000
_M_PER_DEG = 111_320.0
#: counters of one-off draws (initial state), far from any tick number
_INIT = 1 << 62
#: mixed into a key for the draws of burst samples
_BURST = 0x5851_F42D_4C95_7F2D
_TWO_PI = 2.0 * math.pi


def decimals_of(resolution: float) -> int:
    """Decimal places needed to print multiples of `resolution` exactly (at most 9)."""
    for d in range(10):
        if abs(resolution * 10**d - round(resolution * 10**d)) < 1e-9:
            return d
    return 9


def quantise(value: float, resolution: float, decimals: int | None = None) -> float:
    """`value` rounded to a multiple of `resolution`, printed without float noise."""
    if decimals is None:
        decimals = decimals_of(resolution)
    return round(round(value / resolution) * resolution, decimals)


class ScalarSignal:
    __slots__ = ("p", "key", "a", "step_std", "walk", "last_k", "set_point", "amplitude",
                 "peak_hour", "noise", "lo", "hi", "res", "decimals", "decimal_res")

    def __init__(self, params: SignalParams, period_s: float, key: int):
        self.p = params
        assert params.tau_s is not None and params.walk_std is not None
        assert params.resolution is not None
        self.key = key
        # Ornstein–Uhlenbeck exact discretisation: stationary std stays walk_std at any rate
        self.a = math.exp(-period_s / params.tau_s)
        self.step_std = params.walk_std * math.sqrt(1.0 - self.a * self.a)
        # start from the stationary distribution so a short run is not atypically calm
        self.walk = params.walk_std * gauss(key, _INIT)
        self.last_k = -1
        # unpacked once: step() runs 10,000 times a second
        self.set_point = params.set_point or 0.0
        self.amplitude = params.daily_amplitude or 0.0
        self.peak_hour = params.peak_hour or 0.0
        self.noise = params.noise or 0.0
        self.lo = params.min_value
        self.hi = params.max_value
        self.res = params.resolution
        self.decimals = decimals_of(params.resolution)
        # a resolution of 10**-d is plain rounding to d places
        self.decimal_res = abs(self.res - 10.0**-self.decimals) < 1e-12

    def step(self, k: int, t_ms: int) -> float:
        """The true (fault-free) value at tick k, time t_ms.  Call with k = last k + 1."""
        if k != self.last_k + 1:
            raise ValueError(f"signal stepped out of order: {k} after {self.last_k}")
        self.last_k = k
        g_walk, g_noise = gauss_pair(self.key, k)
        self.walk = self.walk * self.a + self.step_std * g_walk
        v = self.set_point + self.walk + self.noise * g_noise
        if self.amplitude:
            hours = (t_ms % _DAY_MS) / 3_600_000.0
            v += self.amplitude * math.cos(_TWO_PI * (hours - self.peak_hour) / 24.0)
        return self.clamp(v)

    def clamp(self, v: float) -> float:
        if self.lo is not None and v < self.lo:
            v = self.lo
        if self.hi is not None and v > self.hi:
            v = self.hi
        if self.decimal_res:
            return round(v, self.decimals)
        return round(round(v / self.res) * self.res, self.decimals)

    def jitter(self, v: float, counter: int) -> float:
        """`v` plus a fresh white-noise draw (extra samples of a burst)."""
        return self.clamp(v + self.noise * gauss(self.key ^ _BURST, counter))


class GpsSignal:
    __slots__ = ("p", "key", "dt", "x", "y", "heading", "cos_lat", "last_k")

    def __init__(self, params: GpsParams, period_s: float, key: int):
        self.p = params
        self.key = key
        self.dt = period_s
        # start somewhere inside the fence, heading anywhere
        r = params.radius_m * 0.5 * abs(gauss(key, _INIT)) / 3.0
        ang = math.pi * gauss(key, _INIT + 1)
        self.x = r * math.cos(ang)
        self.y = r * math.sin(ang)
        self.heading = math.pi * gauss(key, _INIT + 2)
        self.cos_lat = max(0.01, math.cos(math.radians(params.origin_lat)))
        self.last_k = -1

    def step(self, k: int, t_ms: int) -> tuple[float, float]:
        """(latitude, longitude) at tick k.  Call with k = last k + 1."""
        if k != self.last_k + 1:
            raise ValueError(f"signal stepped out of order: {k} after {self.last_k}")
        self.last_k = k
        p = self.p
        self.heading += math.radians(p.turn_std_deg) * math.sqrt(self.dt) * gauss(self.key, k)
        if math.hypot(self.x, self.y) > p.radius_m:
            # at the fence: turn back towards the origin
            self.heading = math.atan2(-self.y, -self.x)
        dist = p.speed_mps * self.dt
        self.x += dist * math.cos(self.heading)
        self.y += dist * math.sin(self.heading)
        return self.position()

    def position(self, dx_m: float = 0.0, dy_m: float = 0.0) -> tuple[float, float]:
        lat = self.p.origin_lat + (self.y + dy_m) / _M_PER_DEG
        lon = self.p.origin_lon + (self.x + dx_m) / (_M_PER_DEG * self.cos_lat)
        return round(lat, 6), round(lon, 6)


class Battery:
    __slots__ = ("p", "load", "tx_total", "last_ms", "_dt_ms", "_decay", "_decimals")

    def __init__(self, params: BatteryParams):
        self.p = params
        self.load = 0.0
        self.tx_total = 0
        self.last_ms: int | None = None
        # the decay factor of the last interval, reused while the interval repeats
        self._dt_ms = -1
        self._decay = 1.0
        self._decimals = decimals_of(params.resolution)

    def transmit(self, elapsed_ms: int, count: int) -> float:
        """Record `count` transmissions at `elapsed_ms` since start; the voltage the sensor
        reports with them.  Call with non-decreasing `elapsed_ms`."""
        p = self.p
        if self.last_ms is not None:
            dt_ms = max(0, elapsed_ms - self.last_ms)
            if dt_ms != self._dt_ms:
                self._dt_ms = dt_ms
                self._decay = math.exp(-dt_ms / 1000.0 / p.recovery_s)
            self.load *= self._decay
        self.last_ms = elapsed_ms
        self.load += count
        self.tx_total += count
        resting = (p.initial_v - p.idle_drain_v_per_day * elapsed_ms / _DAY_MS
                   - p.tx_cost_v * self.tx_total)
        v = max(p.empty_v, resting - p.tx_sag_v * self.load)
        return quantise(v, p.resolution, self._decimals)
