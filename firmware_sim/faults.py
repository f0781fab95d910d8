"""The fault schedule — pure: which faults fire for device d at tick k, and fleet-wide storms.

Every fault kind has its own counter-based stream per device (`firmware_sim.prng`): kind X
fires at tick k iff ``uniform(key(seed, device, X), k) < rate_X``.  So the schedule

* is a pure function of (seed, device id, kind, k) — tests recompute it without running;
* honours each rate independently (kinds may coincide at one tick);
* does not move when another kind's rate changes.

What a fired fault does to the readings is applied by `firmware_sim.device.DeviceModel`;
this module only decides *when*, and the few random parameters (sign of a spike or skew,
which malformed variant) — also pure functions of (seed, device, k).

`reconnect_storm` is fleet-wide: in second s of the run a storm happens iff
``uniform(key(seed, "storm"), s) < rate``, and it drops each connected device with
probability `fraction` (again a pure function of seed, device and s).
"""

from __future__ import annotations

from edge.config.sim import FAULT_KINDS, FaultsConfig
from firmware_sim.prng import stream_key, uniform

#: faults drawn per device tick (reconnect_storm is drawn per second for the fleet)
DEVICE_FAULTS = tuple(k for k in FAULT_KINDS if k != "reconnect_storm")


class FaultDraws:
    """The per-tick fault draws of one device."""

    __slots__ = ("_enabled", "_param_key")

    def __init__(self, seed: int, device_id: str, faults: FaultsConfig):
        rates = faults.rates()
        # only enabled kinds get a key: a fault-free fleet spends nothing here
        self._enabled = tuple((kind, stream_key(seed, device_id, "fault", kind), rates[kind])
                              for kind in DEVICE_FAULTS if rates[kind] > 0.0)
        self._param_key = stream_key(seed, device_id, "fault-param")

    def fired(self, k: int) -> tuple[str, ...]:
        """The fault kinds that fire at tick k (in FAULT_KINDS order)."""
        if not self._enabled:
            return ()
        return tuple(kind for kind, key, rate in self._enabled if uniform(key, k) < rate)

    def param(self, k: int, slot: int) -> float:
        """A uniform [0, 1) parameter for a fault at tick k; `slot` tells parameters apart."""
        return uniform(self._param_key, k * 8 + slot)

    def sign(self, k: int, slot: int) -> float:
        return 1.0 if self.param(k, slot) < 0.5 else -1.0


def storm_at(seed: int, second: int, rate: float) -> bool:
    """Whether a reconnect storm hits the fleet in second `second` of the run."""
    return rate > 0.0 and uniform(stream_key(seed, "storm"), second) < rate


def storm_hits(seed: int, device_id: str, second: int, fraction: float) -> bool:
    """Whether the storm of second `second` drops this device."""
    return uniform(stream_key(seed, device_id, "storm"), second) < fraction
