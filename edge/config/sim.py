"""The typed model of a simulated sensor fleet (`config/sim.yaml`, `fieldlink sim run`).

Pure data: validated by `edge.config.load_config(path, SimConfig)`; the simulator in
`firmware_sim` expands it into devices.  Every default here is documented in the commented
example `config/sim.yaml`.

Guarantees the model checks so the simulator need not:

* device ids produced by every group's `id_template` are unique across the fleet and are
  valid topic levels / tags (no whitespace, `/`, `+`, `#`);
* templates name only known placeholders;
* per-kind signal defaults are filled in (`DeviceGroup.signal` is always complete);
* fault rates are probabilities in [0, 1].
"""

from __future__ import annotations

import re
import string
from enum import StrEnum
from typing import Any, Literal

import pydantic
from pydantic import Field

from edge.config import SecretField, StrictModel

__all__ = [
    "DeviceKind", "SimProtocol", "SignalParams", "BatteryParams", "GpsParams", "DeviceGroup",
    "TlsConfig", "TargetConfig", "FaultsConfig", "SimConfig", "KIND_DEFAULTS", "KIND_UNITS",
    "DEFAULT_PORTS", "FAULT_KINDS", "device_ids",
]


class DeviceKind(StrEnum):
    TEMPERATURE = "temperature"
    PRESSURE = "pressure"
    HUMIDITY = "humidity"
    GPS = "gps"


class SimProtocol(StrEnum):
    MQTT = "mqtt"
    COAP = "coap"
    SERIAL = "serial"


#: port used when neither the target nor the group names one
DEFAULT_PORTS = {SimProtocol.MQTT: 1883, SimProtocol.COAP: 5683, SimProtocol.SERIAL: 0}

#: the unit each kind reports (gps reports two measurements, "latitude" and "longitude")
KIND_UNITS = {DeviceKind.TEMPERATURE: "celsius", DeviceKind.PRESSURE: "hPa",
              DeviceKind.HUMIDITY: "percent", DeviceKind.GPS: "deg"}

#: signal defaults per kind; a group's `signal:` overrides them key by key
KIND_DEFAULTS: dict[DeviceKind, dict[str, float]] = {
    DeviceKind.TEMPERATURE: {"set_point": 22.0, "daily_amplitude": 3.0, "peak_hour": 15.0,
                             "walk_std": 0.5, "tau_s": 600.0, "noise": 0.05,
                             "resolution": 0.1, "min_value": -40.0, "max_value": 125.0},
    DeviceKind.PRESSURE: {"set_point": 1013.2, "daily_amplitude": 1.0, "peak_hour": 10.0,
                          "walk_std": 2.0, "tau_s": 3600.0, "noise": 0.05,
                          "resolution": 0.1, "min_value": 800.0, "max_value": 1100.0},
    DeviceKind.HUMIDITY: {"set_point": 45.0, "daily_amplitude": -8.0, "peak_hour": 15.0,
                          "walk_std": 3.0, "tau_s": 900.0, "noise": 0.2,
                          "resolution": 0.1, "min_value": 0.0, "max_value": 100.0},
    # gps: set_point is unused; the position model is in GpsParams
    DeviceKind.GPS: {"set_point": 0.0, "daily_amplitude": 0.0, "peak_hour": 0.0,
                     "walk_std": 0.0, "tau_s": 60.0, "noise": 0.0,
                     "resolution": 0.000001, "min_value": -180.0, "max_value": 180.0},
}

#: every fault kind, in the order the simulator draws them
FAULT_KINDS = ("spike", "drift", "stuck", "stale", "duplicate", "out_of_order", "late",
               "clock_skew", "no_timestamp", "malformed", "burst", "disconnect",
               "reconnect_storm")

_ID_FIELDS = {"n", "i", "line", "facility", "zone", "kind", "group"}
_TOPIC_FIELDS = {"device_id", "line", "facility", "zone", "kind", "group"}
_BAD_ID = re.compile(r"[\s/+#]")


