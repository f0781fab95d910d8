"""The single-machine bus: an append-only, durable topic log in one SQLite file.

What the cloud tier runs on when no Kafka is configured (`kafka.bootstrap_servers` empty):
ingest, sinks and tools in separate processes on one machine share `<data_dir>/bus.sqlite3`.
Same interface and guarantees as the Kafka bus (`cloud.bus.base`), in particular the same
key → partition placement, so the code paths above it are the same.

Layout (SQLite, WAL):

    topics(name, partitions, created_ms)
    partitions(topic, partition, next_offset)          the offset the next append gets
    records(topic, partition, offset, ts_ms, key, value, headers)   headers: msgpack pairs
    group_offsets(group_id, topic, partition, offset)  committed: next offset to read
    group_leases(group_id, owner, expires_ms)          the one active member of a group

Producing: `send_batch` calls of the process are queued and written by one writer thread,
many per transaction (group commit); a call returns when its transaction has committed,
`synchronous=FULL` by default, so an acknowledged record survives a power cut.  Offsets are
assigned inside the transaction, so concurrent producers in several processes never clash.

Consuming: a group has one active member at a time, the holder of the group's lease (renewed
by `getmany`, `lease_ms` long).  Another consumer of the same group is a hot standby: its
`getmany` returns nothing until the lease expires, then it resumes from the committed offsets
(`commit` by a member that lost the lease raises `ConsumerFenced`).  New records are noticed
by polling `PRAGMA data_version` every `poll_interval_s` (20 ms): no query runs while nothing
changed.

Retention: every `retention_interval_s` records older than `retention_ms`, and the oldest
records of a partition beyond `retention_bytes` of values, are deleted, whether or not a
group has read them (as with Kafka).  A consumer behind the retained start resumes at the
earliest record left.

Throughput on the 2-core reference machine (tests/bench/cloud_ingest.py, --bus embedded):
docs/cloud-ingest.md has the figures (~60,000 readings/s with 20 gateways).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgpack

from cloud.bus.base import OutRecord, Record, TopicSpec, partition_for
from cloud.errors import BrokerUnavailable, ConsumerFenced, UnknownTopic
from edge.clock import Clock, SystemClock

__all__ = ["EmbeddedBus", "EmbeddedConsumer"]

log = logging.getLogger("fieldlink.cloud.bus")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL, key BLOB, value BLOB NOT NULL, headers BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS records_position ON records (topic, partition, offset);
CREATE INDEX IF NOT EXISTS records_age ON records (ts_ms);
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    offset INTEGER NOT NULL, PRIMARY KEY (group_id, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_leases (
    group_id TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL);
"""

_Pending = tuple[str, list[OutRecord], "asyncio.Future[list[tuple[int, int]]]"]


def _pack_headers(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    return msgpack.packb([[k, bytes(v)] for k, v in headers]) if headers else None


def _unpack_headers(blob: bytes | None) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, v) for k, v in msgpack.unpackb(blob)) if blob else ()


