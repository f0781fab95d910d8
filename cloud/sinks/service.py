"""A sink process: one store behind the shared consumer loop, with `/metrics` and `/healthz`.

    async with open_bus(cfg) as bus:
        async with SinkService(sink, bus, settings) as service:
            await service.wait(stop)          # until `stop` is set or the sink fails

Start-up, in the task "sink-<kind>", each step retried with capped, jittered backoff while
its peer is down (the process starts and keeps running; `/healthz` says what it waits for):

1. `sink.start()` — InfluxDB: database and retention policy / bucket; Parquet: the archive
   root answers.
2. `bus.ensure_topics` — the topics it reads and the dead-letter topic exist (ingest creates
   them too; whichever starts first).
3. the consumer joins the group (`settings.group_id`), then `ConsumerLoop.run`.

Several processes with the same group id share the topics' partitions (Kafka assigns them;
on the embedded bus one process is active and the others stand by).

Shutdown (`__aexit__`, e.g. on SIGTERM): stop consuming, flush what is buffered, produce its
dead letters, commit, leave the group — at most `shutdown_timeout_s`; past it the flush is
cancelled and nothing more is committed (the records are consumed again on restart).  A
`SinkMisconfigured` (InfluxDB refusing the credentials) ends the task: `wait` raises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from cloud.bus import TopicSpec
from cloud.bus.base import Bus
from cloud.errors import BrokerUnavailable, SinkUnavailable, UnknownTopic
from cloud.http import ServiceHttp
from cloud.sinks.base import Sink
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.loop import ConsumerLoop
from cloud.sinks.metrics import SinkMetrics
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock

__all__ = ["SinkService", "SinkSettings"]

log = logging.getLogger("fieldlink.cloud.sinks")


@dataclass(frozen=True)
class SinkSettings:
    group_id: str
    topics: tuple[str, ...]
    deadletter_topic: str
    #: topics (with partitions) to create when missing: those read plus the dead letters
    topic_specs: tuple[TopicSpec, ...] = ()
    http_enabled: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = 0
    max_records: int = 100
    poll_ms: int = 500
    shutdown_timeout_s: float = 30.0
    #: frames inside dead letters: "none" when the bus compresses record batches itself
    record_compression: str = "zstd"
    setup_retry_cap_s: float = 10.0
    consumer_options: dict[str, Any] = field(default_factory=dict)


class SinkService:
    def __init__(self, sink: Sink, bus: Bus, settings: SinkSettings, *,
                 metrics: SinkMetrics | None = None, deadletters: DeadLetters | None = None,
                 clock: Clock | None = None) -> None:
        self.sink = sink
        self.bus = bus
        self.settings = settings
        self.metrics = metrics or SinkMetrics(sink.kind)
        self.deadletters = deadletters or DeadLetters(
            bus.producer(), settings.deadletter_topic, f"sink-{sink.kind}", self.metrics,
            compression=settings.record_compression)
        self.clock = clock or SystemClock()
        self.loop: ConsumerLoop | None = None
        self.http: ServiceHttp | None = None
        self.state = "starting"
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str | None:
        return self.http.url if self.http is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        s = self.settings
        if s.http_enabled:
            self.http = ServiceHttp(s.http_host, s.http_port, self.metrics.registry, {
                "store": self.sink.healthy, "bus": self.bus.healthy,
                "consumer": self._consumer_health}, name=f"sink-{self.sink.kind}")
            await self.http.__aenter__()
        self._task = asyncio.create_task(self._main(), name=f"sink-{self.sink.kind}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            await self.stop()
        finally:
            if self.http is not None:
                await self.http.aclose()
            await self.sink.close()

    async def stop(self) -> None:
        """Flush, commit and leave the group (at most shutdown_timeout_s)."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        self.state = "stopping"
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await asyncio.shield(task)
        except TimeoutError:
            log.error("sink did not drain in time; stopping without committing the rest",
                      extra={"fields": {"sink": self.sink.kind,
                                        "timeout_s": self.settings.shutdown_timeout_s}})
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:  # noqa: BLE001 - reported by wait(); shutdown goes on
            pass
        self.state = "stopped"

    async def wait(self, stop: asyncio.Event) -> None:
        """Return when `stop` is set; raise what ended the sink task if it ended first."""
        assert self._task is not None
        stopper = asyncio.create_task(stop.wait(), name=f"sink-{self.sink.kind}-stop")
        try:
            await asyncio.wait({stopper, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if self._task.done() and not stop.is_set():
            self._task.result()  # raises the failure
            raise RuntimeError(f"the {self.sink.kind} sink stopped on its own")

    # -- the task ----------------------------------------------------------------------------

    async def _main(self) -> None:
        s = self.settings
        backoff = Backoff(base=0.2, cap=s.setup_retry_cap_s)
        self.state = "connecting to the store"
        while True:
            try:
                await self.sink.start()
                break
            except SinkUnavailable as e:
                await self._setup_wait(backoff, "store", e)
                if self._stop.is_set():
                    return
        backoff.reset()
        self.state = "creating topics"
        specs = list(s.topic_specs)
        while specs:
            try:
                await self.bus.ensure_topics(specs)
                break
            except (BrokerUnavailable, OSError) as e:
                await self._setup_wait(backoff, "bus", e)
                if self._stop.is_set():
                    return
        backoff.reset()
        self.state = "joining the group"
        while not self._stop.is_set():
            try:
                bus: Any = self.bus  # Kafka consumers take options (timeouts, ...)
                consumer = bus.consumer(s.group_id, list(s.topics), **s.consumer_options)
                async with consumer:
                    self.loop = ConsumerLoop(consumer, self.sink, self.deadletters,
                                             self.metrics, clock=self.clock,
                                             max_records=s.max_records, poll_ms=s.poll_ms)
                    self.state = "consuming"
                    log.info("sink consuming", extra={"fields": {
                        "sink": self.sink.kind, "group": s.group_id, "topics": s.topics,
                        "bus": self.bus.kind}})
                    await self.loop.run(self._stop)
                return
            except (BrokerUnavailable, UnknownTopic) as e:
                await self._setup_wait(backoff, "bus", e)

    async def _setup_wait(self, backoff: Backoff, what: str, error: Exception) -> None:
        delay = backoff.next_delay()
        self.state = f"waiting for the {what}: {error}"
        log.warning(f"sink waiting for the {what}", extra={"fields": {
            "sink": self.sink.kind, "error": str(error), "retry_in_s": round(delay, 3)}})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    def _consumer_health(self) -> tuple[bool, str]:
        loop = self.loop
        if self._task is not None and self._task.done() and not self._stop.is_set():
            error = self._task.exception() if not self._task.cancelled() else None
            return False, f"sink task ended: {error!r}"
        if loop is None or self.state != "consuming":
            return False, self.state
        if loop.last_poll_mono is None:
            return True, "joined, first poll pending"
        age = self.clock.monotonic() - loop.last_poll_mono
        if age > 120:
            return False, f"no poll for {age:.0f} s (store or bus stalled?)"
        return True, (f"{'caught up' if loop.caught_up else 'consuming'}; "
                      f"{self.sink.buffered} buffered")

