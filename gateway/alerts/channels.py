"""Delivery channels of alert transitions.  Each takes transition records (see
`gateway.alerts.formats`) and either succeeds, raises `DeliveryFailed` (retry later) or
`DeliveryRejected` (dead: never retried).  `gateway.alerts.delivery` drives them from the
outbox.

* `MqttStateChannel` ("mqtt") — the alert's current state, retained, on its state topic.
* `MqttClearChannel` ("mqtt-clear") — a resolved state's retained message is cleared (empty
  retained payload) once its delay has passed, unless a newer state of the same topic was
  published since (then the row is ``superseded``).
* `WebhookChannel` ("webhook-<hash>") — PagerDuty Events v2 or generic JSON, over aiohttp.
  2xx delivered; 408, 429, 5xx, timeouts and connection errors retried; other 4xx dead.
* `BufferChannel` ("buffer") — the transition as an alert `Event` into the store-and-forward
  buffer (priority class above raw readings: never evicted, sent first).  Batched; the
  buffer de-duplicates by the event key, so a retry after a crash stores nothing twice.

The log channel is not here: `gateway.alerts.outbox` logs each transition when it is committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp

from edge.model import Event
from edge.rules import AlertTransition
from gateway.alerts.formats import generic_event, mqtt_state, pagerduty_event, state_topic
from gateway.alerts.settings import WebhookTarget
from gateway.alerts.store import Pending
from gateway.buffer import AppendResult
from gateway.errors import DeliveryFailed, DeliveryRejected, RetriableError

DELIVERED = "delivered"
SUPERSEDED = "superseded"
#: HTTP answers worth retrying; every other 4xx is the receiver refusing the event itself
RETRY_STATUSES = frozenset({408, 429})
BODY_PREVIEW = 300


class Channel(Protocol):
    name: str
    #: records per `deliver` call
    max_batch: int

    async def deliver(self, items: Sequence[Pending]) -> str:
        """Deliver `items` (in order); returns DELIVERED or SUPERSEDED, or raises
        DeliveryFailed / DeliveryRejected."""
        ...


class Publisher(Protocol):
    """What the alert service needs of the embedded broker (`gateway.mqtt.MqttServer`)."""

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                qos: int = 1) -> int: ...


class MqttBroker(Publisher, Protocol):
    """`gateway.mqtt.MqttServer` as the alert service uses it (acks: `subscribe_internal`)."""

    def subscribe_internal(self, flt: str, callback: Callable[[Any], Any], *,
                           retained: bool = False) -> Any: ...


class EventSink(Protocol):
    """What the alert service needs of the buffer (`gateway.buffer.Buffer`)."""

    async def append_events(self, events: Sequence[Event]) -> AppendResult: ...


def to_event(record: dict[str, Any]) -> Event:
    body = {k: v for k, v in record.items() if k not in ("transition", "at_ms")}
    return AlertTransition(record["transition"], int(record["at_ms"]), body).to_event()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class MqttStateChannel:
    name = "mqtt"
    max_batch = 1

    def __init__(self, broker: Publisher | None, prefix: str, gateway_id: str) -> None:
        #: None until the broker runs (`AlertService.attach_mqtt`); the workers are held
        self.broker = broker
        self.prefix = prefix
        self.gateway_id = gateway_id
        #: topic -> outbox id of the newest state handed to this channel (see MqttClearChannel)
        self.latest: dict[str, int] = {}

    def note(self, outbox_id: int, record: dict[str, Any]) -> None:
        """A state for this topic is on its way (called when it is queued)."""
        topic = state_topic(self.prefix, record)
        if outbox_id > self.latest.get(topic, 0):
            self.latest[topic] = outbox_id

    async def deliver(self, items: Sequence[Pending]) -> str:
        if self.broker is None:
            raise DeliveryFailed("the MQTT broker is not running")
        for item in items:
            rec = item.record
            try:
                self.broker.publish(state_topic(self.prefix, rec),
                                    _json(mqtt_state(rec, self.gateway_id)), retain=True, qos=1)
            except ValueError as exc:  # an invalid topic: retrying cannot help
                raise DeliveryRejected(str(exc)) from None
        return DELIVERED


class MqttClearChannel:
    name = "mqtt-clear"
    max_batch = 1

    def __init__(self, state: MqttStateChannel) -> None:
        self.state = state

    def is_superseded(self, outbox_id: int, record: dict[str, Any]) -> bool:
        return self.state.latest.get(state_topic(self.state.prefix, record), 0) > outbox_id

    async def deliver(self, items: Sequence[Pending]) -> str:
        broker = self.state.broker
        if broker is None:
            raise DeliveryFailed("the MQTT broker is not running")
        outcome = SUPERSEDED
        for item in items:
            if self.is_superseded(item.outbox_id, item.record):
                continue
            try:
                broker.publish(state_topic(self.state.prefix, item.record), b"", retain=True,
                               qos=1)
            except ValueError as exc:
                raise DeliveryRejected(str(exc)) from None
            outcome = DELIVERED
        return outcome


class WebhookChannel:
    max_batch = 1

    def __init__(self, target: WebhookTarget, session: Callable[[], aiohttp.ClientSession],
                 gateway_id: str) -> None:
        self.target = target
        self.name = target.channel
        self._session = session
        self.gateway_id = gateway_id

    def body(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.target.kind == "pagerduty":
            return pagerduty_event(record, self.target.routing_key or "", self.gateway_id)
        return generic_event(record, self.gateway_id)

    async def deliver(self, items: Sequence[Pending]) -> str:
        for item in items:
            await self._post(self.body(item.record))
        return DELIVERED

    async def _post(self, body: dict[str, Any]) -> None:
        t = self.target
        try:
            async with self._session().post(
                    t.url, data=_json(body), headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=t.timeout_s)) as resp:
                text = (await resp.content.read(BODY_PREVIEW)).decode("utf-8", "replace")
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise DeliveryFailed(f"{t.display}: no answer within {t.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryFailed(f"{t.display}: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return
        detail = f"{t.display}: HTTP {status}: {text.strip()[:BODY_PREVIEW]}"
        if status >= 500 or status in RETRY_STATUSES:
            raise DeliveryFailed(detail, retry_after_s=_seconds(retry_after))
        raise DeliveryRejected(detail)


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is ignored: backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class BufferChannel:
    name = "buffer"
    max_batch = 500

    def __init__(self, buffer: EventSink) -> None:
        self.buffer = buffer

    async def deliver(self, items: Sequence[Pending]) -> str:
        try:
            result = await self.buffer.append_events([to_event(i.record) for i in items])
        except RetriableError as exc:
            raise DeliveryFailed(f"buffer: {exc}") from None
        if result.refused:
            raise DeliveryFailed(f"buffer refused {result.refused} alert events: "
                                 f"{result.refused_reason or 'refused'}")
        return DELIVERED
