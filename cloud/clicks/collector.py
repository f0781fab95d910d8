"""The click collector: browsers' event batches in, `web_events` records out.

    async with open_bus(cfg.cloud_config()) as bus, \\
            ClickCollector(CollectorSettings.from_config(cfg), bus) as collector:
        ...                                    # serving on collector.url

Routes (one aiohttp server, with the shared `/metrics` and `/healthz`):

* ``POST /v1/batch`` — Segment's batch API shape: `{"batch": [event, ...]}` (events of the
  web event schema, `cloud.clicks.events`), optionally `Content-Encoding: gzip` (or deflate),
  authenticated by the source's write key as the HTTP Basic username (`Authorization: Basic
  base64(key + ":")`) or, for `navigator.sendBeacon` which cannot set headers, `writeKey`
  in the body.
* ``OPTIONS /v1/batch`` — CORS preflight for `clicks.allowed_origins`.
* ``GET /snippet.js`` — the browser snippet (`cloud/clicks/snippet.js`).

A batch, in order:

1. size — over `max_body_bytes` after decompression: 413 (a gzip bomb stops there too);
   a body that does not decompress: 400.  Both counted, not dead-lettered (there is no body
   to keep).
2. write key — unknown or missing: 401 (counted, not dead-lettered: unauthenticated bytes
   are not ours to keep).
3. body — not JSON or not a batch: 400, counted, and dead-lettered (PII-scrubbed text).
4. events — each is validated and scrubbed (`normalize`); a refused one is counted by reason
   and dead-lettered, the others go on.
5. de-duplication by event_id (`cloud.clicks.dedup.EventIds`): ids already produced are
   answered as duplicates; repeats inside the batch too.
6. produce — the new events to `web_events` keyed by user_id (one user's events stay in one
   partition, in order), the dead letters to the dead-letter topic; the answer waits for the
   bus's acknowledgement of both.  Any failure: 503 with Retry-After, nothing remembered, so
   the browser's retry produces the batch again.
7. the new ids are remembered, 200 ``{"success": true, "accepted": n, "duplicates": d,
   "rejected": [{"index": i, "reason": r}, ...]}``.  Rejected events are final (a retry would
   be refused the same way), so they are reported with 200, not an error status.

Dead-letter record: key None, value the scrubbed event (or body) as JSON, headers `reason`,
`detail`, `source`, `received_ms`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from cloud.bus import OutRecord, TopicSpec
from cloud.bus.base import Bus
from cloud.clicks.dedup import EventIds
from cloud.clicks.events import Rejected, normalize, parse_batch, scrubbed_copy
from cloud.clicks.pii import PiiCounts, scrub_text
from cloud.errors import FieldlinkError
from cloud.http import ServiceHttp
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock

__all__ = ["ClickCollector", "CollectorSettings"]

log = logging.getLogger("fieldlink.cloud.clicks")

SNIPPET = Path(__file__).with_name("snippet.js")
_MAX_DEADLETTER_BODY = 64 * 1024
_ENCODINGS = frozenset({"identity", "gzip", "deflate", "br"})


@dataclass(frozen=True)
class CollectorSettings:
    #: source name -> write key
    write_keys: dict[str, str]
    ids_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    topic: str = "web_events"
    partitions: int = 6
    deadletter_topic: str = "web_events.deadletter"
    replication_factor: int = 1
    allowed_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = 512 * 1024
    max_event_bytes: int = 32 * 1024
    max_batch_events: int = 2500
    dedup_capacity: int = 2_000_000
    max_future_ms: int = 600_000
    pii_hash_key: bytes | None = None
    shutdown_timeout_s: float = 10.0
    extra_topics: list[TopicSpec] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Any) -> CollectorSettings:
        """From an `edge.config.secondary.SecondaryConfig`."""
        c = cfg.clicks
        return cls(
            write_keys={s: k.get_secret_value() for s, k in c.write_keys.items()},
            ids_path=cfg.clicks_dir / "event-ids.sqlite3", host=c.host, port=c.port,
            topic=c.topic.name, partitions=c.topic.partitions,
            deadletter_topic=c.deadletter_topic.name,
            replication_factor=cfg.kafka.replication_factor,
            allowed_origins=tuple(c.allowed_origins), max_body_bytes=c.max_body_bytes,
            max_event_bytes=c.max_event_bytes, max_batch_events=c.max_batch_events,
            dedup_capacity=c.dedup_capacity, max_future_ms=int(c.max_future_s * 1000),
            pii_hash_key=(c.pii_hash_key.get_secret_value().encode()
                          if c.pii_hash_key is not None else None))

    def source_for(self, write_key: str) -> str | None:
        """The source whose write key this is (every key compared in constant time)."""
        found = None
        for source, key in self.write_keys.items():
            if hmac.compare_digest(key.encode(), write_key.encode()):
                found = source
        return found


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("clicks_requests", "Batch requests by HTTP status",
                                ["status"], registry=registry)
        self.events = Counter("clicks_events", "Events by outcome (accepted, duplicate, "
                              "rejected)", ["outcome"], registry=registry)
        self.rejected = Counter("clicks_rejected", "Refused events and requests by reason "
                                "(each one dead-lettered, except auth)", ["reason"],
                                registry=registry)
        self.pii = Counter("clicks_pii_removed", "Personal data removed before storage, by "
                           "kind (key, email, phone)", ["kind"], registry=registry)
        self.encodings = Counter("clicks_request_encodings", "Batch requests by "
                                 "Content-Encoding (identity, gzip, deflate, br)",
                                 ["encoding"], registry=registry)
        self.produce = Histogram("clicks_produce_seconds", "Time until the bus acknowledged a "
                                 "batch's records", registry=registry)


def _basic_user(header: str | None) -> str | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]


class ClickCollector:
    def __init__(self, settings: CollectorSettings, bus: Bus, *, clock: Clock | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = CollectorMetrics(self.registry)
        self.ids = EventIds(settings.ids_path, capacity=settings.dedup_capacity)
        self._producer = bus.producer()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._snippet = SNIPPET.read_bytes()
        self.http: ServiceHttp | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("the collector is not running")
        return self.http.url

    async def wait_ready(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._ready.wait()
        return self._ready.is_set()

    async def __aenter__(self) -> Self:
        s = self.settings
        await self.ids.__aenter__()
        routes = [web.post("/v1/batch", self._batch), web.options("/v1/batch", self._preflight),
                  web.get("/snippet.js", self._snippet_js)]
        http = ServiceHttp(s.host, s.port, self.registry,
                           {"bus": self.bus.healthy, "topics": self._topics_ok}, routes,
                           client_max_size=s.max_body_bytes,
                           shutdown_timeout=s.shutdown_timeout_s, name="clicks-collector")
        try:
            await http.__aenter__()
        except BaseException:
            await self.ids.__aexit__(None, None, None)
            raise
        self.http = http
        self._task = asyncio.create_task(self._ensure_topics(), name="clicks-topics")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.ids.__aexit__(None, None, None)

    def _topics_ok(self) -> tuple[bool, str]:
        return (True, "topics exist") if self._ready.is_set() else (False, "creating topics")

    async def _ensure_topics(self) -> None:
        s = self.settings
        specs = [TopicSpec(s.topic, s.partitions, s.replication_factor),
                 TopicSpec(s.deadletter_topic, 1, s.replication_factor), *s.extra_topics]
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                await self.bus.ensure_topics(specs)
            except FieldlinkError as e:
                delay = backoff.next_delay()
                log.warning("cannot create the click topics", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 2)}})
                await asyncio.sleep(delay)
                continue
            self._ready.set()
            return

    # -- HTTP --------------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        allowed = self.settings.allowed_origins
        if origin is None or ("*" not in allowed and origin not in allowed):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Credentials": "true"}

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if not headers:
            return web.Response(status=403, text="origin not allowed")
        headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS",
                        "Access-Control-Allow-Headers":
                            "Authorization, Content-Type, Content-Encoding",
                        "Access-Control-Max-Age": "600"})
        return web.Response(status=204, headers=headers)

    async def _snippet_js(self, request: web.Request) -> web.Response:
        return web.Response(body=self._snippet, content_type="application/javascript",
                            headers={"Cache-Control": "max-age=300", **self._cors(request)})

    def _answer(self, request: web.Request, status: int, body: dict[str, Any],
                **headers: str) -> web.Response:
        self.metrics.requests.labels(str(status)).inc()
        return web.json_response(body, status=status, headers={**self._cors(request), **headers})

    async def _batch(self, request: web.Request) -> web.Response:
        s = self.settings
        if request.content_length is not None and request.content_length > s.max_body_bytes \
                and not request.headers.get("Content-Encoding"):
            self.metrics.rejected.labels("too_large").inc()
            return self._answer(request, 413, {"success": False, "error": "too_large",
                                               "detail": f"at most {s.max_body_bytes} bytes"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.rejected.labels("too_large").inc()
            return self._answer(request, 413, {"success": False, "error": "too_large",
                                               "detail": f"at most {s.max_body_bytes} bytes"})
        except Exception as e:  # noqa: BLE001 - a corrupt gzip stream is the client's error
            self.metrics.rejected.labels("bad_encoding").inc()
            return self._answer(request, 400, {"success": False, "error": "bad_encoding",
                                               "detail": f"cannot decode the body: {e}"})
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        self.metrics.encodings.labels(encoding if encoding in _ENCODINGS else "other").inc()
        now = self.clock.now_ms()
        key = _basic_user(request.headers.get("Authorization"))
        try:
            events, body_key = parse_batch(body, max_events=s.max_batch_events)
        except Rejected as e:
            source = s.source_for(key) if key else None
            if source is None:
                return self._unauthorized(request)
            self.metrics.rejected.labels(e.reason).inc()
            text = scrub_text(body[:_MAX_DEADLETTER_BODY].decode("utf-8", "replace"))
            value = json.dumps({"body": text}).encode()
            try:
                await self._produce([], [self._deadletter(value, e, source, now)])
            except FieldlinkError as err:
                return self._unavailable(request, err)
            return self._answer(request, 400, {"success": False, "error": e.reason,
                                               "detail": e.detail})
        source = s.source_for(key or body_key or "")
        if source is None:
            return self._unauthorized(request)
        if not self._ready.is_set():
            return self._answer(request, 503, {"success": False, "error": "not_ready"},
                                **{"Retry-After": "2"})
        return await self._accept(request, events, source, now)

    def _unauthorized(self, request: web.Request) -> web.Response:
        self.metrics.rejected.labels("auth").inc()
        return self._answer(request, 401, {"success": False, "error": "auth",
                                           "detail": "unknown or missing write key"},
                            **{"WWW-Authenticate": 'Basic realm="fieldlink clicks"'})

    def _unavailable(self, request: web.Request, err: Exception) -> web.Response:
        log.warning("click batch not produced", extra={"fields": {"error": str(err)}})
        return self._answer(request, 503, {"success": False, "error": "unavailable",
                                           "detail": str(err)}, **{"Retry-After": "1"})

    def _deadletter(self, value: bytes, e: Rejected, source: str, now: int) -> OutRecord:
        return (None, value, [("reason", e.reason.encode()),
                              ("detail", e.detail[:500].encode()), ("source", source.encode()),
                              ("received_ms", str(now).encode())])

    async def _accept(self, request: web.Request, events: list[Any], source: str,
                      now: int) -> web.Response:
        s = self.settings
        pii = PiiCounts()
        accepted: dict[str, OutRecord] = {}
        dead: list[OutRecord] = []
        rejected: list[dict[str, Any]] = []
        duplicates = 0
        for index, raw in enumerate(events):
            try:
                event = normalize(raw, source=source, now_ms=now, max_future_ms=s.max_future_ms,
                                  hash_key=s.pii_hash_key, counts=pii)
                value = event.to_json()
                if len(value) > s.max_event_bytes:
                    raise Rejected("too_large", f"the event is over {s.max_event_bytes} bytes")
            except Rejected as e:
                self.metrics.rejected.labels(e.reason).inc()
                rejected.append({"index": index, "reason": e.reason, "detail": e.detail})
                dead.append(self._deadletter(scrubbed_copy(raw), e, source, now))
                continue
            if event.event_id in accepted:
                duplicates += 1
                continue
            accepted[event.event_id] = (event.user_id.encode(), value,
                                        [("source", source.encode())])
        for kind, n in (("key", pii.keys), ("email", pii.emails), ("phone", pii.phones)):
            if n:
                self.metrics.pii.labels(kind).inc(n)
        claims = await self.ids.claim(list(accepted))
        new = [i for i, verdict in claims.items() if verdict == "new"]
        duplicates += len(accepted) - len(new)
        produced = False
        try:
            produced, dead_error = await self._produce_events([accepted[i] for i in new], dead)
        finally:
            # events the bus acknowledged are remembered even when the dead letters failed:
            # the retry then re-sends only the dead letters, never the events again
            await self.ids.release(new, produced=produced)
        if not produced or dead_error is not None:
            return self._unavailable(request, dead_error or RuntimeError("not produced"))
        self.metrics.events.labels("accepted").inc(len(new))
        self.metrics.events.labels("duplicate").inc(duplicates)
        self.metrics.events.labels("rejected").inc(len(rejected))
        return self._answer(request, 200, {"success": True, "accepted": len(new),
                                           "duplicates": duplicates, "rejected": rejected})

    async def _produce(self, records: Sequence[OutRecord], dead: Sequence[OutRecord]) -> None:
        """Both sends; raises the first failure."""
        ok, error = await self._produce_events(records, dead)
        if error is not None:
            raise error

    async def _produce_events(self, records: Sequence[OutRecord], dead: Sequence[OutRecord]
                              ) -> tuple[bool, FieldlinkError | None]:
        """(whether `records` were acknowledged, the first failure of either send)."""
        s = self.settings
        started = time.perf_counter()
        sends = [self._producer.send_batch(s.topic, records) if records else _nothing(),
                 self._producer.send_batch(s.deadletter_topic, dead) if dead else _nothing()]
        results = await asyncio.gather(*sends, return_exceptions=True)
        error: FieldlinkError | None = None
        for result in results:
            if isinstance(result, FieldlinkError):
                error = error or result
            elif isinstance(result, BaseException):
                raise result
        if error is None:
            self.metrics.produce.observe(time.perf_counter() - started)
        return not isinstance(results[0], BaseException), error


async def _nothing() -> list[tuple[int, int]]:
    return []
