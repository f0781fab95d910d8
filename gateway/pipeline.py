"""The production `Ingest`: raw sensor bytes → validated readings → committed buffer rows.

Who calls what: every ingress hands each payload to the pipeline once and acknowledges the
sensor only after the pipeline said so — MQTT with `submit()` (a callback, no coroutine: the
hot path at 10,000 payloads/s), CoAP and serial with `await ingest()` (the same path behind a
future).

Guarantees:

* Decoding happens in `edge.payload.decode` only (one codec).  The gateway's receive time is
  stamped here, once, before decoding, so clock-skew correction and the idempotency key of a
  reading without sensor time are fixed from this point on.
* Durable (`durable=True`): the outcome is delivered after the buffer committed the readings
  (group commit) and any dead letter of the payload, or as `RetriableError` (`BufferBusy`)
  when they could not be stored — the ingress then must not acknowledge.  Nothing is ever
  acknowledged that is not committed or dead-lettered.  Outcomes of one ingress are delivered
  in submission order when they share a commit group, and groups settle in order.
* Bad input never raises: a payload that cannot be decoded at all, one that holds no
  readings (`no_readings`: `[]`, a CSV header alone), an element that fails validation, a
  reading of an unknown device under `unknown_devices: reject` — each is
  dead-lettered with its raw bytes, source, peer and reason, and counted by reason, before the
  outcome is delivered.  A batch with some bad elements stores the good ones and
  dead-letters the raw payload once, with every bad index and reason in the detail.
* Readings that were stored (not duplicates) are handed to the observers (the alert engine)
  in commit order, after the commit, so an alert never describes data the buffer lost.  The
  observers are called once per commit group with all of its readings (not once per
  payload), and for a non-durable payload at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.clock import Clock, SystemClock
from edge.errors import FieldlinkError, ValidationError
from edge.model import Reading
from edge.payload.decode import DecodeContext, Limits, decode_payload_partial
from gateway.buffer import AppendResult
from gateway.errors import BufferBusy
from gateway.ingest import Origin, Outcome

log = logging.getLogger("fieldlink.gateway.pipeline")

#: `done(token, outcome, error)`: exactly one of outcome / error is None
Done = Callable[[Any, "Outcome | None", "BaseException | None"], None]
#: `cb(token, result, error)` from the buffer, on the event loop, after the commit
_BufferCallback = Callable[[Any, Any, "BaseException | None"], None]


class BufferLike(Protocol):
    """What the pipeline needs of `gateway.buffer.Buffer`.  A buffer offering only the async
    `append(readings, durable=)` / `dead_letter(...)` pair (test fakes) is adapted with a task
    per call (`AsyncBuffer`)."""

    def append_soon(self, readings: Sequence[Reading], done: _BufferCallback,
                    token: Any = None) -> None: ...

    def append_nowait(self, readings: Sequence[Reading]) -> AppendResult: ...

    def dead_letter_soon(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                         detail: str = "", done: _BufferCallback | None = None,
                         token: Any = None) -> None: ...


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

#: decode contexts kept per origin object (an ingress reuses its origins: MQTT per topic)
_CONTEXTS_MAX = 20_000


class _Job:
    """A payload waiting for more than one commit callback (dead letter + good readings)."""

    __slots__ = ("done", "token", "left", "error", "outcome")

    def __init__(self, done: Done, token: Any, left: int, outcome: Outcome) -> None:
        self.done = done
        self.token = token
        self.left = left
        self.error: BaseException | None = None
        self.outcome = outcome


class Pipeline:
    def __init__(self, buffer: BufferLike, *, limits: Mapping[str, Limits] | None = None,
                 registry: Mapping[str, DeviceDefaults] | None = None,
                 known_device: Callable[[str], bool] | None = None,
                 clock: Clock | None = None) -> None:
        """`limits` per protocol ("mqtt", "coap", "serial"; missing → decoder defaults).
        `known_device` is consulted only when set (the `unknown_devices: reject` policy)."""
        self.buffer: BufferLike = buffer if hasattr(buffer, "append_soon") else AsyncBuffer(
            buffer)
        self.limits = dict(limits or {})
        self.registry = dict(registry or {})
        self.known_device = known_device
        self.clock = clock or SystemClock()
        self.observers: list[Observer] = []
        self.stats = PipelineStats()
        self._default_limits = Limits()
        # id(origin) -> (origin, context): holding the origin keeps its id from being reused
        self._contexts: dict[int, tuple[Origin, DecodeContext]] = {}
        self._observe_pending: list[Reading] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add_observer(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _context(self, origin: Origin) -> DecodeContext:
        """The decode context of an origin (its `received_ms` is passed per payload)."""
        limits = self.limits.get(origin.protocol, self._default_limits)
        hint = origin.device_hint
        defaults = self.registry.get(hint) if hint is not None else None
        if defaults is None:
            return DecodeContext(received_ms=0, device_hint=hint,
                                 content_type=origin.content_type, limits=limits)
        return DecodeContext(received_ms=0, device_hint=hint,
                             measurement_hint=defaults.measurement, unit_hint=defaults.unit,
                             facility=defaults.facility, line=defaults.line,
                             zone=defaults.zone, content_type=origin.content_type,
                             limits=limits)

    # -- the async face (CoAP, serial, tests) ---------------------------------------------------
    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        """`submit()` awaited: returns the outcome, raises `RetriableError` when the buffer
        could not commit."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.submit(payload, origin, durable=durable, done=_settle, token=fut)
        return await fut

    # -- the hot path ---------------------------------------------------------------------------
    def submit(self, payload: bytes, origin: Origin, *, durable: bool, done: Done,
               token: Any = None) -> None:
        """Decode, dead-letter what is bad, hand the good readings to the buffer, and call
        `done(token, outcome, error)` exactly once on the event loop: after the commit when
        `durable`, else at once.  It may be called before `submit` returns (non-durable
        payloads, a buffer too far behind).  Must be called on the event loop thread."""
        protocol = origin.protocol
        self.stats.payloads[protocol] += 1
        now = self.clock.now_ms()
        entry = self._contexts.get(id(origin))
        if entry is None or entry[0] is not origin:
            if len(self._contexts) >= _CONTEXTS_MAX:
                self._contexts.clear()
            entry = self._contexts[id(origin)] = (origin, self._context(origin))
        try:
            good, bad = decode_payload_partial(payload, entry[1], received_ms=now)
        except FieldlinkError as exc:
            self._reject_only(payload, origin, exc.reason, exc.message, durable, done, token)
            return

        if self.known_device is not None and good:
            good = self._known_only(good, bad)

        if bad:
            reason = bad[0][1].reason if len({e.reason for _, e in bad}) == 1 else "invalid"
            detail = "; ".join(f"[{i}] {e.reason}: {e.message}" for i, e in bad[:20])
            if len(bad) > 20:
                detail += f"; … {len(bad) - 20} more"
            if not good:
                self._reject_only(payload, origin, reason, detail, durable, done, token)
                return
            self._partial(payload, origin, good, reason, detail, durable, done, token)
            return
        if not good:  # `[]`, an empty msgpack array, a CSV payload of only its header line
            # acknowledged like any refused payload, so it is dead-lettered and counted too
            self._reject_only(payload, origin, "no_readings", "the payload holds no readings",
                              durable, done, token)
            return
        if not durable:
            done(token, *self._nondurable(good, protocol, ""))
            return
        try:
            self.buffer.append_soon(good, self._committed, (done, token, good, protocol))
        except BufferBusy as exc:  # closed, or too far behind (counted by the buffer)
            done(token, None, exc)

    def _known_only(self, good: list[Reading], bad: list[tuple[int, ValidationError]]
                    ) -> list[Reading]:
        assert self.known_device is not None
        kept: list[Reading] = []
        for offset, r in enumerate(good):
            if self.known_device(r.device_id):
                kept.append(r)
            else:
                bad.append((offset, ValidationError(
                    f"device {r.device_id!r} is not registered and unknown devices are "
                    "rejected", field="device_id", reason="unknown_device")))
        return kept

    def _committed(self, tok: tuple[Done, Any, list[Reading], str], result: AppendResult | None,
                   error: BaseException | None) -> None:
        """Buffer callback of a payload whose readings were all good."""
        done, token, good, protocol = tok
        outcome, error = self._appended(good, protocol, "", result, error)
        done(token, outcome, error)

    def _appended(self, good: list[Reading], protocol: str, detail: str,
                  result: AppendResult | None, error: BaseException | None
                  ) -> tuple[Outcome | None, BaseException | None]:
        if error is not None or result is None:
            return None, error or BufferBusy("buffer gave no result")
        if result.refused:
            refusal = result.refused_reason or "refused"
            self.stats.refused[refusal] += result.refused
            return None, BufferBusy(f"buffer refused {result.refused} readings: {refusal}")
        stored = result.stored
        self.stats.readings[protocol] += stored
        if result.duplicates:
            self.stats.duplicates[protocol] += result.duplicates
        # A result with duplicates does not say which ones; observers de-duplicate windows
        # by event time anyway, so only an all-duplicate payload is withheld.
        if stored and self.observers:
            self._observe(good)
        # Some elements of a batch may have been dead-lettered: the payload as a whole was
        # taken into custody, so it is not `rejected`; `detail` says what was refused.
        return Outcome(accepted=stored, duplicates=result.duplicates, detail=detail,
                       readings=good), None

    def _nondurable(self, good: list[Reading], protocol: str, detail: str
                    ) -> tuple[Outcome | None, BaseException | None]:
        result = self.buffer.append_nowait(good)
        if result.refused:  # best effort: the sensor is not told (it did not ask)
            self.stats.refused[result.refused_reason or "refused"] += result.refused
            return Outcome(detail=detail, readings=good), None
        self.stats.readings[protocol] += result.pending
        if self.observers:
            self._observe(good)
            self._flush_observers()  # best effort, not committed: observed at once
        return Outcome(accepted=result.pending, detail=detail, readings=good), None

    # -- rejects ----------------------------------------------------------------------------
    def _dead_letter(self, payload: bytes, origin: Origin, reason: str, detail: str,
                     done: _BufferCallback | None, token: Any) -> None:
        self.stats.rejected[reason] += 1
        self.buffer.dead_letter_soon(bytes(payload), source=origin.protocol, peer=origin.peer,
                                     reason=reason, detail=detail[:2000], done=done,
                                     token=token)

    def _reject_only(self, payload: bytes, origin: Origin, reason: str, detail: str,
                     durable: bool, done: Done, token: Any) -> None:
        outcome = Outcome(rejected=reason, detail=detail)
        try:
            if not durable:
                self._dead_letter(payload, origin, reason, detail, None, None)
                done(token, outcome, None)
                return
            self._dead_letter(payload, origin, reason, detail, _rejected,
                              (done, token, outcome))
        except BufferBusy as exc:  # the buffer is closed: nothing can be kept
            done(token, None, exc)

    def _partial(self, payload: bytes, origin: Origin, good: list[Reading], reason: str,
                 detail: str, durable: bool, done: Done, token: Any) -> None:
        """Some elements bad: dead-letter the raw payload once, store the good ones."""
        try:
            if not durable:
                self._dead_letter(payload, origin, reason, detail, None, None)
                done(token, *self._nondurable(good, origin.protocol, detail))
                return
            job = _Job(done, token, 2, Outcome(rejected=reason, detail=detail))
            self._dead_letter(payload, origin, reason, detail, self._job_step, (job, None))
            protocol = origin.protocol
            self.buffer.append_soon(good, self._job_step, (job, (good, protocol, detail)))
        except BufferBusy as exc:
            done(token, None, exc)  # a dead letter already queued still lands; no ack

    def _job_step(self, tok: tuple[_Job, tuple[list[Reading], str, str] | None], result: Any,
                  error: BaseException | None) -> None:
        job, append = tok
        if append is not None:
            good, protocol, detail = append
            outcome, error = self._appended(good, protocol, detail, result, error)
            if outcome is not None:
                job.outcome = outcome
        if error is not None and job.error is None:
            job.error = error
        job.left -= 1
        if job.left == 0:
            job.done(job.token, None if job.error else job.outcome, job.error)

    # -- observers --------------------------------------------------------------------------
    def _observe(self, readings: list[Reading]) -> None:
        pending = self._observe_pending
        if not pending:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush_observers)
        pending.extend(readings)

    def _flush_observers(self) -> None:
        """All readings committed since the last flush, in commit order, in one call per
        observer (a commit group's callbacks run back to back, so this follows them)."""
        readings = self._observe_pending
        if not readings:
            return
        self._observe_pending = []
        for observer in self.observers:
            try:
                observer(readings)
            except Exception:  # an observer bug must not cost the sensors their acks
                self.stats.observer_errors += 1
                log.exception("pipeline observer failed")


