"""The CDC connector: PostgreSQL tables -> Debezium-envelope change events on the bus.

    async with open_bus(cfg.cloud_config()) as bus, \\
            CdcConnector(ConnectorSettings.from_config(cfg), bus) as connector:
        await connector.wait(stop)

One task, "cdc-connector", runs sessions; a session that fails on a retriable condition
(PostgreSQL or the bus unreachable, the replication connection dropped) is retried with
capped, jittered backoff and resumes from the state.  A session:

1. Catalog: every configured table must exist and have a primary key (the record key);
   the publication is created for them when missing (`create_publication`).
2. Snapshot, unless the state says it is done: drop a leftover slot, create the slot with an
   exported snapshot, then for each table produce one truncate event per partition followed
   by the table's rows as "r" events (chunks of `chunk_rows`; the last row is marked
   `snapshot: "last"`), and schema events ("CREATE") to the schema-change topic.  Only then
   is the state saved: snapshot done, resume at the slot's consistent point.  A snapshot
   interrupted by a crash is simply redone: its truncate events make every consumer start
   the table over, so rows deleted in between do not linger.
3. Streaming from the state's LSN (`cloud.cdc.source.ReplicationReader`): messages are
   decoded in order (`cloud.cdc.decoder.ChangeDecoder`) and produced by ONE producer in commit
   order, in chunks of at most `chunk_rows` — a big transaction is never held in memory.
   After a chunk is acknowledged, the end LSN of the last transaction it completed is saved
   in the state (durably) and only then confirmed to the server (`flush_lsn`), so the slot
   never moves past an event Kafka does not have.

Ordering: per table topic, records of one primary key go to one partition in commit order;
the schema-change event of an ALTER precedes the row events that use the new columns.

Delivery is at-least-once: a crash between Kafka's acknowledgement and the state write
re-produces those transactions; consumers must be idempotent (the sink is: MERGE by key).

If the slot is gone while the state says streaming (dropped by hand, or lost with the
server), the stream position is lost: the connector logs it and snapshots again.

SIGTERM: the current chunk is finished and confirmed, the replication connection closed; the
slot stays (it retains WAL until the connector comes back: monitor `pg_replication_slots`,
or `fieldlink cloud cdc drop-slot` when the pipeline is retired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg2
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.bus import TopicSpec
from cloud.bus.base import Bus
from cloud.cdc import pgoutput
from cloud.cdc.decoder import ChangeDecoder, TopicRecord, snapshot_records, truncate_records
from cloud.cdc.envelope import TableSchema, schema_change_value, source_block
from cloud.cdc.source import Catalog, ReplicationReader, Snapshot, create_slot
from cloud.cdc.state import ConnectorState
from cloud.errors import BrokerUnavailable, ConfigError
from cloud.http import ServiceHttp
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock

__all__ = ["CdcConnector", "ConnectorSettings"]

log = logging.getLogger("fieldlink.cloud.cdc")

#: what a session may fail with and be retried
_RETRIABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, BrokerUnavailable, OSError)


@dataclass(frozen=True)
class ConnectorSettings:
    dsn: str
    tables: tuple[str, ...]
    state_path: Path
    server: str = "fieldlink"
    slot: str = "fieldlink_cdc"
    publication: str = "fieldlink_cdc"
    create_publication: bool = True
    partitions: int = 3
    chunk_rows: int = 1000
    replication_factor: int = 1
    http_host: str = "127.0.0.1"
    http_port: int | None = 0

    @classmethod
    def from_config(cls, cfg: Any) -> ConnectorSettings:
        """From an `edge.config.secondary.SecondaryConfig`."""
        c = cfg.cdc
        return cls(dsn=c.dsn(), tables=tuple(c.tables),
                   state_path=cfg.cdc_state_file, server=c.server, slot=c.slot,
                   publication=c.publication, create_publication=c.create_publication,
                   partitions=c.partitions, chunk_rows=c.chunk_rows,
                   replication_factor=cfg.kafka.replication_factor, http_port=c.metrics_port)


class ConnectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("cdc_events", "Change events produced, by op", ["op"],
                              registry=registry)
        self.transactions = Counter("cdc_transactions", "Transactions produced",
                                    registry=registry)
        self.schema_changes = Counter("cdc_schema_changes", "Schema-change events produced",
                                      registry=registry)
        self.sessions = Counter("cdc_sessions", "Sessions started (1 + reconnects)",
                                registry=registry)
        self.snapshots = Counter("cdc_snapshots", "Initial snapshots taken", registry=registry)
        self.confirmed = Gauge("cdc_confirmed_lsn", "End LSN confirmed to the server",
                               registry=registry)
        self.chunks = Counter("cdc_chunks", "Chunks produced", registry=registry)


class CdcConnector:
    def __init__(self, settings: ConnectorSettings, bus: Bus, *, clock: Clock | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ConnectorMetrics(self.registry)
        self.state: ConnectorState | None = None
        self._producer = bus.producer()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.streaming = asyncio.Event()
        self.http: ServiceHttp | None = None
        self.database = ""
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        s = self.settings
        self.state = await asyncio.to_thread(ConnectorState, s.state_path, s.slot)
        if s.http_port is not None:
            self.http = ServiceHttp(s.http_host, s.http_port, self.registry,
                                    {"bus": self.bus.healthy, "stream": self._healthy},
                                    name="cdc-connector")
            await self.http.__aenter__()
        self._task = asyncio.create_task(self._run(), name="cdc-connector")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=60)
            if not done:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        if self.state is not None:
            self.state.close()

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set or the connector fails for good (its exception is raised)."""
        assert self._task is not None
        stopper = asyncio.create_task(stop.wait(), name="cdc-connector-stop")
        try:
            await asyncio.wait({self._task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if self._task.done():
            self._task.result()

    def _healthy(self) -> tuple[bool, str]:
        if self.streaming.is_set():
            return True, "streaming"
        return False, self.last_error or "starting"

    async def _run(self) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        while not self._stop.is_set():
            self.metrics.sessions.inc()
            try:
                await self._session()
                return
            except _RETRIABLE as e:
                self.streaming.clear()
                self.last_error = f"{type(e).__name__}: {e}".strip()
                delay = backoff.next_delay()
                log.warning("cdc session failed; retrying", extra={"fields": {
                    "error": self.last_error, "retry_in_s": round(delay, 2)}})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()

    # -- a session ---------------------------------------------------------------------------

    async def _session(self) -> None:
        s = self.settings
        assert self.state is not None
        catalog = await asyncio.to_thread(Catalog, s.dsn)
        try:
            self.database = await asyncio.to_thread(catalog.database)
            tables = await self._tables(catalog)
            await asyncio.to_thread(catalog.ensure_publication, s.publication,
                                    list(s.tables), create=s.create_publication)
            await self.bus.ensure_topics(
                [TopicSpec(self._topic(t), s.partitions, s.replication_factor)
                 for t in tables.values()]
                + [TopicSpec(f"cdc.{s.server}.schema_changes", 1, s.replication_factor)])
            slot = await asyncio.to_thread(catalog.slot, s.slot)
            if self.state.snapshot_done and slot is None:
                log.error("the replication slot is gone: the stream position is lost; "
                          "taking a new snapshot", extra={"fields": {"slot": s.slot}})
                await asyncio.to_thread(self.state.reset)
            if not self.state.snapshot_done:
                if slot is not None:
                    await asyncio.to_thread(catalog.drop_slot, s.slot)
                reader = await self._snapshot(tables)
            else:
                reader = await asyncio.to_thread(ReplicationReader.connect, s.dsn, s.slot,
                                                 s.publication, self.state.last_lsn)
        finally:
            await asyncio.to_thread(catalog.close)
        try:
            reader.start()
            await self._stream(reader, tables)
        finally:
            await asyncio.to_thread(reader.stop)

    async def _tables(self, catalog: Catalog) -> dict[str, TableSchema]:
        out = {}
        for name in self.settings.tables:
            schema, _, table = name.partition(".")
            info = await asyncio.to_thread(catalog.table, schema, table)
            if info is None:
                raise ConfigError("cdc", [("tables", f"table {name} does not exist")])
            if not info.primary_key:
                raise ConfigError("cdc", [("tables", f"table {name} has no primary key: "
                                                     "change events need one as their key")])
            out[name] = info
        return out

    def _topic(self, table: TableSchema) -> str:
        return f"cdc.{self.settings.server}.{table.schema}.{table.table}"

    async def _produce(self, records: Sequence[TopicRecord]) -> None:
        """Produce in order: consecutive records of one topic go as one batch."""
        start = 0
        while start < len(records):
            topic = records[start][0]
            end = start
            while end < len(records) and records[end][0] == topic:
                end += 1
            await self._producer.send_batch(topic, [r for _, r in records[start:end]])
            start = end
        self.metrics.chunks.inc()

    async def _snapshot(self, tables: dict[str, TableSchema]) -> ReplicationReader:
        s = self.settings
        assert self.state is not None
        conn, lsn, snapshot_name = await asyncio.to_thread(create_slot, s.dsn, s.slot)
        log.info("replication slot created; snapshot starts", extra={"fields": {
            "slot": s.slot, "consistent_point": pgoutput.format_lsn(lsn)}})
        try:
            snap = await asyncio.to_thread(Snapshot, s.dsn, snapshot_name)
            try:
                await self._read_snapshot(snap, tables)
            finally:
                await asyncio.to_thread(snap.close)
        except BaseException:
            await asyncio.to_thread(conn.close)
            raise
        known = {name: t.signature() for name, t in tables.items()}
        await asyncio.to_thread(self.state.save, last_lsn=lsn, snapshot_done=True,
                                tables=known)
        self.metrics.snapshots.inc()
        log.info("snapshot done; streaming", extra={"fields": {
            "slot": s.slot, "from": pgoutput.format_lsn(lsn)}})
        return ReplicationReader(conn, s.slot, s.publication, lsn)

    async def _read_snapshot(self, snap: Snapshot, tables: dict[str, TableSchema]) -> None:
        s = self.settings
        now = self.clock.now_ms
        names = list(tables)
        for index, name in enumerate(names):
            table = tables[name]
            topic = self._topic(table)
            schema_event = schema_change_value(server=s.server, database=self.database,
                                               table=table, previous=None, lsn=None,
                                               ts_ms=now())
            source = source_block(server=s.server, database=self.database, table=table,
                                  commit_ms=now(), snapshot="true", xid=None, lsn=None,
                                  last_commit_lsn=None)
            head: list[TopicRecord] = [(f"cdc.{s.server}.schema_changes", (
                f'{{"schema":"{table.schema}","table":"{table.table}"}}'.encode(),
                schema_event, []))]
            head += truncate_records(table, topic=topic, partitions=s.partitions,
                                     source=source, now_ms=now())
            await self._produce(head)
            self.metrics.schema_changes.inc()
            self.metrics.events.labels("t").inc(s.partitions)
            chunks = snap.rows(table, s.chunk_rows)
            chunk = await asyncio.to_thread(next, chunks, None)
            rows = 0
            while chunk is not None:
                following = await asyncio.to_thread(next, chunks, None)
                last = following is None and index == len(names) - 1
                await self._produce(snapshot_records(
                    table, chunk, topic=topic, server=s.server, database=self.database,
                    snapshot_ms=now(), last=last, now_ms=now()))
                self.metrics.events.labels("r").inc(len(chunk))
                rows += len(chunk)
                chunk = following
            log.info("table snapshot produced", extra={"fields": {"table": name,
                                                                  "rows": rows}})

    async def _stream(self, reader: ReplicationReader, tables: dict[str, TableSchema]) -> None:
        s = self.settings
        state = self.state
        assert state is not None
        decoder = ChangeDecoder(server=s.server, database=self.database, tables=tables,
                                known=state.tables, partitions=s.partitions,
                                skip_before=state.last_lsn)
        loop = asyncio.get_running_loop()
        pending: list[TopicRecord] = []
        self.streaming.set()
        self.last_error = None
        seen = dict(decoder.counters)

        async def flush() -> None:
            if pending:
                await self._produce(pending)
                pending.clear()
            for key, metric in (("transactions", self.metrics.transactions),
                                ("schema_changes", self.metrics.schema_changes),
                                ("c", self.metrics.events.labels("c")),
                                ("u", self.metrics.events.labels("u")),
                                ("d", self.metrics.events.labels("d")),
                                ("t", self.metrics.events.labels("t"))):
                metric.inc(decoder.counters[key] - seen[key])
                seen[key] = decoder.counters[key]
            done = decoder.last_commit_end
            if done > state.last_lsn:
                await asyncio.to_thread(state.save, last_lsn=done, tables=decoder.known)
                reader.confirm(done)
                self.metrics.confirmed.set(done)

        while not self._stop.is_set():
            try:
                item = await loop.run_in_executor(None, reader.batches.get, True, 0.5)
            except queue.Empty:
                await flush()
                continue
            if isinstance(item, BaseException):
                raise item
            if item is None:
                raise psycopg2.OperationalError("the replication stream ended")
            for raw in item:
                pending += decoder.feed(pgoutput.parse(raw.payload), self.clock.now_ms())
                if len(pending) >= s.chunk_rows:
                    await flush()
            if reader.batches.empty():
                await flush()
        await flush()
