"""A Stripe-style webhook receiver: signed event deliveries in, bus records out.

Signature (Stripe's scheme): the `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>[,
v1=<hex>...][,v0=...]`; a `v1` is HMAC-SHA256 of `f"{t}.{raw body}"` under the endpoint's
signing secret.  `verify_signature` accepts the delivery when any `v1` matches any configured
secret (two secrets while one is rolled) in constant time, and `t` is within `tolerance_s` of
now (replay protection).  Refusals raise `AuthFailed` with a reason: `no_signature`,
`bad_signature_header`, `signature_mismatch`, `timestamp_out_of_tolerance`.

`StripeReceiver` (routes mounted on the connectors' HTTP server), per delivery:

1. signature — refused: 400 (what Stripe expects), counted; not dead-lettered (unauthenticated
   bytes are not ours to keep).
2. body — signed but not a JSON event with an `id` and a `type`: 400, counted and
   dead-lettered (the sender is genuine; the payload needs a look).
3. duplicate — Stripe retries until it gets a 2xx and may deliver an event more than once:
   an event id already delivered is answered 200 `{"duplicate": true}` and not produced again.
4. produce — value = the raw body (the event exactly as signed), key = `data.object.id` (so
   one object's events stay in order in one partition; the event id when there is none),
   headers `stripe-event-id`, `stripe-event-type`, `stripe-signature-t`, `received_ms`.  The
   answer waits for the bus's acknowledgement; a failure is 503 and Stripe retries later.
5. the id is recorded as delivered (`ConnectorStore`), 200.

Concurrent deliveries of one event id are serialised, so only one is produced.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from cloud.bus.base import Bus
from cloud.connectors.store import ConnectorStore
from cloud.errors import AuthFailed, FieldlinkError
from edge.clock import Clock, SystemClock

__all__ = ["StripeReceiver", "sign", "verify_signature"]

log = logging.getLogger("fieldlink.cloud.connectors")


def sign(body: bytes, secret: str, t: int) -> str:
    """The `Stripe-Signature` header Stripe would send for `body` at time `t`."""
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str], *, now_s: float,
                     tolerance_s: float = 300.0) -> int:
    """The signed timestamp, or `AuthFailed` (see the module docstring)."""
    if not header:
        raise AuthFailed("no Stripe-Signature header", reason="no_signature")
    t: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                raise AuthFailed("the signature timestamp is not a number",
                                 reason="bad_signature_header") from None
        elif key == "v1":
            signatures.append(value.strip())
    if t is None or not signatures:
        raise AuthFailed("Stripe-Signature needs t= and at least one v1=",
                         reason="bad_signature_header")
    signed = f"{t}.".encode() + body
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        for sig in signatures:
            matched |= hmac.compare_digest(expected, sig)
    if not matched:
        raise AuthFailed("no v1 signature matches the payload", reason="signature_mismatch")
    if abs(now_s - t) > tolerance_s:
        raise AuthFailed(f"the signature is {abs(now_s - t):.0f} s from now (tolerance "
                         f"{tolerance_s:.0f} s)", reason="timestamp_out_of_tolerance")
    return t


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter("connectors_webhook_deliveries", "Webhook deliveries by "
                                  "receiver and outcome", ["receiver", "outcome"],
                                  registry=registry)


class StripeReceiver:
    name = "stripe"

    def __init__(self, bus: Bus, store: ConnectorStore, *, secrets: Sequence[str],
                 topic: str = "saas.stripe.events", deadletter_topic: str = "saas.deadletter",
                 path: str = "/webhooks/stripe", tolerance_s: float = 300.0,
                 metrics: WebhookMetrics | None = None, clock: Clock | None = None) -> None:
        if not secrets:
            raise ValueError("a Stripe receiver needs its endpoint's signing secret")
        self.producer = bus.producer()
        self.store = store
        self.secrets = list(secrets)
        self.topic = topic
        self.deadletter_topic = deadletter_topic
        self.path = path
        self.tolerance_s = tolerance_s
        self.metrics = metrics or WebhookMetrics(CollectorRegistry())
        self.clock = clock or SystemClock()
        self.scope = f"webhook:{self.name}"
        #: event id -> (its lock, how many deliveries hold or wait for it)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.post(self.path, self.handle)]

    def _answer(self, outcome: str, status: int, body: dict[str, Any]) -> web.Response:
        self.metrics.deliveries.labels(self.name, outcome).inc()
        return web.json_response(body, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now_ms = self.clock.now_ms()
        try:
            t = verify_signature(body, request.headers.get("Stripe-Signature"), self.secrets,
                                 now_s=now_ms / 1000, tolerance_s=self.tolerance_s)
        except AuthFailed as e:
            log.warning("webhook refused", extra={"fields": {
                "receiver": self.name, "reason": e.reason, "error": str(e)}})
            return self._answer(e.reason, 400, {"error": e.reason, "detail": str(e)})
        try:
            event = json.loads(body)
            event_id = event["id"]
            event_type = event["type"]
            if not isinstance(event_id, str) or not isinstance(event_type, str):
                raise TypeError("id and type must be strings")
        except (ValueError, KeyError, TypeError) as e:
            detail = f"not a Stripe event: {e!r}"[:300]
            try:
                await self.producer.send_batch(self.deadletter_topic, [(None, body, [
                    ("reason", b"bad_event"), ("detail", detail.encode()),
                    ("receiver", self.name.encode()), ("received_ms", str(now_ms).encode())])])
            except FieldlinkError as err:
                return self._answer("unavailable", 503, {"error": "unavailable",
                                                         "detail": str(err)})
            return self._answer("bad_event", 400, {"error": "bad_event", "detail": detail})
        entry = self._locks.get(event_id)
        if entry is None:
            entry = self._locks[event_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                return await self._deliver(event, body, t, now_ms)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[event_id]

    async def _deliver(self, event: dict[str, Any], body: bytes, t: int,
                       now_ms: int) -> web.Response:
        event_id = event["id"]
        if not await asyncio.to_thread(self.store.unseen, self.scope, [event_id]):
            return self._answer("duplicate", 200, {"received": True, "duplicate": True})
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        object_id = obj.get("id") if isinstance(obj, dict) else None
        key = object_id if isinstance(object_id, str) else str(event_id)
        headers = [("stripe-event-id", event_id.encode()),
                   ("stripe-event-type", str(event["type"]).encode()),
                   ("stripe-signature-t", str(t).encode()),
                   ("received_ms", str(now_ms).encode())]
        try:
            await self.producer.send_batch(self.topic, [(key.encode(), body, headers)])
        except FieldlinkError as e:
            log.warning("webhook event not produced", extra={"fields": {
                "receiver": self.name, "event": event_id, "error": str(e)}})
            return self._answer("unavailable", 503, {"error": "unavailable", "detail": str(e)})
        await asyncio.to_thread(self.store.commit, self.scope, delivered=[event_id])
        return self._answer("delivered", 200, {"received": True})