def _template_fields(template: str) -> set[str]:
    try:
        return {name.split(".")[0].split("[")[0]
                for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None


def _check_template(template: str, allowed: set[str]) -> str:
    unknown = _template_fields(template) - allowed
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)} in {template!r}; "
                         f"allowed: {sorted(allowed)}")
    return template


class SignalParams(StrictModel):
    """value = set_point + daily_amplitude·cos(2π (hour_of_day_utc − peak_hour) / 24)
    + a mean-reverting random walk (steady-state std `walk_std`, correlation time `tau_s`)
    + white `noise`, clamped to [min_value, max_value] and rounded to `resolution`.
    Unset keys take the kind's defaults (KIND_DEFAULTS)."""

    set_point: float | None = None
    daily_amplitude: float | None = None
    peak_hour: float | None = Field(default=None, ge=0, lt=24)
    walk_std: float | None = Field(default=None, ge=0)
    tau_s: float | None = Field(default=None, gt=0)
    noise: float | None = Field(default=None, ge=0)
    resolution: float | None = Field(default=None, gt=0)
    min_value: float | None = None
    max_value: float | None = None


class BatteryParams(StrictModel):
    """Resting voltage falls with time and with every transmission; each transmission also
    sags the reported voltage by `tx_sag_v`, recovering with time constant `recovery_s`."""

    initial_v: float = Field(default=4.2, gt=0)
    empty_v: float = Field(default=3.3, ge=0)
    idle_drain_v_per_day: float = Field(default=0.01, ge=0)
    tx_cost_v: float = Field(default=0.000002, ge=0)
    tx_sag_v: float = Field(default=0.05, ge=0)
    recovery_s: float = Field(default=2.0, gt=0)
    resolution: float = Field(default=0.01, gt=0)


class GpsParams(StrictModel):
    """A mobile asset wandering at `speed_mps` inside a `radius_m` geofence around origin."""

    origin_lat: float = Field(default=48.1374, ge=-90, le=90)
    origin_lon: float = Field(default=11.5755, ge=-180, le=180)
    speed_mps: float = Field(default=1.5, ge=0)
    radius_m: float = Field(default=500.0, gt=0)
    #: heading random walk, degrees per sqrt(second)
    turn_std_deg: float = Field(default=15.0, ge=0)


class DeviceGroup(StrictModel):
    name: str = "group"
    count: int = Field(default=1, ge=0, le=1_000_000)
    #: placeholders: {n} index within the group, {i} index in the fleet, {line}, {facility},
    #: {zone}, {kind}, {group}
    id_template: str = "sensor_{n:04d}_line{line}"
    kind: DeviceKind = DeviceKind.TEMPERATURE
    facility: str = "factory_a"
    #: devices are assigned to lines round-robin: device n is on lines[n % len(lines)]
    lines: list[str] = Field(default_factory=lambda: ["1"], min_length=1)
    zone: str | None = None
    rate_hz: float = Field(default=1.0, gt=0, le=1000)
    qos: Literal[0, 1] = 1
    #: None: the target's protocol
    protocol: SimProtocol | None = None
    #: None: the target's port for this protocol
    port: int | None = Field(default=None, ge=1, le=65535)
    #: MQTT clean session (False: persistent session, unacknowledged messages resent with DUP)
    clean_session: bool = True
    #: payload encoding for MQTT and CoAP
    payload_format: Literal["json", "msgpack"] = "json"
    #: line format for serial devices
    serial_format: Literal["json", "csv"] = "json"
    #: None: the target's topic template
    topic_template: str | None = None
    signal: SignalParams = SignalParams()
    #: null: mains powered, no battery_voltage in the payload
    battery: BatteryParams | None = BatteryParams()
    gps: GpsParams = GpsParams()

    @pydantic.field_validator("lines", mode="before")
    @classmethod
    def _lines_as_str(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) for x in v]
        return v

    @pydantic.field_validator("id_template")
    @classmethod
    def _id_template(cls, v: str) -> str:
        return _check_template(v, _ID_FIELDS)

    @pydantic.field_validator("topic_template")
    @classmethod
    def _topic_template(cls, v: str | None) -> str | None:
        return None if v is None else _check_template(v, _TOPIC_FIELDS)

    @pydantic.model_validator(mode="after")
    def _fill_signal(self) -> DeviceGroup:
        defaults = KIND_DEFAULTS[self.kind]
        given = self.signal.model_dump(exclude_none=True)
        full = SignalParams(**{**defaults, **given})
        if full.min_value is not None and full.max_value is not None \
                and full.min_value >= full.max_value:
            raise ValueError("signal.min_value must be below signal.max_value")
        object.__setattr__(self, "signal", full)
        return self


