"""Fakes for testing the alert service at its seams (shipped, like `gateway.testing`).

* `RecordingSink` — an `EventSink` (the buffer's `append_events`) that records, and can be
  told to fail (`busy`: raise BufferBusy that many times).
* `RecordingBroker` — the broker's `publish` / `subscribe_internal`, in memory: published
  messages, the retained ones, and `inject()` to play an operator's PUBLISH.
* `feed(service, clock, seconds, values)` — drive a service without a ticker task
  (`tick_s=None`) on a `FakeClock`: readings and a `step()` every 100 ms; `settle(service)`
  waits for the MQTT and buffer channels to deliver what is due.
* `wait_until(cond)` — poll a condition other tasks will make true, with a deadline.
* `WebhookReceiver` — a real HTTP server on 127.0.0.1 (port 0) that records the JSON bodies
  it is sent and answers from a script of status codes (then 202); a script entry
  ``(status, seconds)`` answers that late.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge.model import Event, Reading
from edge.testing import FakeClock
from gateway.buffer import AppendResult
from gateway.errors import BufferBusy

if TYPE_CHECKING:
    from gateway.alerts.service import AlertService


async def wait_until(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    """Return once `cond()` holds; TimeoutError after `within_s`."""
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110 - the condition is any state, not one event
            await asyncio.sleep(0.01)


async def settle(service: AlertService, channels: Sequence[str] = ("mqtt", "buffer"),
                 within_s: float = 5.0) -> None:
    """Wait until `channels` (those of them the service has and does not hold) delivered
    everything due."""
    workers = [w for name, w in service.outbox.workers.items()
               if name in channels and not w.held]
    await wait_until(lambda: all(w.depth(service.clock.now_ms()) == 0 for w in workers),
                     within_s)


async def feed(service: AlertService, clock: FakeClock, seconds: float,
               values: dict[str, float], *, measurement: str = "temperature") -> None:
    """`seconds` of 10 readings/s per device (`values`: device -> value), each followed by a
    100 ms clock advance and one `service.step()`; then `settle()` (the MQTT and buffer
    channels delivered what the steps produced)."""
    for _ in range(round(seconds * 10)):
        now = clock.now_ms()
        service.observe([Reading(d, now, v, measurement=measurement, received_ms=now)
                         for d, v in values.items()])
        clock.advance(0.1)
        await service.step()
    await settle(service)


@dataclass
class RecordingSink:
    busy: int = 0
    events: list[Event] = field(default_factory=list)
    calls: int = 0

    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        self.calls += 1
        if self.busy > 0:
            self.busy -= 1
            raise BufferBusy("scripted: buffer busy")
        known = {e.key for e in self.events}
        fresh = [e for e in events if e.key not in known]
        self.events += fresh
        return AppendResult(stored=len(fresh), duplicates=len(events) - len(fresh))

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


@dataclass
class Published:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


@dataclass
class InjectedMessage:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


class _Subscription:
    def __init__(self, broker: RecordingBroker, flt: str, cb: Callable[[Any], Any]) -> None:
        self.broker, self.filter, self.callback = broker, flt, cb

    def cancel(self) -> None:
        if self in self.broker.subscriptions:
            self.broker.subscriptions.remove(self)


class RecordingBroker:
    def __init__(self) -> None:
        self.published: list[Published] = []
        self.retained: dict[str, bytes] = {}
        self.subscriptions: list[_Subscription] = []

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                qos: int = 1) -> int:
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if "+" in topic or "#" in topic or not topic:
            raise ValueError(f"invalid MQTT topic name {topic!r}")
        self.published.append(Published(topic, data, retain))
        if retain:
            if data:
                self.retained[topic] = data
            else:
                self.retained.pop(topic, None)
        return 0

    def subscribe_internal(self, flt: str, callback: Callable[[Any], Any], *,
                           retained: bool = False) -> _Subscription:
        sub = _Subscription(self, flt, callback)
        self.subscriptions.append(sub)
        return sub

    async def inject(self, topic: str, payload: bytes = b"", retain: bool = False) -> None:
        """An operator's PUBLISH: call every matching internal subscriber (awaiting the
        awaitables they return, as the broker runs them as tasks)."""
        msg = InjectedMessage(topic, payload, retain)
        for sub in list(self.subscriptions):
            flt = sub.filter
            if flt == topic or (flt.endswith("#") and topic.startswith(flt[:-1])):
                result = sub.callback(msg)
                if asyncio.iscoroutine(result):
                    await result

    def states(self, topic_prefix: str = "") -> list[dict[str, Any]]:
        """JSON bodies published (non-empty) under `topic_prefix`, in order."""
        return [p.json() for p in self.published
                if p.topic.startswith(topic_prefix) and p.payload]


class WebhookReceiver:
    def __init__(self, script: Sequence[int | tuple[int, float]] = (), *,
                 headers: dict[str, str] | None = None) -> None:
        self.script = list(script)
        self.headers = headers or {}
        self.bodies: list[Any] = []
        #: every request: (monotonic arrival time, status answered)
        self.requests: list[tuple[float, int]] = []
        self.received = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def answers(self) -> list[int]:
        return [status for _, status in self.requests]

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = asyncio.get_running_loop().time()
        body = await request.json()
        step = self.script.pop(0) if self.script else 202
        status, delay = step if isinstance(step, tuple) else (step, 0.0)
        self.requests.append((arrived, status))
        if delay:
            await asyncio.sleep(delay)
        if 200 <= status < 300:
            self.bodies.append(body)
            self.received.set()
        return web.json_response({"status": status}, status=status, headers=self.headers)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, n: int, within_s: float = 10.0) -> list[Any]:
        """Wait until `n` bodies were accepted (at most `within_s`); returns them."""
        async with asyncio.timeout(within_s):
            while len(self.bodies) < n:
                self.received.clear()
                await self.received.wait()
        return self.bodies