class AsyncBuffer:
    """`BufferLike` over a buffer with only async `append` / `dead_letter` (a task per call;
    for test doubles, not for the hot path)."""

    def __init__(self, buffer: Any) -> None:
        self.inner = buffer
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="pipeline-buffer-call")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call: Any, done: _BufferCallback | None, token: Any) -> None:
        try:
            result = await call
        except Exception as exc:  # noqa: BLE001 - handed to the caller like a failed commit
            if done is not None:
                done(token, None, exc)
            return
        if done is not None:
            done(token, result, None)

    def append_soon(self, readings: Sequence[Reading], done: _BufferCallback,
                    token: Any = None) -> None:
        self._spawn(self._run(self.inner.append(readings, durable=True), done, token))

    def append_nowait(self, readings: Sequence[Reading]) -> AppendResult:
        self._spawn(self._run(self.inner.append(readings, durable=False), None, None))
        return AppendResult(pending=len(readings))

    def dead_letter_soon(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                         detail: str = "", done: _BufferCallback | None = None,
                         token: Any = None) -> None:
        self._spawn(self._run(self.inner.dead_letter(raw, source=source, reason=reason,
                                                     peer=peer, detail=detail,
                                                     durable=done is not None), done, token))


def _rejected(tok: tuple[Done, Any, Outcome], result: Any, error: BaseException | None
              ) -> None:
    done, token, outcome = tok
    done(token, None if error else outcome, error)


def _settle(fut: asyncio.Future[Outcome], outcome: Outcome | None,
            error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(outcome)  # type: ignore[arg-type]
