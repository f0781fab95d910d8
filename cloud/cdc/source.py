"""The PostgreSQL side of CDC: catalog, publication, slot, snapshot and the replication stream.

Everything here is blocking psycopg2 code; the connector calls it in worker threads.

* `Catalog(dsn)` — an ordinary connection: table columns and primary keys, the publication,
  slot inspection and dropping.
* `create_slot(dsn, slot)` — a replication connection that creates the logical slot with
  `CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT 'export')` and keeps the
  connection idle: the exported snapshot (the database exactly at the slot's consistent point)
  is usable by other sessions only until this connection runs its next command.
* `Snapshot(dsn, name)` — a `REPEATABLE READ` transaction that imports that snapshot
  (`SET TRANSACTION SNAPSHOT`) and reads each table with a server-side cursor in chunks,
  every column as text (the same output functions pgoutput uses).  Together with streaming
  from the consistent point this is the hand-over with no gap and no duplicate: every
  transaction committed before the point is in the snapshot, every later one in the stream.
* `ReplicationReader` — a thread running `START_REPLICATION SLOT ... LOGICAL <lsn>
  (proto_version '1', publication_names '...')` that hands batches of raw messages to the
  event loop through a bounded queue (back-pressure: when the connector is behind, the thread
  stops reading and the server stops sending) and sends the server `flush_lsn` feedback only
  for positions the connector reported as acknowledged (`confirm(lsn)`).  While blocked on a
  full queue it keeps sending status updates, so the walsender does not time out.

Both connections set `TimeZone=UTC` and `DateStyle=ISO`, so snapshot and stream texts agree.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from cloud.cdc.envelope import TableSchema
from cloud.cdc.pgoutput import Column, parse_lsn

__all__ = ["Catalog", "RawMessage", "ReplicationReader", "SlotInfo", "Snapshot",
           "create_slot", "session_options"]

log = logging.getLogger("fieldlink.cloud.cdc")

#: libpq options every CDC connection uses
session_options = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3"


@dataclass(frozen=True, slots=True)
class RawMessage:
    payload: bytes
    data_start: int
    wal_end: int


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str
    active: bool
    confirmed_flush_lsn: int | None


def _connect(dsn: str, **kwargs: Any) -> Any:
    return psycopg2.connect(dsn, options=session_options, **kwargs)


class Catalog:
    """An ordinary connection for catalog questions (autocommit)."""

    def __init__(self, dsn: str) -> None:
        self.conn = _connect(dsn)
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()

    def database(self) -> str:
        with self.conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            return str(cur.fetchone()[0])

    def table(self, schema: str, table: str) -> TableSchema | None:
        """Columns (in order) and primary key of a table; None when it does not exist."""
        with self.conn.cursor() as cur:
            cur.execute("""
                SELECT a.attname, a.atttypid, a.atttypmod,
                       coalesce(a.attnum = ANY(i.indkey), false)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_attribute a ON a.attrelid = c.oid
                LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0
                  AND NOT a.attisdropped
                ORDER BY a.attnum""", (schema, table))
            rows = cur.fetchall()
            if not rows:
                return None
            cur.execute("""
                SELECT a.attname FROM pg_index i
                JOIN pg_class c ON c.oid = i.indrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary
                ORDER BY k.ord""", (schema, table))
            pk = tuple(r[0] for r in cur.fetchall())
        columns = tuple(Column(name, int(oid), int(typmod), bool(is_key))
                        for name, oid, typmod, is_key in rows)
        return TableSchema(schema, table, columns, pk)

    def ensure_publication(self, publication: str, tables: list[str], *, create: bool) -> None:
        """The publication exists (created FOR TABLE `tables` when allowed and missing)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
            if cur.fetchone() is not None:
                return
            if not create:
                raise LookupError(f"publication {publication!r} does not exist (create it, or "
                                  "set cdc.create_publication)")
            idents = sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), idents))
            log.info("publication created", extra={"fields": {
                "publication": publication, "tables": tables}})

    def slot(self, name: str) -> SlotInfo | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT slot_name, plugin, active, confirmed_flush_lsn::text "
                        "FROM pg_replication_slots WHERE slot_name = %s", (name,))
            row = cur.fetchone()
        if row is None:
            return None
        return SlotInfo(row[0], row[1] or "", bool(row[2]),
                        parse_lsn(row[3]) if row[3] else None)

    def drop_slot(self, name: str, *, wait_s: float = 30.0) -> bool:
        """Drop the slot (waiting up to `wait_s` for an old connection to let go of it)."""
        deadline = time.monotonic() + wait_s
        while True:
            info = self.slot(name)
            if info is None:
                return False
            if not info.active or time.monotonic() >= deadline:
                with self.conn.cursor() as cur:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                return True
            time.sleep(0.2)


