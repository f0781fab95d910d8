"""`Uplink`: the component that drains the buffer into cloud ingest.

    async with Buffer(...) as buf, Uplink(buf, UplinkSettings.from_config(cfg)) as up:
        ...                                  # up.stats(), up.health(), up.down_since_ms

Protocol, per batch (docs/uplink.md): claim → encode → store the frame with the claim →
sign → POST → ack.

* Claim: `Buffer.claim(max_records, live_share)` when `batch_max_records` rows are waiting,
  an alert is waiting, or the oldest waiting row is `batch_max_age_ms` old.  The claim holds
  alerts, then aggregates, then raw readings (a `live_share` of them the newest, the rest the
  oldest backlog), so after an outage the backlog drains without starving live data.
* Encode and store: the frame is stored with the claim (`set_claim_meta`) before the first
  POST; every attempt posts exactly those bytes under the claim's sequence number.
* Ack: `Buffer.ack(claim)` only after ingest answered 200 (`duplicate` or not).  A batch
  without an answer is never deleted and never regrouped: it is resent identically after a
  timeout, a 5xx or a restart, and ingest's batch ledger answers the copy as a duplicate.
* Start: `pending_claims()` (claims of an earlier run, acknowledged by nobody) are resent
  first, in sequence order, before anything new is claimed.

Failures: capped, jittered exponential backoff (`edge.backoff.Backoff`), Retry-After honoured
as a floor (at most `backoff_cap_s`); a circuit breaker opens after `breaker_failures`
consecutive failures and lets one probe through every `breaker_reset_s`.  No new batch is
claimed while backing off or while the circuit is not closed, so rows stay unclaimed and
the next claims after recovery mix live data with the backlog.  What happens for each
status: `gateway.uplink.verdict`.

Concurrency: up to `max_in_flight` batches are posted at once (default 1: batches reach the
cloud in sequence order); acks may complete out of order — claims are independent in the
buffer.  Backoff and breaker are shared: one failure pauses every sender.

Tasks: "uplink" (resends pending claims, then claims new batches) and one
"uplink-batch-<seq>" per batch in flight.  Who calls what: the application enters the
Uplink after the buffer (and leaves it before); `stats()` is read by /metrics, `health()`
by /healthz, `down_since_ms` by the alert engine's `uplink_down` rule.

Shutdown (`__aexit__`, e.g. on SIGTERM): nothing new is claimed or attempted; attempts in
progress get `shutdown_grace_s` to finish (a 200 that arrives is still acknowledged), then
they are cancelled.  An unfinished batch stays claimed in the buffer, with its frame, and is
resent identically at the next start; so does everything after a crash or SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from gateway.buffer import Buffer, Claim
from gateway.errors import BufferBusy
from gateway.uplink.bandwidth import TokenBucket
from gateway.uplink.breaker import CircuitBreaker, CircuitState
from gateway.uplink.frames import Encoded, frame_for_claim, record_bytes
from gateway.uplink.settings import UplinkSettings
from gateway.uplink.stats import UplinkStats
from gateway.uplink.transport import Answer, HttpTransport
from gateway.uplink.verdict import Action

__all__ = ["Uplink"]

log = logging.getLogger("fieldlink.gateway.uplink")

#: dead-letter reasons (Buffer.dead_letter) of the uplink
DL_REJECTED = "cloud_rejected"
DL_UNENCODABLE = "unencodable"
#: a failure of the same kind is logged again after this many seconds at the earliest
LOG_REPEAT_S = 60.0
EWMA_ALPHA = 0.1


class Uplink:
    def __init__(self, buffer: Buffer, settings: UplinkSettings, *,
                 clock: Clock | None = None, session: aiohttp.ClientSession | None = None,
                 rng: random.Random | None = None) -> None:
        """`session`: an aiohttp session to use instead of the uplink's own (it is not closed
        by the uplink, and its TLS and timeout settings apply)."""
        self.buffer = buffer
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.transport = HttpTransport(settings, self.clock, session=session)
        s = settings
        self.backoff = Backoff(base=s.backoff_base_s, cap=s.backoff_cap_s,
                               rng=rng or random.Random())
        self.breaker = CircuitBreaker(s.breaker_failures, s.breaker_reset_s)
        self.bucket = (TokenBucket(s.bandwidth_bytes_per_s, s.bandwidth_burst_bytes,
                                   now=self.clock.monotonic())
                       if s.bandwidth_bytes_per_s else None)
        self.max_records = s.batch_max_records
        #: wall-clock ms of the first failure since the last success (None: up)
        self.down_since_ms: int | None = None
        self._retry_at = 0.0  # monotonic: no attempt before this
        self._stop = asyncio.Event()
        self._dispatch_wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: dict[int, int] = {}  # seq -> rows
        self._waiting_since: float | None = None
        self._logged: dict[tuple[Any, ...], float] = {}
        self._last_verdict_hold: str | None = None
        # counters (see UplinkStats)
        self.counts: Counter[str] = Counter()
        self.rejected_by_status: Counter[str] = Counter()
        self.failures_by_reason: Counter[str] = Counter()
        self.throttled_s = 0.0
        self.acked_wire_bytes = 0
        self.acked_readings = 0
        self.latency_ms_last: float | None = None
        self.latency_ms_avg: float | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Uplink:
        await self.transport.__aenter__()
        self._runner = asyncio.create_task(self._run(), name="uplink")
        log.info("uplink started", extra={"fields": {
            "url": self.settings.display_url, "gateway_id": self.settings.gateway_id,
            "max_in_flight": self.settings.max_in_flight,
            "bandwidth_bytes_per_s": self.settings.bandwidth_bytes_per_s}})
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        self._dispatch_wake.set()
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                done, _ = await asyncio.wait({runner}, timeout=self.settings.shutdown_grace_s)
                if not done:
                    log.warning("uplink attempts abandoned at shutdown; their batches stay "
                                "claimed and are resent at the next start",
                                extra={"fields": {"batches": sorted(self._in_flight)}})
                    runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
        finally:
            await self.transport.__aexit__(None, None, None)
            log.info("uplink stopped", extra={"fields": {
                "batches_sent": self.counts["batches_sent"],
                "pending": sorted(self._in_flight)}})

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _nap(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep up to `seconds`, less when stopping (or `wake` is set).  True unless
        stopping."""
        event = wake or self._stop
        if seconds > 0 and not event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await event.wait()
        return not self._stop.is_set()

    # -- dispatch ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self._run_once()
                return
            except Exception:
                # a bug: whatever was in flight was cancelled and stays claimed, so starting
                # over from the pending claims resends it identically
                self.counts["internal_errors"] += 1
                log.exception("uplink failed; starting over from the pending claims")
                if not await self._nap(max(1.0, self.backoff.next_delay())):
                    return

    async def _run_once(self) -> None:
        async with asyncio.TaskGroup() as tg:
            pending = await self._pending_claims()
            self.counts["resent_at_start"] = len(pending)
            if pending:
                log.info("resending batches of an earlier run", extra={"fields": {
                    "batches": len(pending), "first_seq": pending[0].seq}})
            for claim in pending:
                if not await self._slot_free():
                    return
                self._spawn(tg, claim)
            while await self._slot_free():
                fresh = await self._next_claim()
                if fresh is None:
                    return
                self._spawn(tg, fresh)

    def _spawn(self, tg: asyncio.TaskGroup, claim: Claim) -> None:
        self._in_flight[claim.seq] = len(claim)
        tg.create_task(self._deliver(claim), name=f"uplink-batch-{claim.seq}")

    async def _pending_claims(self) -> list[Claim]:
        while True:
            try:
                return await self.buffer.pending_claims()
            except BufferBusy as e:
                if self.stopping:
                    return []
                log.warning("cannot read pending claims yet", extra={"fields": {
                    "error": str(e)}})
                await self._nap(1.0)

    async def _slot_free(self) -> bool:
        while not self.stopping:
            self._dispatch_wake.clear()
            if len(self._in_flight) < self.settings.max_in_flight:
                return True
            await self._nap(3600.0, self._dispatch_wake)
        return False

    def _link_ready(self, now: float) -> bool:
        return (now >= self._retry_at
                and self.breaker.state(now) is CircuitState.CLOSED)

    async def _next_claim(self) -> Claim | None:
        """Wait for a reason to send (size, age, alert), then claim.  None when stopping."""
        s = self.settings
        while not self.stopping:
            self._dispatch_wake.clear()
            now = self.clock.monotonic()
            if self._link_ready(now):
                try:
                    if self._due(now):
                        claim = await self.buffer.claim(self.max_records, s.live_share)
                        if claim is not None:
                            self._waiting_since = None
                            return claim
                except BufferBusy as e:
                    self._note_failure_log(("claim",), "claim failed; retrying", str(e))
                    await self._nap(0.5)
                    continue
                except Exception:
                    self.counts["internal_errors"] += 1
                    log.exception("uplink could not claim a batch; retrying")
                    await self._nap(1.0)
                    continue
            await self._nap(s.poll_interval_s, self._dispatch_wake)
        return None

    def _due(self, now: float) -> bool:
        st = self.buffer.stats()
        waiting = sum(st.rows.values()) - st.claimed_rows
        if waiting <= 0:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        if waiting >= self.max_records:
            return True
        if st.claims_in_flight == 0 and st.rows.get("alert", 0) > 0:
            return True  # an alert does not wait for company
        age_ms = (now - self._waiting_since) * 1000
        if st.claims_in_flight == 0 and st.oldest_unsent_age_ms is not None:
            age_ms = max(age_ms, st.oldest_unsent_age_ms)
        return age_ms >= self.settings.batch_max_age_ms

    # -- one batch ---------------------------------------------------------------------------

    async def _deliver(self, claim: Claim) -> None:
        """Drive one claim to ack / reject / release, or leave it pending at shutdown.
        Never raises (but for cancellation): a bug is logged and the batch retried."""
        try:
            while True:
                try:
                    await self._deliver_once(claim)
                    return
                except BufferBusy as e:
                    self._note_failure_log(("buffer",), "buffer busy during delivery", str(e))
                except Exception:
                    self.counts["internal_errors"] += 1
                    log.exception("uplink delivery failed unexpectedly; retrying",
                                  extra={"fields": {"seq": claim.seq}})
                if not await self._nap(max(0.1, self.backoff.next_delay())):
                    return
        finally:
            self._in_flight.pop(claim.seq, None)
            self._dispatch_wake.set()

    async def _deliver_once(self, claim: Claim) -> None:
        enc = await self._prepare(claim)
        if enc is None:
            return
        attempt = 0
        while True:
            if not await self._admitted():
                return
            if attempt:
                self.counts["retries"] += 1
            attempt += 1
            if self.bucket is not None:
                wait = self.bucket.reserve(self.transport.wire_size(enc.frame),
                                           self.clock.monotonic())
                if wait > 0:
                    self.throttled_s += wait
                    if not await self._nap(wait):
                        self.breaker.abandon()
                        return
            try:
                answer = await self.transport.post(enc.frame)
            except BaseException:
                self.breaker.abandon()  # cancelled mid-attempt: another may probe
                raise
            if await self._settle(claim, enc, answer):
                return

    async def _prepare(self, claim: Claim) -> Encoded | None:
        """The frame to send (stored or new; a new one is stored with the claim first).
        None when there is nothing left to send (every row was dead-lettered)."""
        s = self.settings
        # ~20 ms of CPU per 1000 readings on a desktop core, several times that on a Pi: off
        # the event loop the MQTT broker and CoAP server share
        enc = await asyncio.to_thread(frame_for_claim, claim, s.gateway_id, s.compression)
        if enc.stored:
            return enc
        for record, err in enc.unencodable:
            await self.buffer.dead_letter(record_bytes(record), source="uplink",
                                          reason=DL_UNENCODABLE, peer=s.display_url,
                                          detail=f"batch {claim.seq}: {err.reason}: {err}")
            self.counts["unencodable"] += 1
        if enc.unencodable:
            log.error("rows the codec cannot carry were dead-lettered", extra={"fields": {
                "seq": claim.seq, "rows": len(enc.unencodable)}})
            if enc.readings + enc.events == 0:
                await self._ack(claim)
                return None
        await self.buffer.set_claim_meta(claim, enc.frame)
        return enc

    async def _admitted(self) -> bool:
        """Wait until backoff and breaker let an attempt go.  False when stopping."""
        while not self.stopping:
            now = self.clock.monotonic()
            if now < self._retry_at:
                await self._nap(self._retry_at - now)
                continue
            before = self.breaker.state(now)
            wait = self.breaker.admit(now)
            if wait <= 0:
                if before is CircuitState.HALF_OPEN:
                    log.info("uplink circuit half-open: probing")
                return True
            await self._nap(wait)
        return False

    async def _settle(self, claim: Claim, enc: Encoded, answer: Answer) -> bool:
        """Act on one answer.  True when the claim is finished with (acked, rejected or
        released), False to try again."""
        v = answer.verdict
        self.counts["bytes_sent"] += answer.wire_bytes
        self.last_status = v.status
        if not v.link_ok:
            self._failure(claim, answer)
            return False
        self._link_up(answer)
        if v.action is Action.ACK:
            # counted before the local ack: the cloud has the batch whatever happens to the
            # ack, and whoever sees the rows gone also sees them counted
            self.counts["batches_sent"] += 1
            if v.duplicate:
                self.counts["batches_duplicate"] += 1
            self.counts["readings_sent"] += enc.readings
            self.counts["events_sent"] += enc.events
            self.acked_wire_bytes += answer.wire_bytes
            self.acked_readings += enc.readings
            await self._ack(claim)
            return True
        if v.action is Action.SPLIT and len(claim) > 1:
            await self.buffer.release(claim)
            self.counts["batches_split"] += 1
            self.rejected_by_status[str(v.status)] += 1
            self.max_records = max(1, min(self.max_records, len(claim) // 2))
            log.warning("batch too large for ingest; its rows go again in smaller batches",
                        extra={"fields": {"seq": claim.seq, "rows": len(claim),
                                          "bytes": len(enc.frame),
                                          "batch_max_records": self.max_records}})
            return True
        # REJECT, or a single row that is still too large: the cloud will never take it
        await self.buffer.dead_letter(
            enc.frame, source="uplink", reason=DL_REJECTED, peer=self.settings.display_url,
            detail=f"batch {claim.seq}: HTTP {v.status} {v.reason}: {v.detail}"[:1000])
        await self._ack(claim)
        self.counts["batches_rejected"] += 1
        self.counts["readings_rejected"] += enc.readings
        self.rejected_by_status[str(v.status)] += 1
        log.error("cloud rejected a batch; kept in the local dead letters", extra={"fields": {
            "seq": claim.seq, "status": v.status, "reason": v.reason, "detail": v.detail,
            "readings": enc.readings, "events": enc.events}})
        return True

    async def _ack(self, claim: Claim) -> None:
        """`Buffer.ack`, retried while the buffer is busy.  If it cannot be done before
        shutdown, the claim stays pending and its resend is answered as a duplicate."""
        tries = 0
        while True:
            try:
                await self.buffer.ack(claim)
                return
            except BufferBusy as e:
                tries += 1
                if self.stopping and tries >= 3:
                    raise
                self._note_failure_log(("ack",), "ack failed; retrying", str(e))
                await asyncio.sleep(min(2.0, 0.05 * 2 ** tries))

    # -- link state --------------------------------------------------------------------------

    def _link_up(self, answer: Answer) -> None:
        v = answer.verdict
        was_open = self.breaker.state(self.clock.monotonic()) is not CircuitState.CLOSED
        self.breaker.success()
        self.backoff.reset()
        self._retry_at = 0.0
        self._last_verdict_hold = None
        ms = answer.elapsed_s * 1000
        self.latency_ms_last = ms
        self.latency_ms_avg = (ms if self.latency_ms_avg is None
                               else self.latency_ms_avg + EWMA_ALPHA * (ms - self.latency_ms_avg))
        if self.down_since_ms is not None or was_open:
            down_s = ((self.clock.now_ms() - self.down_since_ms) / 1000
                      if self.down_since_ms is not None else None)
            log.info("uplink up", extra={"fields": {"down_s": down_s, "status": v.status}})
            self.down_since_ms = None
            self._dispatch_wake.set()

    def _failure(self, claim: Claim, answer: Answer) -> None:
        v = answer.verdict
        now = self.clock.monotonic()
        self.counts["batches_failed"] += 1
        self.failures_by_reason[v.reason] += 1
        if v.status is not None:
            self.rejected_by_status[str(v.status)] += 1
        self.last_error = f"{v.status or ''} {v.reason}: {v.detail}".strip()[:500]
        was = self.breaker.state(now)
        self.breaker.failure(now)
        delay = self.backoff.next_delay()
        if v.retry_after_s is not None:
            delay = max(delay, min(v.retry_after_s, self.settings.backoff_cap_s))
        self._retry_at = max(self._retry_at, now + delay)
        if self.down_since_ms is None:
            self.down_since_ms = self.clock.now_ms()
            log.warning("uplink down", extra={"fields": {
                "seq": claim.seq, "status": v.status, "reason": v.reason,
                "detail": v.detail[:300], "retry_in_s": round(delay, 3)}})
        if self.breaker.state(now) is CircuitState.OPEN and was is not CircuitState.OPEN:
            log.warning("uplink circuit open", extra={"fields": {
                "consecutive_failures": self.breaker.consecutive,
                "reset_s": self.settings.breaker_reset_s, "reason": v.reason}})
        if v.action is Action.HOLD:
            # the cloud refuses this gateway (secret, clock, URL): nothing is deleted, but an
            # operator must act
            self._last_verdict_hold = f"HTTP {v.status} {v.reason}"
            self._note_failure_log(("hold", v.status, v.reason),
                                   "cloud ingest refuses the gateway's requests; batches are "
                                   "kept and retried", f"HTTP {v.status} {v.reason}: {v.detail}",
                                   level=logging.ERROR)

    def _note_failure_log(self, key: tuple[Any, ...], msg: str, detail: str, *,
                          level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, float("-inf")) >= LOG_REPEAT_S:
            self._logged[key] = now
            log.log(level, msg, extra={"fields": {"detail": detail[:500]}})

    # -- observation -------------------------------------------------------------------------

    def stats(self) -> UplinkStats:
        try:
            backlog = self.buffer.stats().oldest_unsent_age_ms
        except BufferBusy:
            backlog = None
        state = self.breaker.state(self.clock.monotonic())
        c = self.counts
        return UplinkStats(
            batches_sent=c["batches_sent"], batches_duplicate=c["batches_duplicate"],
            batches_failed=c["batches_failed"], batches_rejected=c["batches_rejected"],
            batches_split=c["batches_split"],
            rejected_by_status=dict(self.rejected_by_status),
            failures_by_reason=dict(self.failures_by_reason),
            readings_sent=c["readings_sent"], events_sent=c["events_sent"],
            readings_rejected=c["readings_rejected"], unencodable=c["unencodable"],
            bytes_sent=c["bytes_sent"],
            bytes_per_reading=(self.acked_wire_bytes / self.acked_readings
                               if self.acked_readings else None),
            retries=c["retries"], resent_at_start=c["resent_at_start"],
            latency_ms_last=self.latency_ms_last, latency_ms_avg=self.latency_ms_avg,
            backlog_age_ms=backlog, circuit_state=state.value,
            circuit_open=state is not CircuitState.CLOSED,
            circuit_opened=self.breaker.opened, throttled_ms=self.throttled_s * 1000,
            uplink_down_since_ms=self.down_since_ms, in_flight=len(self._in_flight),
            batch_max_records=self.max_records, last_status=self.last_status,
            last_error=self.last_error, internal_errors=c["internal_errors"])

    def health(self) -> tuple[bool, str]:
        """Unhealthy while the circuit is open or the cloud refuses the gateway (401, 403,
        404, ...); the detail says why and since when."""
        state = self.breaker.state(self.clock.monotonic())
        since = (f", down since {self.down_since_ms} ms"
                 if self.down_since_ms is not None else "")
        if self._last_verdict_hold is not None:
            return False, f"cloud refuses the gateway: {self._last_verdict_hold}{since}"
        if state is CircuitState.OPEN:
            return False, f"circuit open after {self.breaker.consecutive} failures " \
                          f"({self.last_error}){since}"
        return True, (f"circuit {state.value}, {len(self._in_flight)} batch(es) in flight, "
                      f"{self.counts['batches_sent']} sent{since}")
