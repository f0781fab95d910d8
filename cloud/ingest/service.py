"""The ingest service: signed gateway batches in, bus records out (docs/cloud-ingest.md).

    async with open_bus(cfg) as bus, IngestService(IngestSettings.from_config(cfg), bus) as svc:
        ...                                   # serving on svc.url until the block exits

`POST /v1/batches` (one `edge.codec` frame, signed with `edge.signing`), in this order:

1. size: a declared Content-Length over `max_body_bytes` is refused (413) before the body is
   read; a chunked body is cut off at the limit (413).
2. authentication (`edge.signing.verify_request`): 401 with the reason.
3. header (`edge.codec.peek_header`, checksum verified): an unreadable frame is 400 and goes
   to the dead-letter topic as received; a frame of another gateway than the signer is 401.
4. batch de-duplication: a batch already produced gets its first answer again with
   `"duplicate": true` (200), even while the bus is down.  Concurrent copies of one batch wait
   for the first; only one is produced.
5. decode and validation (`edge.codec.scan_batch`, `cloud.ingest.validate`); refused
   readings/events are dead-lettered, the rest is accepted.  Reading de-duplication drops
   readings this gateway already had produced recently (`cloud.ingest.recent.RecentKeys`).
   The common case — every reading valid and new — is decided on the frame's columns and
   planned from them (`records.plan_columns`) without a `Reading` object per reading; only
   a batch with refused or repeated readings is turned into readings (`records.plan_records`).
6. produce (`cloud.ingest.records`): every record of the batch, dead letters included, is
   sent; the answer waits until the bus acknowledged all of them.  Any failure: 503 with
   Retry-After, and the batch is NOT recorded, so the gateway's retry produces it again.
7. the batch is recorded in the ledger (durably), its readings' identities remembered, 200.

Tasks: "ingest-topics" creates the topics (capped, jittered backoff while the bus is down;
requests get 503 until it succeeded), "ingest-ledger-prune" forgets old batches hourly.
Shutdown (`__aexit__`): the listener closes, requests in progress finish (up to
`shutdown_timeout_s`), the tasks stop, the ledger closes.  The bus belongs to the caller, who
closes it afterwards (which flushes its producer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from prometheus_client import CollectorRegistry

from cloud.bus import OutRecord, TopicSpec
from cloud.bus.base import Bus
from cloud.errors import FieldlinkError
from cloud.http import ServiceHttp, tls_context
from cloud.ingest.dedup import BatchLedger, BatchResult
from cloud.ingest.metrics import IngestMetrics
from cloud.ingest.recent import RecentKeys
from cloud.ingest.records import (
    RecordPlan,
    deadletter_frame,
    deadletter_items,
    plan_columns,
    plan_records,
)
from cloud.ingest.settings import IngestSettings
from cloud.ingest.validate import check_events, check_readings, columns_pass
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from edge.codec import Columns, Header, peek_header, readings_of, scan_batch
from edge.errors import DecodeError
from edge.model import Event, Reading
from edge.signing import AuthError, check_gateway, verify_request

__all__ = ["BATCH_CONTENT_TYPE", "IngestService", "openapi_document"]

log = logging.getLogger("fieldlink.cloud.ingest")

BATCH_CONTENT_TYPE = "application/vnd.fieldlink.batch"
_ACCEPTED_TYPES = frozenset({BATCH_CONTENT_TYPE, "application/octet-stream"})
_OPENAPI = Path(__file__).with_name("openapi.json")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3 description of the ingest API (cloud/ingest/openapi.json)."""
    return json.loads(_OPENAPI.read_text())  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Accepted:
    """What a batch contributes: its records, how to remember its readings once produced,
    and what was refused (dead-lettered) or dropped as a duplicate."""

    plan: RecordPlan
    remember: Callable[[], None]
    produced: int
    duplicates: int
    bad_readings: list[Reading]
    reading_reasons: list[str]
    events: list[Event]
    bad_events: list[Event]
    event_reasons: list[str]


def _error(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason, "detail": detail}, status=status,
                             headers=headers or None)


