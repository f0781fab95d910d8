"""The production `Ingest`: raw sensor bytes → validated readings → committed buffer rows.

Who calls what: every ingress (gateway.mqtt, gateway.coap, gateway.serialport) calls
`Pipeline.ingest()` once per payload and acknowledges the sensor only after it returned.

Guarantees:

* Decoding happens in `edge.payload.decode` only (one codec).  The gateway's receive time is
  stamped here, once, before decoding, so clock-skew correction and the idempotency key of a
  reading without sensor time are fixed from this point on.
* With `durable=True` the call returns after the buffer committed the readings (group commit),
  or raises `RetriableError` (`BufferBusy`) when they could not be stored — the ingress then
  must not acknowledge.  Nothing is ever acknowledged that is not committed or dead-lettered.
* Bad input never raises: a payload that cannot be decoded at all, an element that fails
  validation, a reading of an unknown device under `unknown_devices: reject` — each is
  dead-lettered with its raw bytes, source, peer and reason, and counted by reason, before the
  call returns.  A batch with some bad elements stores the good ones and dead-letters the raw
  payload once, with every bad index and reason in the detail.
* Readings that were stored (not duplicates) are handed to the observers (the alert engine)
  in payload order, after the commit, so an alert never describes data the buffer lost.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge.clock import Clock, SystemClock
from edge.errors import FieldlinkError, ValidationError
from edge.model import Reading
from edge.payload.decode import DecodeContext, Limits, decode_payload_partial
from gateway.buffer import AppendResult
from gateway.errors import BufferBusy
from gateway.ingest import Origin, Outcome

log = logging.getLogger("fieldlink.gateway.pipeline")


class BufferLike(Protocol):
    async def append(self, readings: Sequence[Reading], *, durable: bool = True
                     ) -> AppendResult: ...

    async def dead_letter(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                          detail: str = "", durable: bool = True) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceDefaults:
    """Registry entry: tags and measurement used where a sensor's message is silent."""

    facility: str | None = None
    line: str | None = None
    zone: str | None = None
    measurement: str | None = None
    unit: str | None = None


@dataclass
class PipelineStats:
    payloads: Counter[str] = field(default_factory=Counter)  # by protocol
    readings: Counter[str] = field(default_factory=Counter)  # stored, by protocol
    duplicates: Counter[str] = field(default_factory=Counter)  # by protocol
    rejected: Counter[str] = field(default_factory=Counter)  # dead-lettered, by reason
    refused: Counter[str] = field(default_factory=Counter)  # buffer refusals, by reason
    observer_errors: int = 0


Observer = Callable[[Sequence[Reading]], None]


class Pipeline:
    def __init__(self, buffer: BufferLike, *, limits: Mapping[str, Limits] | None = None,
                 registry: Mapping[str, DeviceDefaults] | None = None,
                 known_device: Callable[[str], bool] | None = None,
                 clock: Clock | None = None) -> None:
        """`limits` per protocol ("mqtt", "coap", "serial"; missing → decoder defaults).
        `known_device` is consulted only when set (the `unknown_devices: reject` policy)."""
        self.buffer = buffer
        self.limits = dict(limits or {})
        self.registry = dict(registry or {})
        self.known_device = known_device
        self.clock = clock or SystemClock()
        self.observers: list[Observer] = []
        self.stats = PipelineStats()
        self._default_limits = Limits()

    def add_observer(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _context(self, origin: Origin, now_ms: int) -> DecodeContext:
        limits = self.limits.get(origin.protocol, self._default_limits)
        hint = origin.device_hint
        defaults = self.registry.get(hint) if hint is not None else None
        if defaults is None:
            return DecodeContext(received_ms=now_ms, device_hint=hint,
                                 content_type=origin.content_type, limits=limits)
        return DecodeContext(received_ms=now_ms, device_hint=hint,
                             measurement_hint=defaults.measurement, unit_hint=defaults.unit,
                             facility=defaults.facility, line=defaults.line,
                             zone=defaults.zone, content_type=origin.content_type,
                             limits=limits)

    async def _reject(self, payload: bytes, origin: Origin, reason: str, detail: str,
                      durable: bool) -> None:
        self.stats.rejected[reason] += 1
        await self.buffer.dead_letter(bytes(payload), source=origin.protocol, peer=origin.peer,
                                      reason=reason, detail=detail[:2000], durable=durable)

    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        protocol = origin.protocol
        self.stats.payloads[protocol] += 1
        now = self.clock.now_ms()
        try:
            good, bad = decode_payload_partial(payload, self._context(origin, now))
        except FieldlinkError as exc:
            await self._reject(payload, origin, exc.reason, exc.message, durable)
            return Outcome(rejected=exc.reason, detail=exc.message)

        if self.known_device is not None and good:
            kept: list[Reading] = []
            offset = 0
            for r in good:
                if self.known_device(r.device_id):
                    kept.append(r)
                else:
                    bad.append((offset, ValidationError(
                        f"device {r.device_id!r} is not registered and unknown devices are "
                        "rejected", field="device_id", reason="unknown_device")))
                offset += 1
            good = kept

        reason: str | None = None
        detail = ""
        if bad:
            reason = bad[0][1].reason if len({e.reason for _, e in bad}) == 1 else "invalid"
            detail = "; ".join(f"[{i}] {e.reason}: {e.message}" for i, e in bad[:20])
            if len(bad) > 20:
                detail += f"; … {len(bad) - 20} more"
            await self._reject(payload, origin, reason, detail, durable)

        if not good:
            return Outcome(rejected=reason or "empty", detail=detail or "no readings")

        result = await self.buffer.append(good, durable=durable)
        if result.refused:
            refusal = result.refused_reason or "refused"
            self.stats.refused[refusal] += result.refused
            if durable:
                raise BufferBusy(f"buffer refused {result.refused} readings: {refusal}")
        self.stats.readings[protocol] += result.stored or result.pending
        self.stats.duplicates[protocol] += result.duplicates

        # A durable result with duplicates does not say which ones; observers de-duplicate
        # windows by event time anyway, so only an all-duplicate payload is withheld.
        if self.observers and (result.stored or result.pending):
            for observer in self.observers:
                try:
                    observer(good)
                except Exception:  # an observer bug must not cost the sensor its ack
                    self.stats.observer_errors += 1
                    log.exception("pipeline observer failed")
        # Some elements of a batch may have been dead-lettered above: the payload as a whole
        # was taken into custody, so it is not `rejected`; `detail` says what was refused.
        return Outcome(accepted=result.stored or result.pending,
                       duplicates=result.duplicates, detail=detail, readings=good)
