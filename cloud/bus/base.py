"""The message bus interface the cloud tier codes against, and the types it moves.

Two implementations share it: `cloud.bus.kafka.KafkaBus` (aiokafka) and
`cloud.bus.embedded.EmbeddedBus` (an append-only SQLite log for a single machine).  Ingest
produces, sinks consume; neither knows which bus it runs on.

Guarantees both give:

* `Producer.send_batch(topic, records)` returns only once every record is durably stored
  (Kafka: acknowledged by all in-sync replicas; embedded: committed to the SQLite WAL) and
  returns their (partition, offset) in input order.  On failure it raises `BrokerUnavailable`
  (retriable) and any subset of the records may have been stored: callers are at-least-once.
* A record with a key goes to partition `partition_for(key, n)` (Kafka's murmur2 placement),
  so one key's records stay in one partition, in send order.  Records without a key are
  spread over the partitions.
* Consumers commit explicitly (`commit`); nothing is committed behind the caller's back.
  A consumer that starts, or calls `seek_to_committed`, resumes after the last committed
  offset of its group (the earliest retained record if the group has none).
* Offsets are per partition, start at 0 and increase by one per record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

__all__ = ["Consumer", "Headers", "OutRecord", "Producer", "Record", "TopicSpec",
           "offsets_after", "partition_for"]

#: Kafka record headers: (name, value) pairs, names may repeat
Headers = Sequence[tuple[str, bytes]]
#: what a producer sends: (key, value, headers)
OutRecord = tuple[bytes | None, bytes, Headers]


@dataclass(frozen=True, slots=True)
class Record:
    """One record read back from the bus."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    #: when the bus stored it (Kafka: the record timestamp), ms since the epoch
    ts_ms: int

    def header(self, name: str) -> bytes | None:
        """The first header called `name`, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` (murmur2, positive, mod n)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def offsets_after(records: Iterable[Record]) -> dict[tuple[str, int], int]:
    """The offsets to commit once `records` are processed: last offset + 1 per partition."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        if r.offset + 1 > out.get(tp, -1):
            out[tp] = r.offset + 1
    return out


class Producer(Protocol):
    async def send_batch(self, topic: str,
                         records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        """Store every record; (partition, offset) of each, in order.  See module docstring."""
        ...


class Consumer(Protocol):
    """A member of a consumer group: `async with bus.consumer(group, topics) as c:`."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        """Up to `max_records` records after the current positions, in offset order per
        partition; waits up to `timeout_ms` for the first one, [] if none came."""
        ...

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        """Commit `offsets` ((topic, partition) -> next offset to read); None: the positions
        after everything `getmany` returned so far."""
        ...

    async def seek_to_committed(self) -> None:
        """Move back to the group's committed offsets (re-read what was not committed)."""
        ...


class Bus(Protocol):
    """`async with open_bus(cfg) as bus:` (see `cloud.bus`)."""

    #: "kafka" or "embedded", for logs and /healthz
    kind: str

    def producer(self) -> Producer: ...

    def consumer(self, group_id: str, topics: Sequence[str]) -> Consumer: ...

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create the topics that do not exist yet; existing ones are left as they are."""
        ...

    async def healthy(self) -> tuple[bool, str]:
        """Whether the bus answers now, with a human detail."""
        ...
