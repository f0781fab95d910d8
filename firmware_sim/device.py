"""Simulated devices — pure: what each device sends at each tick, with faults applied.

`expand_fleet(cfg)` turns the fleet definition into `DeviceSpec`s (id, kind, location, topic,
protocol, rate and a deterministic phase, so 10,000 devices at 1 Hz spread evenly over the
second instead of firing together).

`DeviceModel(spec, cfg, start_ms).tick(k)` returns the `Emission`s device d sends at its
tick k, whose time is ``start_ms + phase_ms + k * period``.  Call it with k = 0, 1, 2, …
in order.  It is a pure function of (seed, device, start_ms, k): the simulator and a test
computing "what must arrive" get the same answer.

Sequence numbers: `seq` counts the device's samples from 0 and never repeats except in a
`duplicate` fault; a gps sample is two readings ("latitude", "longitude") sharing one seq
and one timestamp.  A stale sensor consumes no seqs while silent, so a gap in seqs
downstream is a loss, never a stale period.

What each fault does (`Emission.faults` names the ones applied; `Emission.expect` says what
a correct pipeline does with it: "stored" once, "duplicate" of an earlier emission, or
"rejected"):

=============== =========================================================================
spike           value ± magnitude for one sample
drift           value + per_reading·i for the `length` samples of the episode
stuck           value frozen at the episode's first value for `length` samples
stale           nothing sent for duration_s; held late readings wait too
duplicate       the sample's payloads sent again, byte-identical (expect "duplicate")
out_of_order    the sample is sent after the next sample
late            the sample is held back `delay_s` and sent with its original timestamp
clock_skew      the payload timestamp is off by ±skew_s
no_timestamp    the payload has no timestamp
malformed       a payload the gateway must reject (see firmware_sim.payloads)
burst           `size` extra samples sent back-to-back (new seqs, 10 ms apart)
disconnect      the device drops its connection after this tick (`DeviceModel.disconnect`)
=============== =========================================================================
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from edge.config.sim import KIND_UNITS, DeviceGroup, DeviceKind, SimConfig, SimProtocol, device_ids
from edge.model import FLAG_TS_MISSING, Reading
from firmware_sim.faults import FaultDraws
from firmware_sim.payloads import MessageTemplate, encode, malformed
from firmware_sim.prng import stream_key, uniform
from firmware_sim.signals import Battery, GpsSignal, ScalarSignal

_M_PER_DEG = 111_320.0


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    index: int
    device_id: str
    group: DeviceGroup
    kind: DeviceKind
    facility: str
    line: str
    zone: str | None
    protocol: SimProtocol
    port: int
    qos: int
    topic: str
    coap_path: str
    period_ms: float
    phase_ms: int
    fmt: str
    #: the MQTT user name (target.username expanded for this device)
    username: str | None = None

    @property
    def confirmed(self) -> bool:
        """Whether this device's transport acknowledges each reading."""
        return self.qos > 0 and self.protocol != SimProtocol.SERIAL


def expand_fleet(cfg: SimConfig) -> list[DeviceSpec]:
    specs: list[DeviceSpec] = []
    for group in cfg.fleet:
        protocol = cfg.protocol_of(group)
        port = group.port or cfg.target.port_for(protocol)
        topic_t = group.topic_template or cfg.target.topic_template
        fmt = group.serial_format if protocol == SimProtocol.SERIAL else group.payload_format
        period_ms = 1000.0 / group.rate_hz
        for n, device_id in enumerate(device_ids(group, len(specs))):
            line = group.lines[n % len(group.lines)]
            names = {"device_id": device_id, "line": line, "facility": group.facility,
                     "zone": group.zone or "", "kind": group.kind.value, "group": group.name}
            phase = int(uniform(stream_key(cfg.seed, device_id, "phase"), 0) * period_ms)
            specs.append(DeviceSpec(
                index=len(specs), device_id=device_id, group=group, kind=group.kind,
                facility=group.facility, line=line, zone=group.zone, protocol=protocol,
                port=port, qos=group.qos, topic=topic_t.format(**names),
                coap_path=cfg.target.coap_path_template.format(**names),
                period_ms=period_ms, phase_ms=phase, fmt=fmt,
                username=(cfg.target.username.format(**names)
                          if cfg.target.username is not None else None)))
    return specs