class TlsConfig(StrictModel):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: skip certificate and host name verification (test brokers only)
    insecure: bool = False


class TargetConfig(StrictModel):
    host: str = "127.0.0.1"
    #: None: 1883 (mqtt), 5683 (coap)
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: SimProtocol = SimProtocol.MQTT
    #: "fast": the built-in asyncio MQTT 3.1.1 publisher (scales to 10k+ devices);
    #: "paho": paho-mqtt clients driven from the same asyncio loop
    mqtt_client: Literal["fast", "paho"] = "fast"
    #: MQTT user name; placeholders ({device_id}, {line}, …) are expanded per device — a
    #: fieldlink gateway's device accounts are named by the device id: "{device_id}"
    username: str | None = None
    #: the password of every device (see credentials_file for one per device)
    password: str | None = SecretField(None)
    #: YAML/JSON mapping device id → password (e.g. the passwords `fieldlink gateway devices
    #: add` printed); devices not in it use `password`
    credentials_file: str | None = None
    tls: TlsConfig = TlsConfig()
    keepalive_s: int = Field(default=60, ge=5, le=65535)
    topic_template: str = "factory/line{line}/{kind}/{device_id}"
    coap_path_template: str = "r/{device_id}"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: unacknowledged QoS 1 messages / confirmable requests per device before it queues
    max_inflight: int = Field(default=20, ge=1, le=65535)

    @pydantic.field_validator("topic_template", "coap_path_template")
    @classmethod
    def _templates(cls, v: str) -> str:
        return _check_template(v, _TOPIC_FIELDS)

    @pydantic.field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        return None if v is None else _check_template(v, _TOPIC_FIELDS)

    def port_for(self, protocol: SimProtocol) -> int:
        if self.port is not None and protocol == self.protocol:
            return self.port
        if protocol == SimProtocol.MQTT and self.tls.enabled:
            return 8883
        return DEFAULT_PORTS[protocol]


class _Fault(StrictModel):
    #: probability per reading a device generates (reconnect_storm: per second of run time)
    rate: float = Field(default=0.0, ge=0.0, le=1.0)


class SpikeFault(_Fault):
    #: added to the value with a random sign (gps: metres)
    magnitude: float = 40.0


class DriftFault(_Fault):
    per_reading: float = 0.5
    length: int = Field(default=30, ge=1)


class StuckFault(_Fault):
    length: int = Field(default=30, ge=1)


class StaleFault(_Fault):
    #: how long the sensor stays silent; its seq resumes where it stopped
    duration_s: float = Field(default=30.0, gt=0)


class LateFault(_Fault):
    #: the reading is held back this long and then sent with its original timestamp
    delay_s: float = Field(default=30.0, gt=0)


class ClockSkewFault(_Fault):
    #: the sensor's timestamp is off by this much (random sign)
    skew_s: float = Field(default=600.0, gt=0)


MalformedVariant = Literal["bad_json", "wrong_type", "oversize"]


def _all_variants() -> list[MalformedVariant]:
    return ["bad_json", "wrong_type", "oversize"]


class MalformedFault(_Fault):
    variants: list[MalformedVariant] = Field(default_factory=_all_variants, min_length=1)
    #: size of an oversize payload (the gateway's default limit is 65536)
    oversize_bytes: int = Field(default=131_072, ge=1)


class BurstFault(_Fault):
    #: extra readings sent back-to-back (consecutive seqs, timestamps 10 ms apart)
    size: int = Field(default=20, ge=1, le=10_000)