class IngestService:
    def __init__(self, settings: IngestSettings, bus: Bus, *, clock: Clock | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.clock = clock or SystemClock()
        self.metrics = IngestMetrics(registry)
        self.ledger = BatchLedger(settings.ledger_path, horizon_ms=settings.ledger_horizon_ms)
        self.recent = RecentKeys(settings.recent_keys)
        self._producer = bus.producer()
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._topics_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._openapi = _OPENAPI.read_bytes()
        self.http: ServiceHttp | None = None
        t = settings.topics
        self._specs = list(settings.topic_specs) or [
            TopicSpec(name, 1) for name in (t.readings, t.aggregates, t.alerts, t.deadletter)]

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("the ingest service is not running")
        return self.http.url

    @property
    def ready(self) -> bool:
        """True once the topics exist (until then batches are answered 503)."""
        return self._topics_ready.is_set()

    async def wait_ready(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._topics_ready.wait()
        return self.ready

    async def __aenter__(self) -> Self:
        s = self.settings
        await self.ledger.__aenter__()
        try:
            self._tasks = [
                asyncio.create_task(self._setup_topics(), name="ingest-topics"),
                asyncio.create_task(self._prune_ledger(), name="ingest-ledger-prune")]
            ssl_context = None
            if s.tls_enabled:
                assert s.tls_certfile is not None and s.tls_keyfile is not None
                ssl_context = tls_context(s.tls_certfile, s.tls_keyfile, s.tls_cafile,
                                          s.tls_require_client_cert)
            self.http = ServiceHttp(
                s.host, s.port, self.metrics.registry,
                {"bus": self.bus.healthy, "topics": self._topics_health},
                [web.post("/v1/batches", self._post_batch),
                 web.get("/openapi.json", self._get_openapi)],
                ssl_context=ssl_context, client_max_size=s.max_body_bytes,
                shutdown_timeout=s.shutdown_timeout_s, name="ingest")
            await self.http.__aenter__()
        except BaseException:
            await self._stop_tasks()
            await self.ledger.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self.http is not None:
                await self.http.aclose()  # stop accepting, let requests in progress finish
        finally:
            await self._stop_tasks()
            await self.ledger.aclose()
            log.info("ingest stopped")

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _setup_topics(self) -> None:
        backoff = Backoff(base=0.2, cap=self.settings.setup_retry_cap_s)
        while True:
            try:
                await self.bus.ensure_topics(self._specs)
            except (FieldlinkError, OSError) as e:
                delay = backoff.next_delay()
                log.warning("cannot create topics yet", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 3)}})
                await asyncio.sleep(delay)
                continue
            self._topics_ready.set()
            log.info("ingest ready", extra={"fields": {
                "bus": self.bus.kind, "topics": [t.name for t in self._specs]}})
            return

    async def _prune_ledger(self) -> None:
        while True:
            try:
                removed = await self.ledger.prune(self.clock.now_ms())
                if removed:
                    log.info("ledger pruned", extra={"fields": {"batches": removed}})
            except sqlite3.Error as e:
                log.warning("ledger prune failed", extra={"fields": {"error": repr(e)}})
            await asyncio.sleep(3600)

    def _topics_health(self) -> tuple[bool, str]:
        if self.ready:
            return True, ", ".join(t.name for t in self._specs)
        return False, "topics not created yet (bus unavailable?)"

    async def _get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    # -- POST /v1/batches --------------------------------------------------------------------

    async def _post_batch(self, request: web.Request) -> web.Response:
        m = self.metrics
        t0 = time.perf_counter()
        m.in_flight.inc()
        try:
            response = await self._handle(request)
        finally:
            m.in_flight.dec()
        counter = m.status.get(response.status)
        (counter or m.requests.labels(str(response.status))).inc()
        m.request_seconds.observe(time.perf_counter() - t0)
        return response

    def _unavailable(self, err: Exception) -> web.Response:
        self.metrics.bus_unavailable.inc()
        log.warning("bus unavailable, batch not accepted", extra={"fields": {
            "error": str(err)}})
        return _error(503, getattr(err, "reason", "bus_unavailable"), str(err),
                      **{"Retry-After": str(self.settings.retry_after_s)})

    async def _handle(self, request: web.Request) -> web.Response:
        s = self.settings
        m = self.metrics
        if request.content_type not in _ACCEPTED_TYPES:
            return _error(415, "unsupported_media_type",
                          f"send one batch frame as {BATCH_CONTENT_TYPE}")
        length = request.content_length
        if length is not None and length > s.max_body_bytes:
            return _error(413, "too_large", f"body of {length} bytes exceeds "
                                            f"{s.max_body_bytes}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"body exceeds {s.max_body_bytes} bytes")
        m.bytes_received.inc(len(body))
        now = self.clock.now_ms()
        try:
            auth = verify_request(s.secrets, request.headers, body, now, s.replay_window_ms)
        except AuthError as e:
            return self._auth_failed(e, request)
        try:
            header = peek_header(body)
        except DecodeError as e:
            return await self._refuse_frame(body, e, auth.gateway_id, None)
        try:
            check_gateway(auth, header.gateway_id)
        except AuthError as e:
            return self._auth_failed(e, request)

        gw, seq, bid = header.gateway_id, header.sequence, header.batch_id
        done = self.ledger.lookup(gw, seq)
        while done is None and bid in self._inflight:
            # the same batch is being produced by an earlier request (a gateway retry after
            # a timeout): its outcome decides
            await asyncio.shield(self._inflight[bid])
            done = self.ledger.lookup(gw, seq)
        if done is not None:
            m.batch_duplicates.inc()
            return web.json_response(done.as_json(duplicate=True))
        if not self.ready:
            return self._unavailable(RuntimeError("topics not created yet"))
        fut = asyncio.get_running_loop().create_future()
        self._inflight[bid] = fut
        try:
            return await self._ingest(body, header, now)
        finally:
            del self._inflight[bid]
            fut.set_result(None)

    def _auth_failed(self, err: AuthError, request: web.Request) -> web.Response:
        self.metrics.auth_failures.labels(err.reason).inc()
        log.warning("request refused", extra={"fields": {
            "reason": err.reason, "detail": err.message, "peer": request.remote}})
        return _error(401, err.reason, err.message)

    async def _send(self, sends: list[tuple[str, list[OutRecord]]]) -> Exception | None:
        """Send every record list; the first failure, or None when all were acknowledged."""
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(self._producer.send_batch(topic, records) for topic, records in sends),
            return_exceptions=True)
        for r in results:
            if isinstance(r, FieldlinkError | OSError):
                return r
            if isinstance(r, BaseException):
                raise r
        self.metrics.produce_seconds.observe(time.perf_counter() - t0)
        for topic, records in sends:
            self.metrics.records.labels(topic).inc(len(records))
        return None

    async def _refuse_frame(self, body: bytes, err: DecodeError, gateway_id: str,
                            batch_id: str | None) -> web.Response:
        """400, after the frame is safe in the dead-letter topic (503 if it cannot be)."""
        s = self.settings
        if not self.ready:
            return self._unavailable(RuntimeError("topics not created yet"))
        record = deadletter_frame(body, reason=err.reason, detail=err.message,
                                  gateway_id=gateway_id, batch_id=batch_id,
                                  max_record_bytes=s.max_record_bytes)
        failure = await self._send([(s.topics.deadletter, [record])])
        if failure is not None:
            return self._unavailable(failure)
        self.metrics.decode_errors.labels(err.reason).inc()
        self.metrics.deadletters.labels(err.reason).inc()
        log.warning("frame refused", extra={"fields": {
            "gateway": gateway_id, "batch_id": batch_id, "reason": err.reason,
            "detail": err.message, "bytes": len(body)}})
        return _error(400, err.reason, err.message)

    def _plan(self, cols: Columns, body: bytes) -> _Accepted:
        """What of the batch is accepted, and its records (pure but for `self.recent`)."""
        s = self.settings
        header = cols.header
        assert header is not None
        gw = header.gateway_id
        events, bad_events, event_reasons = check_events(cols.events)
        if columns_pass(cols) and self.recent.all_new(gw, cols):
            # the common case, every reading valid and new: planned from the columns
            plan = plan_columns(cols, body, events, key_mode=s.key_mode,
                                compression=s.record_compression,
                                max_record_bytes=s.max_record_bytes, unchanged=not bad_events)
            return _Accepted(plan, lambda: self.recent.remember(gw, cols), cols.n, 0, [], [],
                             events, bad_events, event_reasons)
        # some readings are refused or seen before: find which, reading by reading
        readings, bad_readings, reading_reasons = check_readings(readings_of(cols))
        fresh, dups = self.recent.split(gw, readings)
        plan = plan_records(header, body, fresh, events, key_mode=s.key_mode,
                            compression=s.record_compression,
                            max_record_bytes=s.max_record_bytes,
                            unchanged=not (bad_readings or bad_events or dups))
        return _Accepted(plan, lambda: self.recent.remember_readings(gw, fresh), len(fresh),
                         dups, bad_readings, reading_reasons, events, bad_events,
                         event_reasons)

    async def _ingest(self, body: bytes, header: Header, now: int) -> web.Response:
        s = self.settings
        m = self.metrics
        gw = header.gateway_id
        try:
            cols = scan_batch(body, max_frame_bytes=s.max_body_bytes)
        except DecodeError as e:
            return await self._refuse_frame(body, e, gw, header.batch_id)
        a = self._plan(cols, body)
        plan, events, bad_readings, bad_events = a.plan, a.events, a.bad_readings, a.bad_events
        reading_reasons, event_reasons, dups = a.reading_reasons, a.event_reasons, a.duplicates
        dead: list[OutRecord] = []
        for items_r, items_e, reasons in ((bad_readings, [], reading_reasons),
                                          ([], bad_events, event_reasons)):
            if reasons:
                dead += deadletter_items(header, body, items_r, items_e, reasons,
                                         detail=f"{len(reasons)} item(s) refused by ingest",
                                         compression=s.record_compression,
                                         max_record_bytes=s.max_record_bytes)
        t = s.topics
        sends = [(topic, records) for topic, records in (
            (t.readings, plan.readings), (t.aggregates, plan.aggregates),
            (t.alerts, plan.alerts), (t.deadletter, dead)) if records]
        failure = await self._send(sends)
        if failure is not None:
            return self._unavailable(failure)

        result = BatchResult(header.batch_id, a.produced, len(events), dups,
                             len(bad_readings) + len(bad_events))
        try:
            await self.ledger.record(gw, header.sequence, now, result)
        except sqlite3.Error as e:
            # produced but not recorded: the retry produces again (sinks de-duplicate)
            log.error("ledger write failed", extra={"fields": {"error": repr(e)}})
            return _error(503, "ledger_unavailable", str(e),
                          **{"Retry-After": str(s.retry_after_s)})
        a.remember()
        m.readings.inc(a.produced)
        if plan.aggregates:
            m.events.labels("aggregate").inc(sum(1 for e in events if e.kind == "aggregate"))
            m.events.labels("gateway_status").inc(
                sum(1 for e in events if e.kind == "gateway_status"))
        if plan.alerts:
            m.events.labels("alert").inc(sum(1 for e in events if e.kind == "alert"))
        if dups:
            m.reading_duplicates.inc(dups)
        if plan.passthrough:
            m.passthrough.inc()
        for reason in reading_reasons:
            m.rejected.labels("reading", reason).inc()
        for reason in event_reasons:
            m.rejected.labels("event", reason).inc()
        if dead:
            m.deadletters.labels("refused_items").inc(len(dead))
            log.warning("items refused", extra={"fields": {
                "gateway": gw, "batch_id": header.batch_id,
                "readings": len(bad_readings), "events": len(bad_events),
                "reasons": sorted(set(reading_reasons + event_reasons))}})
        return web.json_response(result.as_json(duplicate=False))
