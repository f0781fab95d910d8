"""The seam between ingress protocols and the rest of the gateway.

Every ingress (MQTT, CoAP, serial) hands the raw bytes it received to an `Ingest`
implementation together with where they came from, and acknowledges to the sensor only when
`ingest()` has returned:

* `durable=True` (MQTT QoS 1/2, confirmable CoAP, serial): `ingest()` returns after the
  readings are committed to the SQLite buffer (group commit) — the gateway's promise is that
  an acknowledged reading survives a crash.
* `durable=False` (QoS 0, non-confirmable CoAP): returns once queued for the next commit.

Input that cannot be accepted (malformed, invalid, unknown device) is dead-lettered with its
raw bytes and counted by reason *before* `ingest()` returns; `Outcome.rejected` then holds
the reason and `Outcome.detail` a human diagnostic.  `ingest()` never raises for bad input;
it raises `RetriableError` only when the buffer itself cannot commit (then the ingress must
not acknowledge).

`gateway.pipeline.Pipeline` is the production implementation;
`gateway.testing.RecordingIngest` is the fake for ingress unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from edge.model import Reading


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from."""

    protocol: str  # "mqtt" | "coap" | "serial"
    peer: str = ""  # remote address, or the serial port
    #: the device id the transport implies (MQTT topic / client id, CoAP resource, port map)
    device_hint: str | None = None
    topic: str | None = None
    username: str | None = None
    #: content format when the transport says (CoAP content-format, serial line format)
    content_type: str | None = None


@dataclass(slots=True)
class Outcome:
    accepted: int = 0
    duplicates: int = 0
    rejected: str | None = None  # dead-letter reason, when the payload was refused
    detail: str = ""
    readings: list[Reading] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected is None


class Ingest(Protocol):
    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        ...