class EmbeddedBus:
    """`async with EmbeddedBus(path) as bus:` — see the module docstring."""

    kind = "embedded"

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None,
                 durable: bool = True, poll_interval_s: float = 0.02,
                 retention_ms: int | None = 7 * 86_400_000,
                 retention_bytes: int | None = None, retention_interval_s: float = 60.0,
                 lease_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.clock = clock or SystemClock()
        self.durable = durable
        self.poll_interval_s = poll_interval_s
        self.retention_ms = retention_ms
        self.retention_bytes = retention_bytes
        self.retention_interval_s = retention_interval_s
        self.lease_ms = lease_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bus-writer")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._partition_counts: dict[str, int] = {}
        self._round_robin: dict[str, int] = {}
        self.stats: dict[str, int] = {"transactions": 0, "records": 0, "retained_deleted": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """A new connection to the log (each thread of use gets its own)."""
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        return conn

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self.connect()
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open)
        self._tasks = [asyncio.create_task(self._writer(), name="bus-writer")]
        if self.retention_ms is not None or self.retention_bytes is not None:
            self._tasks.append(asyncio.create_task(self._retainer(), name="bus-retention"))
        log.info("embedded bus open", extra={"fields": {"path": str(self.path)}})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    # -- topics ------------------------------------------------------------------------------

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ensure_topics, list(specs))

    def _ensure_topics(self, specs: list[TopicSpec]) -> None:
        assert self._conn is not None
        conn = self._conn
        now = self.clock.now_ms()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for spec in specs:
                row = conn.execute("SELECT partitions FROM topics WHERE name = ?",
                                   (spec.name,)).fetchone()
                if row is not None:
                    if row[0] != spec.partitions:
                        # like Kafka, never repartition behind the keys' backs
                        log.warning("topic exists with another partition count", extra={
                            "fields": {"topic": spec.name, "partitions": row[0],
                                       "configured": spec.partitions}})
                    continue
                conn.execute("INSERT INTO topics VALUES (?, ?, ?)",
                             (spec.name, spec.partitions, now))
                conn.executemany("INSERT INTO partitions VALUES (?, ?, 0)",
                                 [(spec.name, p) for p in range(spec.partitions)])
                log.info("topic created", extra={"fields": {
                    "topic": spec.name, "partitions": spec.partitions}})
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def partition_counts(self, conn: sqlite3.Connection,
                         topics: Sequence[str]) -> dict[str, int]:
        """Partitions of each of `topics`; raises UnknownTopic for one that does not exist."""
        out = {}
        for topic in topics:
            row = conn.execute("SELECT partitions FROM topics WHERE name = ?",
                               (topic,)).fetchone()
            if row is None:
                raise UnknownTopic(f"topic {topic!r} does not exist on the embedded bus "
                                   f"{self.path}")
            out[topic] = int(row[0])
        return out

    async def healthy(self) -> tuple[bool, str]:
        if self._conn is None or self._closing:
            return False, "embedded bus is closed"
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._conn.execute, "SELECT 1")
        except sqlite3.Error as e:
            return False, f"embedded bus {self.path}: {e}"
        return True, f"embedded bus {self.path}"

    # -- producing ---------------------------------------------------------------------------

    def producer(self) -> EmbeddedBus:
        return self

    async def send_batch(self, topic: str,
                         records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        if self._closing or self._conn is None:
            raise BrokerUnavailable("the embedded bus is closed")
        fut: asyncio.Future[list[tuple[int, int]]] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, list(records), fut))
        self._wake.set()
        return await fut

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._pending = self._pending, []
            if batch:
                try:
                    results = await loop.run_in_executor(self._executor, self._append, batch)
                except Exception as e:  # noqa: BLE001 - every waiter must learn of it
                    log.error("embedded bus write failed", extra={"fields": {
                        "error": repr(e), "requests": len(batch)}})
                    results = [BrokerUnavailable(f"embedded bus write failed: {e}")] * len(batch)
                for (_, _, fut), result in zip(batch, results):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)

    def _append(self, batch: list[_Pending]) -> list[list[tuple[int, int]] | Exception]:
        assert self._conn is not None
        conn = self._conn
        now = self.clock.now_ms()
        results: list[list[tuple[int, int]] | Exception] = []
        next_offset: dict[tuple[str, int], int] = {}
        rows: list[tuple[Any, ...]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for topic, records, _ in batch:
                n = self._partition_counts.get(topic)
                if n is None:
                    try:
                        n = self._partition_counts[topic] = \
                            self.partition_counts(conn, [topic])[topic]
                    except UnknownTopic as e:
                        results.append(e)
                        continue
                placed = []
                for key, value, headers in records:
                    if key is None:
                        p = self._round_robin.get(topic, 0) % n
                        self._round_robin[topic] = p + 1
                    else:
                        p = partition_for(key, n)
                    tp = (topic, p)
                    offset = next_offset.get(tp)
                    if offset is None:
                        offset = conn.execute(
                            "SELECT next_offset FROM partitions WHERE topic = ? AND "
                            "partition = ?", tp).fetchone()[0]
                    next_offset[tp] = offset + 1
                    rows.append((topic, p, offset, now, key, value, _pack_headers(headers)))
                    placed.append((p, offset))
                results.append(placed)
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("UPDATE partitions SET next_offset = ? WHERE topic = ? AND "
                             "partition = ?", [(o, t, p) for (t, p), o in next_offset.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats["transactions"] += 1
        self.stats["records"] += len(rows)
        return results

    # -- retention ---------------------------------------------------------------------------

    async def _retainer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                deleted = await loop.run_in_executor(self._executor, self.retain)
            except sqlite3.Error as e:
                log.warning("embedded bus retention failed", extra={"fields": {
                    "error": repr(e)}})
            else:
                if deleted:
                    log.info("embedded bus retention", extra={"fields": {"deleted": deleted}})
            await asyncio.sleep(self.retention_interval_s)

    def retain(self) -> int:
        """Delete what retention allows now; the number of records deleted."""
        conn = self._conn
        assert conn is not None
        deleted = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self.retention_ms is not None:
                cur = conn.execute("DELETE FROM records WHERE ts_ms < ?",
                                   (self.clock.now_ms() - self.retention_ms,))
                deleted += cur.rowcount
            if self.retention_bytes is not None:
                for topic, partition in conn.execute(
                        "SELECT topic, partition FROM partitions").fetchall():
                    total = 0
                    cut = None
                    for offset, size in conn.execute(
                            "SELECT offset, length(value) FROM records WHERE topic = ? AND "
                            "partition = ? ORDER BY offset DESC", (topic, partition)):
                        total += size
                        if total > self.retention_bytes:
                            cut = offset
                            break
                    if cut is not None:
                        deleted += conn.execute(
                            "DELETE FROM records WHERE topic = ? AND partition = ? AND "
                            "offset <= ?", (topic, partition, cut)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats["retained_deleted"] += deleted
        return deleted

    # -- consuming ---------------------------------------------------------------------------

    def consumer(self, group_id: str, topics: Sequence[str]) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group_id, topics)


class EmbeddedConsumer:
    """A group member on the embedded bus; see the module docstring for the lease."""

    def __init__(self, bus: EmbeddedBus, group_id: str, topics: Sequence[str]) -> None:
        if not group_id or not topics:
            raise ValueError("a consumer needs a group id and at least one topic")
        self.bus = bus
        self.group_id = group_id
        self.topics = list(topics)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"bus-consumer-{group_id}")
        self._assignment: list[tuple[str, int]] = []
        self._positions: dict[tuple[str, int], int] = {}
        self._lease_until = 0
        self._next_try = 0
        self._data_version: int | None = None
        self._start = 0

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def __aenter__(self) -> Self:
        await self._call(self._open)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def _open(self) -> None:
        conn = self.bus.connect()
        try:
            counts = self.bus.partition_counts(conn, self.topics)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._assignment = [(t, p) for t in self.topics for p in range(counts[t])]

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._call(self._release)
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=False)

    def assignment(self) -> list[tuple[str, int]]:
        """The partitions this member reads (all of its topics': a group has one member)."""
        return list(self._assignment)

    def position(self, topic: str, partition: int) -> int | None:
        return self._positions.get((topic, partition))

    # lease: only the holder reads and commits ------------------------------------------------

    def _acquire(self) -> bool:
        """Take or renew the group's lease; True while this member holds it."""
        assert self._conn is not None
        now = self.bus.clock.now_ms()
        until = now + self.bus.lease_ms
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO group_leases VALUES (?, ?, ?) ON CONFLICT (group_id) DO UPDATE "
                "SET owner = excluded.owner, expires_ms = excluded.expires_ms "
                "WHERE group_leases.owner = excluded.owner OR group_leases.expires_ms < ?",
                (self.group_id, self.owner, until, now))
            held = cur.rowcount == 1
            fresh = held and self._lease_until < now
            if fresh:
                self._load_committed()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._lease_until = until if held else 0
        return held

    def _release(self) -> None:
        assert self._conn is not None
        self._conn.execute("DELETE FROM group_leases WHERE group_id = ? AND owner = ?",
                           (self.group_id, self.owner))

    def _load_committed(self) -> None:
        assert self._conn is not None
        committed = {(t, p): o for t, p, o in self._conn.execute(
            "SELECT topic, partition, offset FROM group_offsets WHERE group_id = ?",
            (self.group_id,))}
        self._positions = {tp: committed.get(tp, 0) for tp in self._assignment}
        self._data_version = None

    # reading ---------------------------------------------------------------------------------

    def _read(self, max_records: int) -> list[Record] | None:
        """Records after the positions, or None when this member does not hold the lease."""
        assert self._conn is not None
        conn = self._conn
        now = self.bus.clock.now_ms()
        # renew at a third of the lease, so a busy member never lets it lapse
        if self._lease_until - now < self.bus.lease_ms * 2 // 3:
            if now < self._next_try:
                return None
            if not self._acquire():
                # a standby: ask again after a while, not on every poll
                self._next_try = now + min(1000, self.bus.lease_ms // 3)
                return None
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return []
        out: list[Record] = []
        n = len(self._assignment)
        # start at another partition each call, so a busy one cannot starve the others
        for i in range(n):
            topic, partition = tp = self._assignment[(self._start + i) % n]
            rows = conn.execute(
                "SELECT offset, key, value, headers, ts_ms FROM records WHERE topic = ? AND "
                "partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, partition, self._positions[tp], max_records - len(out))).fetchall()
            for offset, key, value, headers, ts_ms in rows:
                out.append(Record(topic, partition, offset, key, value,
                                  _unpack_headers(headers), ts_ms))
            if rows:
                self._positions[tp] = rows[-1][0] + 1
            if len(out) >= max_records:
                break
        self._start += 1
        if not out:
            self._data_version = version
        return out

    async def getmany(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        if self._conn is None:
            raise RuntimeError("use the consumer inside `async with`")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            records = await self._call(self._read, max_records)
            if records:
                return records  # type: ignore[no-any-return]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(self.bus.poll_interval_s, remaining))

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self._conn is not None
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT owner FROM group_leases WHERE group_id = ?",
                               (self.group_id,)).fetchone()
            if row is None or row[0] != self.owner:
                raise ConsumerFenced(f"consumer group {self.group_id!r} is now read by "
                                     f"{row[0] if row else 'nobody'}; not committed")
            conn.executemany(
                "INSERT INTO group_offsets VALUES (?, ?, ?, ?) ON CONFLICT (group_id, topic, "
                "partition) DO UPDATE SET offset = excluded.offset",
                [(self.group_id, t, p, o) for (t, p), o in offsets.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        if self._conn is None:
            raise RuntimeError("use the consumer inside `async with`")
        chosen = dict(self._positions if offsets is None else offsets)
        unknown = set(chosen) - set(self._assignment)
        if unknown:
            raise ValueError(f"not partitions of this consumer: {sorted(unknown)}")
        if chosen:
            await self._call(self._commit, chosen)

    async def seek_to_committed(self) -> None:
        if self._conn is None:
            raise RuntimeError("use the consumer inside `async with`")
        await self._call(self._load_committed)

    async def committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets of this consumer's partitions."""
        assert self._conn is not None

        def read() -> dict[tuple[str, int], int]:
            assert self._conn is not None
            return {(t, p): o for t, p, o in self._conn.execute(
                "SELECT topic, partition, offset FROM group_offsets WHERE group_id = ?",
                (self.group_id,)) if (t, p) in self._assignment}

        return await self._call(read)  # type: ignore[no-any-return]
