"""The ledger: one SQLite row per reading the fleet generated, and what became of it.

Written by the fleet (`LedgerWriter`), read by tests and operators (`Ledger`).  A row is
written once, when the reading's fate is known — acknowledged, sent without acknowledgement
(QoS 0, non-confirmable CoAP, serial), or failed — so there are no updates, and rows are
inserted in batches from a worker thread (10,000+ rows/s without stalling the event loop).

Durability: rows are committed by the fleet's housekeeping about once a second, whenever
20,000 are waiting, and at close; a crashed run loses at most what was not yet committed.  Order: rows appear in the order fates became known, not in
send order (an acknowledgement can overtake an earlier send on another connection).

View `readings` (the columns of `LedgerRow`) joins table `rows` (one per reading) with
table `devices` (device_id, topic, protocol, qos — per device, not repeated per row); table
`events` (episode faults and connection drops: device_id, kind, at_ms, detail); table `meta`
(seed, devices, config as JSON, the final summary).

`Ledger.expected_unique()` is what an end-to-end test checks downstream against: every
acknowledged reading that a correct pipeline must store, keyed by (device_id, measurement,
seq) — duplicates collapse to one key, malformed payloads (expect "rejected") are left out.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any

from firmware_sim.device import DeviceSpec, Emission

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, topic TEXT NOT NULL, protocol TEXT NOT NULL,
    qos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    device_id TEXT NOT NULL, measurement TEXT NOT NULL, seq INTEGER NOT NULL,
    tick_ms INTEGER NOT NULL, ts_ms INTEGER, value REAL,
    sent_ms INTEGER, acked INTEGER NOT NULL, ack_ms INTEGER, attempts INTEGER NOT NULL,
    fault TEXT, expect TEXT NOT NULL, failure TEXT, payload_bytes INTEGER NOT NULL
);
CREATE VIEW IF NOT EXISTS readings AS
    SELECT r.device_id, r.measurement, r.seq, r.tick_ms, r.ts_ms, r.value, d.topic,
           d.protocol, d.qos, r.sent_ms, r.acked, r.ack_ms, r.attempts, r.fault, r.expect,
           r.failure, r.payload_bytes
    FROM rows r JOIN devices d USING (device_id);
CREATE TABLE IF NOT EXISTS events (
    device_id TEXT, kind TEXT NOT NULL, at_ms INTEGER NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = 14
#: rows per INSERT statement: one statement (one release of the GIL around sqlite3_step)
#: per chunk instead of per row, so the worker and the event loop do not trade the GIL
#: 10,000 times a second
_CHUNK = 256
_INSERT_ONE = "INSERT INTO rows VALUES (" + ",".join("?" * _COLUMNS) + ")"
_INSERT_CHUNK = "INSERT INTO rows VALUES " + ",".join(
    ["(" + ",".join("?" * _COLUMNS) + ")"] * _CHUNK)

Key = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    device_id: str
    measurement: str
    seq: int
    #: the true sample time
    tick_ms: int
    #: the timestamp in the payload (None: the payload had none; skewed under clock_skew)
    ts_ms: int | None
    #: the value in the payload (None when the payload carried no valid number)
    value: float | None
    topic: str
    protocol: str
    qos: int
    #: first send (None: never sent)
    sent_ms: int | None
    acked: bool
    ack_ms: int | None
    attempts: int
    #: comma-separated fault kinds applied ("" or None: a clean reading)
    fault: str | None
    #: "stored" | "duplicate" | "rejected": what a correct pipeline does with it
    expect: str
    #: why it was not acknowledged, when it was not
    failure: str | None
    payload_bytes: int

    @property
    def key(self) -> Key:
        return (self.device_id, self.measurement, self.seq)

    @property
    def sent(self) -> bool:
        return self.sent_ms is not None


class LedgerWriter:
    """Batches rows and commits them from one worker thread.  Used from one event loop."""

    def __init__(self, path: str | os.PathLike[str], *, flush_rows: int = 20_000):
        self.path = os.fspath(path)
        self._rows: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._flush_rows = flush_rows
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-ledger")
        self._conn: sqlite3.Connection | None = None
        self._pending: asyncio.Future[None] | None = None
        self.rows_written = 0

    def _open(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # a test artefact: a crashed simulator loses nothing the OS already has, and no
        # fsync ever stalls the worker
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def open(self, meta: dict[str, Any], specs: list[DeviceSpec]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._open)
        rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()]
        devices = [(s.device_id, s.topic if s.protocol == "mqtt" else s.coap_path
                    if s.protocol == "coap" else "serial", s.protocol.value, s.qos)
                   for s in specs]
        await loop.run_in_executor(self._pool, self._write, [], [], rows, devices)

    def record(self, e: Emission) -> None:
        self._rows.append((e.device_id, e.measurement, e.seq, e.tick_ms, e.ts_ms, e.value,
                           e.sent_ms, 0 if e.ack_ms is None else 1, e.ack_ms, e.attempts,
                           e.faults or None, e.expect, e.failure, len(e.payload)))
        if len(self._rows) >= self._flush_rows:
            self.flush_soon()

    def event(self, device_id: str | None, kind: str, at_ms: int, detail: str = "") -> None:
        self._events.append((device_id, kind, at_ms, detail))

    def _write(self, rows: list[tuple[Any, ...]], events: list[tuple[Any, ...]],
               meta: list[tuple[str, str]], devices: list[tuple[Any, ...]] | None = None
               ) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        if devices:
            conn.executemany("INSERT OR REPLACE INTO devices VALUES (?,?,?,?)", devices)
        whole = len(rows) - len(rows) % _CHUNK
        for i in range(0, whole, _CHUNK):
            conn.execute(_INSERT_CHUNK, list(chain.from_iterable(rows[i:i + _CHUNK])))
        if whole < len(rows):
            conn.executemany(_INSERT_ONE, rows[whole:])
        if events:
            conn.executemany("INSERT INTO events VALUES (?,?,?,?)", events)
        if meta:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", meta)
        conn.execute("COMMIT")

    def flush_soon(self) -> None:
        """Hand the buffered rows to the worker without waiting."""
        if not self._rows and not self._events:
            return
        rows, events = self._rows, self._events
        self._rows, self._events = [], []
        self.rows_written += len(rows)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, self._write, rows, events, [])
        self._pending = fut
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[None]) -> None:
        if self._pending is fut:
            self._pending = None

    async def flush(self) -> None:
        self.flush_soon()
        if self._pending is not None:
            await self._pending

    async def close(self, meta: dict[str, Any] | None = None) -> None:
        await self.flush()
        loop = asyncio.get_running_loop()
        if meta:
            rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()]
            await loop.run_in_executor(self._pool, self._write, [], [], rows)
        await loop.run_in_executor(self._pool, self._finish)
        self._pool.shutdown(wait=True)

    def _finish(self) -> None:
        if self._conn is None:
            return
        self._conn.execute("CREATE INDEX IF NOT EXISTS rows_key "
                           "ON rows (device_id, measurement, seq)")
        # a finished ledger is one self-contained file (readers may open it read-only)
        self._conn.execute("PRAGMA journal_mode=DELETE")
        self._conn.close()
        self._conn = None


class Ledger:
    """Read access to a ledger file.  `Ledger.open(path)`; usable as a context manager."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no ledger at {os.fspath(path)}")
        conn = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True)
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, where: str = "", args: tuple[Any, ...] = ()) -> Iterator[LedgerRow]:
        cur = self._conn.execute(f"SELECT r.device_id, r.measurement, r.seq, r.tick_ms, "
                                 f"r.ts_ms, r.value, d.topic, d.protocol, d.qos, r.sent_ms, "
                                 f"r.acked, r.ack_ms, r.attempts, r.fault, r.expect, "
                                 f"r.failure, r.payload_bytes FROM rows r JOIN devices d "
                                 f"USING (device_id) {where} ORDER BY r.rowid", args)
        for r in cur:
            yield LedgerRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                            bool(r[10]), r[11], r[12], r[13], r[14], r[15], r[16])

    def __iter__(self) -> Iterator[LedgerRow]:
        return self._rows()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM rows").fetchone()[0])

    def sent(self) -> list[LedgerRow]:
        return list(self._rows("WHERE sent_ms IS NOT NULL"))

    def acknowledged(self) -> list[LedgerRow]:
        return list(self._rows("WHERE acked = 1"))

    def failed(self) -> list[LedgerRow]:
        return list(self._rows("WHERE failure IS NOT NULL"))

    def expected_unique(self) -> dict[Key, LedgerRow]:
        """Acknowledged readings a correct pipeline stores exactly once, by key."""
        out: dict[Key, LedgerRow] = {}
        for row in self._rows("WHERE acked = 1 AND expect != 'rejected'"):
            out.setdefault(row.key, row)
        return out

    def expected_rejected(self) -> list[LedgerRow]:
        """Sent payloads a correct pipeline dead-letters (malformed)."""
        return list(self._rows("WHERE sent_ms IS NOT NULL AND expect = 'rejected'"))

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a read-only query of your own against the ledger's tables."""
        return self._conn.execute(query, args).fetchall()

    def events(self) -> list[tuple[str | None, str, int, str]]:
        return [tuple(r) for r in  # type: ignore[misc]
                self._conn.execute("SELECT * FROM events ORDER BY rowid")]

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self._conn.execute("SELECT key, value FROM meta"):
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
        return out
