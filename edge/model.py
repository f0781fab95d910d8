"""The reading model every part of fieldlink shares.

A `Reading` is one measurement of one sensor.  It is immutable.  Times are integer
milliseconds since the Unix epoch, UTC.

Time fields and who sets them:

* `ts_ms` is the *event time* every downstream stage uses (windows, InfluxDB, Parquet).  It is
  the sensor's own timestamp, unless the sensor sent none or its clock was further from the
  gateway's receive time than the configured tolerance: then it is `received_ms` and `flags`
  says why (`FLAG_TS_MISSING` / `FLAG_CLOCK_SKEW`).
* `sensor_ts_ms` keeps the sensor's claimed time only when it was overridden for skew (so an
  operator can see how far off the sensor was); otherwise it is None.
* `received_ms` is stamped by the gateway when the bytes arrived.

`idempotency_key()` identifies a reading across MQTT/CoAP redeliveries, uplink retries and
replays: two deliveries of the same sensor reading give the same key, so every store can keep
it once.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Priority(IntEnum):
    """Buffer and uplink priority classes; higher is sent first and evicted last."""

    RAW = 0
    AGGREGATE = 1
    ALERT = 2


#: the sensor sent no timestamp; `ts_ms` is the gateway's receive time
FLAG_TS_MISSING = 1
#: the sensor's timestamp was beyond the skew tolerance; `ts_ms` is the receive time and
#: `sensor_ts_ms` keeps what the sensor claimed
FLAG_CLOCK_SKEW = 2

_blake2b = hashlib.blake2b
_pack_q = struct.Struct(">q").pack
_pack_d = struct.Struct(">d").pack

#: 2000-01-01 .. 2100-01-01: a timestamp outside this range is rejected, not corrected
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


@dataclass(slots=True, frozen=True)
class Reading:
    device_id: str
    ts_ms: int
    value: float
    measurement: str = "temperature"
    unit: str = ""
    facility: str | None = None
    line: str | None = None
    zone: str | None = None
    quality: str = Quality.GOOD.value
    battery_voltage: float | None = None
    seq: int | None = None
    received_ms: int = 0
    sensor_ts_ms: int | None = None
    flags: int = 0

    def idempotency_key(self) -> bytes:
        """16 bytes, stable across retries and redeliveries of the same sensor reading.

        Identity, in order of preference: the sensor's sequence number; else the sensor's
        own timestamp with the value; else (no sensor time at all) the gateway receive time
        with the value, which is stable from the buffer onwards.
        """
        # one call over the concatenation: the same digest as feeding the parts one by one
        head = f"{self.device_id}\0{self.measurement}".encode()
        if self.seq is not None:
            data = head + b"\0s" + _pack_q(self.seq)
        elif self.flags & FLAG_TS_MISSING:
            data = head + b"\0r" + _pack_q(self.received_ms) + _pack_d(self.value)
        else:
            sensor_time = self.sensor_ts_ms if self.sensor_ts_ms is not None else self.ts_ms
            data = head + b"\0t" + _pack_q(sensor_time) + _pack_d(self.value)
        return _blake2b(data, digest_size=16).digest()

    @property
    def tags(self) -> dict[str, str]:
        """facility/line/zone that are set, as strings (InfluxDB tags, Kafka keys)."""
        out: dict[str, str] = {}
        if self.facility is not None:
            out["facility"] = self.facility
        if self.line is not None:
            out["line"] = self.line
        if self.zone is not None:
            out["zone"] = self.zone
        return out


@dataclass(slots=True, frozen=True)
class Event:
    """A non-reading record that travels the same path: a window aggregate or an alert.

    `kind` is "aggregate" or "alert"; `body` is a msgpack/JSON-safe mapping whose shape the
    producing module documents (edge.windows for aggregates, edge.rules for alerts).  `key`
    is its idempotency key (16 bytes), chosen by the producer.
    """

    kind: str
    key: bytes
    ts_ms: int
    device_id: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> Priority:
        return Priority.ALERT if self.kind == "alert" else Priority.AGGREGATE