class StormFault(_Fault):
    #: share of all connected devices dropped at once
    fraction: float = Field(default=0.5, gt=0, le=1)


class FaultsConfig(StrictModel):
    spike: SpikeFault = SpikeFault()
    drift: DriftFault = DriftFault()
    stuck: StuckFault = StuckFault()
    stale: StaleFault = StaleFault()
    duplicate: _Fault = _Fault()
    out_of_order: _Fault = _Fault()
    late: LateFault = LateFault()
    clock_skew: ClockSkewFault = ClockSkewFault()
    no_timestamp: _Fault = _Fault()
    malformed: MalformedFault = MalformedFault()
    burst: BurstFault = BurstFault()
    disconnect: _Fault = _Fault()
    reconnect_storm: StormFault = StormFault()

    def rates(self) -> dict[str, float]:
        return {kind: getattr(self, kind).rate for kind in FAULT_KINDS}

    def with_rates(self, rates: dict[str, float]) -> FaultsConfig:
        """A copy with some rates changed (CLI `--fault kind=rate`).  Raises ValueError."""
        data = self.model_dump()
        for kind, rate in rates.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
            data[kind]["rate"] = rate
        return FaultsConfig.model_validate(data)


class SimConfig(StrictModel):
    #: the same seed gives the same readings, timestamps (relative to start) and faults
    seed: int = 1
    #: seconds of sending; None: until SIGTERM / Ctrl-C
    duration_s: float | None = Field(default=60.0, gt=0)
    #: wall-clock ms of tick 0 (None: when the run starts); fix it for reproducible timestamps
    start_ms: int | None = Field(default=None, ge=0)
    #: new connections per second, for start-up and reconnects; 0: unlimited
    connect_rate: float = Field(default=500.0, ge=0)
    #: how long a run waits for the initial connections before it starts the clock
    connect_wait_s: float = Field(default=60.0, ge=0)
    #: after the last reading, how long to wait for outstanding acknowledgements
    drain_timeout_s: float = Field(default=5.0, ge=0)
    #: readings a device keeps while disconnected / at its in-flight limit (oldest dropped)
    offline_queue: int = Field(default=100, ge=0)
    #: SQLite ledger of every reading; None: no ledger
    ledger: str | None = None
    target: TargetConfig = TargetConfig()
    fleet: list[DeviceGroup] = Field(default_factory=lambda: [DeviceGroup()])
    faults: FaultsConfig = FaultsConfig()

    @pydantic.model_validator(mode="after")
    def _unique_ids(self) -> SimConfig:
        seen: dict[str, str] = {}
        first = 0
        for group in self.fleet:
            if (group.kind == DeviceKind.GPS and group.serial_format == "csv"
                    and self.protocol_of(group) == SimProtocol.SERIAL):
                raise ValueError(f"group {group.name!r}: gps over serial needs "
                                 f"serial_format json (a CSV line has no measurement name)")
            ids = device_ids(group, first)
            first += group.count
            for device_id in ids:
                if _BAD_ID.search(device_id) or not device_id or len(device_id) > 128:
                    raise ValueError(f"group {group.name!r}: device id {device_id!r} is not "
                                     f"1-128 characters without whitespace, '/', '+', '#'")
                if device_id in seen:
                    raise ValueError(f"device id {device_id!r} appears in groups "
                                     f"{seen[device_id]!r} and {group.name!r}; make the "
                                     f"id_template unique")
                seen[device_id] = group.name
        return self

    def device_count(self) -> int:
        return sum(g.count for g in self.fleet)

    def protocol_of(self, group: DeviceGroup) -> SimProtocol:
        return group.protocol or self.target.protocol


def device_ids(group: DeviceGroup, first_index: int) -> list[str]:
    """The ids of a group's devices; `first_index` is the fleet index of its first device."""
    out = []
    for n in range(group.count):
        out.append(group.id_template.format(
            n=n, i=first_index + n, line=group.lines[n % len(group.lines)],
            facility=group.facility, zone=group.zone or "", kind=group.kind.value,
            group=group.name))
    return out
