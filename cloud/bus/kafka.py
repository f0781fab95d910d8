"""The Kafka bus: aiokafka behind the `cloud.bus.base` interface.

Producer: one idempotent `AIOKafkaProducer` per bus (`enable_idempotence=True`, `acks="all"`,
the configured compression), owned by the task "kafka-producer", which

* connects with capped, jittered backoff (`edge.backoff.Backoff`) and reconnects the same way
  after a failure, so the service using the bus starts, and keeps running, while Kafka is down;
* every `watch_interval_s` asks the cluster for metadata; when that fails `watch_failures`
  times in a row the producer is dropped and rebuilt, so requests during an outage fail at
  once (BrokerUnavailable) instead of each waiting `send_timeout_s`.

`send_batch` hands every record to the producer, then waits for every acknowledgement, at
most `send_timeout_s`.  Any failure raises `BrokerUnavailable` and rebuilds the producer (a
fresh producer id: the idempotent sequence of the old one may have a gap the broker would
refuse).  Records of a failed call may still have been written: at-least-once, as documented
in `cloud.bus.base`.

Consumer: `AIOKafkaConsumer` with `enable_auto_commit=False`, `auto_offset_reset="earliest"`
and the default isolation level; records come back as `cloud.bus.base.Record`.

Topics: `ensure_topics` creates missing topics with `AIOKafkaAdminClient` (a topic created
meanwhile by someone else — TopicAlreadyExists — is fine) and logs existing topics whose
partition count differs from the configuration (they are not repartitioned: that would move
keys to other partitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

from cloud.bus.base import OutRecord, Record, TopicSpec
from cloud.errors import BrokerUnavailable, ConsumerFenced
from edge.backoff import Backoff

__all__ = ["KafkaBus", "KafkaConsumer"]

log = logging.getLogger("fieldlink.cloud.bus")

_TRANSIENT = (KafkaError, TimeoutError, OSError)


class KafkaBus:
    """`async with KafkaBus(["host:9092"]) as bus:` — see the module docstring."""

    kind = "kafka"

    def __init__(self, bootstrap_servers: Sequence[str], *, client_id: str = "fieldlink-cloud",
                 compression: str | None = "zstd", replication_factor: int = 1,
                 send_timeout_s: float = 10.0, request_timeout_ms: int = 15_000,
                 linger_ms: int = 2, max_batch_size: int = 1024 * 1024,
                 max_request_size: int = 1024 * 1024, watch_interval_s: float = 2.0,
                 watch_failures: int = 2,
                 backoff: Backoff | None = None,
                 producer_options: Mapping[str, Any] | None = None) -> None:
        if not bootstrap_servers:
            raise ValueError("KafkaBus needs at least one bootstrap server")
        self.bootstrap_servers = list(bootstrap_servers)
        self.client_id = client_id
        self.compression = None if compression in (None, "none") else compression
        self.replication_factor = replication_factor
        self.send_timeout_s = send_timeout_s
        self.request_timeout_ms = request_timeout_ms
        self.max_request_size = max_request_size
        self.watch_interval_s = watch_interval_s
        self.watch_failures = watch_failures
        self.backoff = backoff or Backoff(base=0.2, cap=10.0)
        self._producer_options = {
            "linger_ms": linger_ms, "max_batch_size": max_batch_size,
            "max_request_size": max_request_size, **(producer_options or {})}
        self._producer: AIOKafkaProducer | None = None
        self._broken = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error = "not connected yet"
        self.stats: dict[str, int] = {"connects": 0, "connect_failures": 0, "resets": 0}
        # fail at start, not on the first batch: zstd/lz4/snappy need cramjam
        if self.compression is not None and not _codec_available(self.compression):
            raise RuntimeError(f"kafka compression {self.compression!r} needs the cramjam "
                               "package (pip install 'fieldlink[cloud]')")

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._supervise(), name="kafka-producer")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush and stop the producer (at most send_timeout_s), then stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    async def wait_connected(self, within_s: float) -> bool:
        """True once a producer is connected (for start-up logs and tests)."""
        try:
            async with asyncio.timeout(within_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await producer.stop()
        except (*_TRANSIENT, asyncio.CancelledError) as e:
            log.warning("kafka producer did not stop cleanly", extra={"fields": {
                "error": repr(e)}})

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, client_id=self.client_id, acks="all",
            enable_idempotence=True, compression_type=self.compression,
            request_timeout_ms=self.request_timeout_ms, **self._producer_options)

    async def _supervise(self) -> None:
        while True:
            producer = self._new_producer()
            try:
                async with asyncio.timeout(self.request_timeout_ms / 1000):
                    await producer.start()
                    await producer.client.fetch_all_metadata()
            except _TRANSIENT as e:
                self.stats["connect_failures"] += 1
                self._last_error = f"cannot connect to {','.join(self.bootstrap_servers)}: {e!r}"
                delay = self.backoff.next_delay()
                log.warning("kafka unavailable", extra={"fields": {
                    "error": self._last_error, "retry_in_s": round(delay, 3)}})
                await self._stop(producer)
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            self.stats["connects"] += 1
            self._broken.clear()
            self._producer = producer
            self._connected.set()
            log.info("kafka connected", extra={"fields": {
                "bootstrap_servers": self.bootstrap_servers}})
            await self._watch(producer)
            self._producer = None
            self._connected.clear()
            self.stats["resets"] += 1
            await self._stop(producer)

    async def _watch(self, producer: AIOKafkaProducer) -> None:
        """Return when the producer must be replaced: a send failed or the cluster is gone.

        The cluster counts as gone after `watch_failures` probes in a row fail: one slow
        answer while the event loop is busy with large batches is not an outage.
        """
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.watch_interval_s):
                    await self._broken.wait()
            if self._broken.is_set():
                return
            try:
                async with asyncio.timeout(max(5.0, 2 * self.watch_interval_s)):
                    await producer.client.fetch_all_metadata()
            except _TRANSIENT as e:
                failures += 1
                if failures >= self.watch_failures:
                    self._last_error = f"kafka cluster unreachable: {e!r}"
                    log.warning("kafka unreachable", extra={"fields": {
                        "error": self._last_error}})
                    return
            else:
                failures = 0

    # -- producing ---------------------------------------------------------------------------

    def producer(self) -> KafkaBus:
        return self

    async def send_batch(self, topic: str,
                         records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable(f"kafka is unavailable ({self._last_error}); reconnecting")
        try:
            async with asyncio.timeout(self.send_timeout_s):
                futures = [await producer.send(topic, value, key=key, headers=list(headers))
                           for key, value, headers in records]
                metadata = await asyncio.gather(*futures)
        except _TRANSIENT as e:
            if self._producer is producer:
                self._last_error = f"produce to {topic} failed: {e!r}"
                self._broken.set()
            raise BrokerUnavailable(f"kafka did not acknowledge the records: {e!r}") from e
        return [(m.partition, m.offset) for m in metadata]

    # -- topics and health -------------------------------------------------------------------

    def _admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                   client_id=f"{self.client_id}-admin",
                                   request_timeout_ms=self.request_timeout_ms)

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        admin = self._admin()
        try:
            await admin.start()
            existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()
                        if t["error_code"] == 0}
            missing = [s for s in specs if s.name not in existing]
            for spec in specs:
                have = existing.get(spec.name)
                if have is not None and have != spec.partitions:
                    log.warning("topic exists with another partition count", extra={
                        "fields": {"topic": spec.name, "partitions": have,
                                   "configured": spec.partitions}})
            if missing:
                response = await admin.create_topics([
                    NewTopic(s.name, s.partitions, s.replication_factor) for s in missing])
                for item in response.topic_errors:
                    name, code = item[0], item[1]
                    if code == 0:
                        log.info("topic created", extra={"fields": {"topic": name}})
                        continue
                    error = for_code(code)
                    if error is TopicAlreadyExistsError:
                        continue
                    raise BrokerUnavailable(f"cannot create topic {name}: {error.__name__} "
                                            f"{item[2] if len(item) > 2 else ''}".rstrip())
        except _TRANSIENT as e:
            raise BrokerUnavailable(f"cannot reach kafka to create topics: {e!r}") from e
        finally:
            with contextlib.suppress(*_TRANSIENT):
                await admin.close()

    async def healthy(self) -> tuple[bool, str]:
        producer = self._producer
        if producer is None:
            return False, self._last_error
        try:
            async with asyncio.timeout(self.watch_interval_s):
                md = await producer.client.fetch_all_metadata()
        except _TRANSIENT as e:
            return False, f"kafka cluster unreachable: {e!r}"
        return True, f"kafka {','.join(self.bootstrap_servers)}: {len(md.brokers())} broker(s)"

    # -- consuming ---------------------------------------------------------------------------

    def consumer(self, group_id: str, topics: Sequence[str], **options: Any) -> KafkaConsumer:
        return KafkaConsumer(self, group_id, topics, **options)


def _codec_available(name: str) -> bool:
    from aiokafka import codec

    checks = {"gzip": codec.has_gzip, "zstd": codec.has_zstd, "lz4": codec.has_lz4,
              "snappy": codec.has_snappy}
    if name not in checks:
        raise ValueError(f"unknown kafka compression {name!r}")
    return bool(checks[name]())


class KafkaConsumer:
    """A consumer group member; explicit commits only."""

    def __init__(self, bus: KafkaBus, group_id: str, topics: Sequence[str],
                 **options: Any) -> None:
        self.bus = bus
        self.group_id = group_id
        self.topics = list(topics)
        self._options = options
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Self:
        consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.bus.bootstrap_servers,
            client_id=f"{self.bus.client_id}-{self.group_id}", group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            request_timeout_ms=self.bus.request_timeout_ms, **self._options)
        try:
            await consumer.start()
        except _TRANSIENT as e:
            with contextlib.suppress(*_TRANSIENT):
                await consumer.stop()
            raise BrokerUnavailable(f"cannot start the kafka consumer: {e!r}") from e
        self._consumer = consumer
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(*_TRANSIENT):
                await consumer.stop()

    def _c(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("use the consumer inside `async with`")
        return self._consumer

    def assignment(self) -> list[tuple[str, int]]:
        return sorted((tp.topic, tp.partition) for tp in self._c().assignment())

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        try:
            batches = await self._c().getmany(timeout_ms=timeout_ms, max_records=max_records)
        except _TRANSIENT as e:
            raise BrokerUnavailable(f"kafka fetch failed: {e!r}") from e
        out: list[Record] = []
        for tp in sorted(batches, key=lambda tp: (tp.topic, tp.partition)):
            out += [Record(m.topic, m.partition, m.offset, m.key, m.value,
                           tuple(m.headers or ()), m.timestamp) for m in batches[tp]]
        return out

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        consumer = self._c()
        try:
            if offsets is None:
                await consumer.commit()
            elif offsets:
                await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as e:
            raise ConsumerFenced(f"commit refused, the group rebalanced: {e!r}") from e
        except _TRANSIENT as e:
            raise BrokerUnavailable(f"kafka commit failed: {e!r}") from e

    async def seek_to_committed(self) -> None:
        try:
            await self._c().seek_to_committed()
        except _TRANSIENT as e:
            raise BrokerUnavailable(f"kafka seek failed: {e!r}") from e