def create_slot(dsn: str, slot: str) -> tuple[Any, int, str]:
    """(replication connection, consistent point LSN, exported snapshot name).

    Keep the connection idle until the snapshot has been read, then stream on it (or close
    it).
    """
    conn = _connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cur = conn.cursor()
        server = conn.server_version
        if server >= 150000:
            cur.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')")
        else:
            cur.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT")
        _, consistent_point, snapshot_name, _ = cur.fetchone()
    except BaseException:
        conn.close()
        raise
    return conn, parse_lsn(consistent_point), snapshot_name


class Snapshot:
    """The tables as of an exported snapshot (see the module docstring)."""

    def __init__(self, dsn: str, snapshot_name: str) -> None:
        self.conn = _connect(dsn)
        self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with self.conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))

    def rows(self, table: TableSchema, chunk_rows: int) -> Iterator[list[tuple[str | None, ...]]]:
        """The rows of `table`, every column as the text of its type's output function (what
        pgoutput sends; a `::text` cast differs for some types, e.g. boolean and inet), in
        chunks of up to `chunk_rows`."""
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
        query = sql.SQL("SELECT {} FROM {}").format(
            cols, sql.Identifier(table.schema, table.table))
        raw = psycopg2.extensions.new_type(
            tuple({c.type_oid for c in table.columns}), "FIELDLINK_RAW",
            lambda value, _cur: value)
        with self.conn.cursor(name=f"snapshot_{table.table}"[:60]) as cur:
            psycopg2.extensions.register_type(raw, cur)
            cur.itersize = chunk_rows
            cur.execute(query)
            while True:
                chunk = cur.fetchmany(chunk_rows)
                if not chunk:
                    return
                yield chunk

    def close(self) -> None:
        try:
            self.conn.rollback()
        finally:
            self.conn.close()


class ReplicationReader:
    """The replication stream in a thread; see the module docstring."""

    def __init__(self, conn: Any, slot: str, publication: str, start_lsn: int, *,
                 queue_batches: int = 64, batch_messages: int = 1000,
                 status_interval_s: float = 10.0) -> None:
        self.conn = conn
        self.slot = slot
        self.publication = publication
        self.start_lsn = start_lsn
        self.batches: queue.Queue[list[RawMessage] | BaseException | None] = \
            queue.Queue(maxsize=queue_batches)
        self.batch_messages = batch_messages
        self.status_interval_s = status_interval_s
        self._confirmed = 0
        self._sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cdc-replication-{slot}",
                                        daemon=True)

    @classmethod
    def connect(cls, dsn: str, slot: str, publication: str, start_lsn: int,
                **kwargs: Any) -> ReplicationReader:
        conn = _connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        return cls(conn, slot, publication, start_lsn, **kwargs)

    def start(self) -> None:
        self._thread.start()

    def confirm(self, lsn: int) -> None:
        """Everything up to `lsn` is safe (acknowledged and recorded): report it as flushed."""
        if lsn > self._confirmed:
            self._confirmed = lsn  # read by the thread; a single int store is atomic

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.conn.close()
        except psycopg2.Error:
            pass

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            cur = self.conn.cursor()
            cur.start_replication(slot_name=self.slot, decode=False, start_lsn=self.start_lsn,
                                  options={"proto_version": "1",
                                           "publication_names": self.publication},
                                  status_interval=self.status_interval_s)
            while not self._stop.is_set():
                batch: list[RawMessage] = []
                while len(batch) < self.batch_messages:
                    msg = cur.read_message()
                    if msg is None:
                        break
                    batch.append(RawMessage(bytes(msg.payload), msg.data_start, msg.wal_end))
                self._feedback(cur)
                if batch:
                    self._put(cur, batch)
                    continue
                select.select([cur], [], [], 0.5)
        except BaseException as e:  # noqa: BLE001 - handed to the event loop, which decides
            if not self._stop.is_set():
                self._put(None, e)
            return
        self._put(None, None)

    def _feedback(self, cur: Any) -> None:
        confirmed = self._confirmed
        if confirmed > self._sent:
            # psycopg2 sends it with the next status update (every status_interval, or now
            # when forced); with everything confirmed it also confirms keepalive positions
            cur.send_feedback(flush_lsn=confirmed, force=True)
            self._sent = confirmed

    def _put(self, cur: Any, item: list[RawMessage] | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self.batches.put(item, timeout=1.0)
                return
            except queue.Full:
                if cur is not None:
                    self._feedback(cur)
                    cur.send_feedback(reply=False, force=True)  # keep the walsender happy
