"""What a store plugs into the shared consumer loop (`cloud.sinks.loop`).

The loop owns the bus consumer: it decodes each record with `edge.codec.decode_batch`,
dead-letters undecodable ones, hands the rest to the sink, and commits the offsets the sink
says are durable.  A sink owns its buffers and its store.  Who calls what, in order:

    await sink.start()                       once; creates databases / checks the store;
                                             raises SinkUnavailable while the store is down
    await sink.partition_started(tp, off)    before the first record of a partition since
                                             it was assigned (or re-read): `off` is where the
                                             group's committed position put the consumer
    sink.add(record, batch) / sink.skip(r)   every record, in offset order per partition
    sink.due_in(now)                         seconds until a flush is due (<= 0: now), None
                                             when nothing is buffered
    await sink.flush(now, everything=...)    write what is due (all with everything=True);
                                             returns {(topic, partition): next offset} that
                                             is now durable in the store — the loop commits
                                             exactly that; raises SinkUnavailable /
                                             SinkMisconfigured, never loses buffered items
                                             silently (a cancelled flush commits nothing)
    sink.revoke(tps)                         partitions taken away: drop their buffers
                                             (they will be consumed again by their new owner)
    await sink.close()

Time (`now`) is the loop's monotonic clock in seconds.  Items a sink refuses go to the
`DeadLetters` it was given; the loop produces them before it commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from cloud.bus import Record
from edge.codec import Batch

__all__ = ["TP", "Sink"]

#: (topic, partition)
TP = tuple[str, int]


class Sink(Protocol):
    #: "influxdb" | "parquet": metrics label, dead-letter source, default group id
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def healthy(self) -> tuple[bool, str]: ...

    @property
    def buffered(self) -> int:
        """Items held that are not durable yet."""
        ...

    async def partition_started(self, tp: TP, offset: int) -> None: ...

    def add(self, record: Record, batch: Batch) -> None: ...

    def skip(self, record: Record) -> None: ...

    def due_in(self, now: float) -> float | None: ...

    async def flush(self, now: float, *, everything: bool = False) -> dict[TP, int]: ...

    def revoke(self, tps: Iterable[TP]) -> None: ...