@dataclass(slots=True, eq=False)
class Emission:
    """One payload a device sends, and (filled in by the fleet) what became of it."""

    device_id: str
    measurement: str
    seq: int
    #: the true time of the sample
    tick_ms: int
    #: the timestamp in the payload (None: the payload has none)
    ts_ms: int | None
    value: float | None
    payload: bytes
    faults: str = ""
    expect: str = "stored"
    # --- transmission state, owned by the fleet
    sent_ms: int | None = None
    sent_mono: float = 0.0
    ack_ms: int | None = None
    attempts: int = 0
    failure: str | None = None
    pid: int = 0


def _label(*parts: str) -> str:
    return ",".join(p for p in parts if p)


class DeviceModel:
    """The firmware of one simulated device, minus the radio.  Not thread-safe; pure."""

    __slots__ = ("spec", "faults", "draws", "t0", "period_ms", "seq", "signal", "gps",
                 "battery", "unit", "stale_left", "drift_left", "drift_i", "stuck_left",
                 "stuck_value", "held", "disconnect", "injected", "events", "last_k",
                 "measurements", "templates")

    def __init__(self, spec: DeviceSpec, cfg: SimConfig, start_ms: int):
        self.spec = spec
        self.faults = cfg.faults
        self.draws = FaultDraws(cfg.seed, spec.device_id, cfg.faults)
        self.t0 = start_ms + spec.phase_ms
        self.period_ms = spec.period_ms
        self.seq = 0
        period_s = spec.period_ms / 1000.0
        g = spec.group
        self.signal: ScalarSignal | None = None
        self.gps: GpsSignal | None = None
        if spec.kind == DeviceKind.GPS:
            self.gps = GpsSignal(g.gps, period_s, stream_key(cfg.seed, spec.device_id, "gps"))
        else:
            self.signal = ScalarSignal(g.signal, period_s,
                                       stream_key(cfg.seed, spec.device_id, "signal"))
        self.battery = Battery(g.battery) if g.battery is not None else None
        self.unit = KIND_UNITS[spec.kind]
        #: the measurement names of one sample, in the order of its values
        self.measurements = (("latitude", "longitude") if spec.kind == DeviceKind.GPS
                             else (spec.kind.value,))
        proto_battery = 0.0 if self.battery is not None else None
        self.templates = tuple(
            MessageTemplate(Reading(device_id=spec.device_id, ts_ms=start_ms, value=0.0,
                                    measurement=m, unit=self.unit, facility=spec.facility,
                                    line=spec.line, zone=spec.zone,
                                    battery_voltage=proto_battery, seq=0), spec.fmt)
            for m in self.measurements)
        self.stale_left = 0
        self.drift_left = 0
        self.drift_i = 0
        self.stuck_left = 0
        self.stuck_value: tuple[float, ...] = ()
        #: (release tick, emissions) held by out_of_order / late, in hold order
        self.held: list[tuple[int, list[Emission]]] = []
        #: set by tick(): drop the connection after sending this tick's emissions
        self.disconnect = False
        #: faults injected so far, by kind (episodes count once)
        self.injected: Counter[str] = Counter()
        #: (kind, time ms, detail) of episode faults since the caller last cleared it
        self.events: list[tuple[str, int, str]] = []
        self.last_k = -1

    def set_start(self, start_ms: int) -> None:
        """Move tick 0 to `start_ms + phase` (only before the first tick): lets a fleet build
        its models before it knows when sending starts."""
        if self.last_k >= 0:
            raise RuntimeError("the device has already ticked")
        self.t0 = start_ms + self.spec.phase_ms

    def tick_ms(self, k: int) -> int:
        return self.t0 + round(k * self.period_ms)

    def ticks_for(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * 1000.0 / self.period_ms))

    # ------------------------------------------------------------------ generation

    def tick(self, k: int) -> list[Emission]:
        if k != self.last_k + 1:
            raise ValueError(f"{self.spec.device_id}: tick {k} after {self.last_k}")
        self.last_k = k
        t_ms = self.tick_ms(k)
        self.disconnect = False
        # the physical quantity evolves whether or not the sensor reports it
        true = self._sample(k, t_ms)
        fired = self.draws.fired(k)
        if not fired and not (self.stale_left or self.drift_left or self.stuck_left
                              or self.held):
            # the common case, kept lean: one clean sample (10,000 of these a second)
            return self._emit(k, t_ms, true, fired, "")
        if self.stale_left > 0:
            self.stale_left -= 1
            return []
        if "stale" in fired:
            n = self.ticks_for(self.faults.stale.duration_s)
            self.stale_left = n - 1
            self.injected["stale"] += 1
            self.events.append(("stale", t_ms, f"{n} ticks"))
            return []
        values, value_faults = self._value_faults(k, t_ms, true, fired)
        fresh = self._emit(k, t_ms, values, fired, value_faults)
        out: list[Emission] = []
        if "late" in fired or "out_of_order" in fired:
            kind = "late" if "late" in fired else "out_of_order"
            self.injected[kind] += 1
            release = k + (self.ticks_for(self.faults.late.delay_s) if kind == "late" else 1)
            for e in fresh:
                e.faults = _label(e.faults, kind)
            self.held.append((release, fresh))
        else:
            out += fresh
        if "duplicate" in fired:
            self.injected["duplicate"] += 1
            for e in fresh:
                out.append(Emission(e.device_id, e.measurement, e.seq, e.tick_ms, e.ts_ms,
                                    e.value, e.payload, _label(e.faults, "duplicate"),
                                    "rejected" if e.expect == "rejected" else "duplicate"))
        if "burst" in fired:
            self.injected["burst"] += 1
            out += self._burst(k, t_ms, values)
        released = self._release(k) if self.held else []
        out += released
        # duplicates and released readings are radio messages too (fresh and burst
        # readings were charged as they were measured)
        extra = len(released) + (len(fresh) if "duplicate" in fired else 0)
        if self.battery is not None and extra:
            self.battery.transmit(t_ms - self.t0, extra)
        if "disconnect" in fired:
            self.injected["disconnect"] += 1
            self.disconnect = True
        return out

    def drain_held(self) -> list[Emission]:
        """Everything still held back (late / out of order), for sending at shutdown."""
        out = [e for _, batch in self.held for e in batch]
        self.held.clear()
        return out

    # ------------------------------------------------------------------ internals

    def _sample(self, k: int, t_ms: int) -> tuple[float, ...]:
        if self.gps is not None:
            return self.gps.step(k, t_ms)
        assert self.signal is not None
        return (self.signal.step(k, t_ms),)

    def _value_faults(self, k: int, t_ms: int, true: tuple[float, ...],
                      fired: tuple[str, ...]) -> tuple[tuple[float, ...], str]:
        f = self.faults
        labels = []
        # offsets in the signal's unit (gps: metres east)
        offset = 0.0
        if self.drift_left == 0 and "drift" in fired:
            self.drift_left, self.drift_i = f.drift.length, 0
            self.injected["drift"] += 1
            self.events.append(("drift", t_ms, f"{f.drift.length} samples"))
        if self.drift_left > 0:
            self.drift_i += 1
            self.drift_left -= 1
            offset += f.drift.per_reading * self.drift_i
            labels.append("drift")
        if "spike" in fired:
            self.injected["spike"] += 1
            offset += f.spike.magnitude * self.draws.sign(k, 0)
            labels.append("spike")
        if self.stuck_left == 0 and "stuck" in fired:
            self.stuck_left = f.stuck.length
            self.stuck_value = true
            self.injected["stuck"] += 1
            self.events.append(("stuck", t_ms, f"{f.stuck.length} samples"))
        values = true
        if self.stuck_left > 0:
            self.stuck_left -= 1
            values = self.stuck_value
            labels.append("stuck")
        if offset:
            if self.gps is not None:
                lat, lon = values
                values = (round(lat, 6),
                          round(lon + offset / (_M_PER_DEG * self.gps.cos_lat), 6))
            else:
                assert self.signal is not None
                values = (self.signal.clamp(values[0] + offset),)
        return values, ",".join(labels)

    def _emit(self, k: int, t_ms: int, values: tuple[float, ...], fired: tuple[str, ...],
              value_faults: str, burst: bool = False) -> list[Emission]:
        spec = self.spec
        seq = self.seq
        self.seq += 1
        ts: int | None = t_ms
        label = value_faults
        variant = None
        if fired and not burst:
            ts, label, variant = self._payload_faults(k, t_ms, fired, value_faults)
        if burst:
            label = "burst"
        battery = None
        if self.battery is not None:
            # the voltage measured as this sample is sent (one radio message per reading)
            battery = self.battery.transmit(t_ms - self.t0, len(values))
        flags = FLAG_TS_MISSING if ts is None else 0
        device_id = spec.device_id
        out = []
        if variant is None and ts is not None:
            # the common case: fill the device's message templates (same bytes as encode())
            return [Emission(device_id, measurement, seq, t_ms, ts, value,
                             tmpl.render(ts, value, battery, seq), label)
                    for measurement, tmpl, value in zip(self.measurements, self.templates,
                                                        values)]
        for measurement, value in zip(self.measurements, values):
            r = Reading(device_id=device_id, ts_ms=t_ms if ts is None else ts, value=value,
                        measurement=measurement, unit=self.unit, facility=spec.facility,
                        line=spec.line, zone=spec.zone, battery_voltage=battery, seq=seq,
                        flags=flags)
            if variant is None:
                out.append(Emission(device_id, measurement, seq, t_ms, ts, value,
                                    encode(r, spec.fmt), label))
            else:
                payload = malformed(r, spec.fmt, variant, self.faults.malformed.oversize_bytes)
                out.append(Emission(device_id, measurement, seq, t_ms, ts,
                                    None if variant == "wrong_type" else value, payload,
                                    label, "rejected"))
        return out

    def _payload_faults(self, k: int, t_ms: int, fired: tuple[str, ...], value_faults: str
                        ) -> tuple[int | None, str, str | None]:
        """(payload timestamp, fault label, malformed variant) for this tick's sample."""
        ts: int | None = t_ms
        labels = [value_faults]
        if "clock_skew" in fired:
            self.injected["clock_skew"] += 1
            ts = t_ms + int(self.draws.sign(k, 1) * self.faults.clock_skew.skew_s * 1000)
            labels.append("clock_skew")
        if "no_timestamp" in fired:
            self.injected["no_timestamp"] += 1
            ts = None
            labels.append("no_timestamp")
        variant = None
        if "malformed" in fired:
            variants = self.faults.malformed.variants
            variant = variants[int(self.draws.param(k, 2) * len(variants))]
            self.injected["malformed"] += 1
            self.injected[f"malformed:{variant}"] += 1
            labels.append(f"malformed:{variant}")
        return ts, _label(*labels), variant

    def _burst(self, k: int, t_ms: int, values: tuple[float, ...]) -> list[Emission]:
        size = self.faults.burst.size
        spacing = max(1, min(10, int(self.period_ms / (size + 1))))
        out: list[Emission] = []
        for j in range(size):
            v = values
            if self.signal is not None:
                v = (self.signal.jitter(values[0], k * size + j),)
            out += self._emit(k, t_ms + (j + 1) * spacing, v, (), "", burst=True)
        return out

    def _release(self, k: int) -> list[Emission]:
        out: list[Emission] = []
        keep: list[tuple[int, list[Emission]]] = []
        for release, batch in self.held:
            if release <= k:
                out += batch
            else:
                keep.append((release, batch))
        self.held = keep
        return out


def generate(cfg: SimConfig, start_ms: int, duration_s: float) -> dict[str, list[Emission]]:
    """Every emission a run of `duration_s` from `start_ms` generates, per device, in the order
    the device sends them — what `Fleet.run` hands to the links, computed without running.

    A device sends tick k iff its time is before ``start_ms + duration_s``; readings still held
    back (late, out of order) at the end are sent last, as the fleet does when it stops.
    """
    end_ms = start_ms + round(duration_s * 1000)
    out: dict[str, list[Emission]] = {}
    for spec in expand_fleet(cfg):
        model = DeviceModel(spec, cfg, start_ms)
        sent: list[Emission] = []
        k = 0
        while model.tick_ms(k) < end_ms:
            sent += model.tick(k)
            k += 1
        sent += model.drain_held()
        out[spec.device_id] = sent
    return out
