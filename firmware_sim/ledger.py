"""The ledger: one SQLite row per reading the fleet generated, and what became of it.

Written by the fleet (`LedgerWriter`), read by tests and operators (`Ledger`).  A row is
written once, when the reading's fate is known — acknowledged, sent without acknowledgement
(QoS 0, non-confirmable CoAP, serial), or failed — so there are no updates, and rows are
inserted in batches from a worker thread (10,000+ rows/s without stalling the event loop).

Durability: rows are committed every `flush_interval` seconds and at close; a crashed run
loses at most the last interval.  Order: rows appear in the order fates became known, not in
send order (an acknowledgement can overtake an earlier send on another connection).

Table `readings` (see `LedgerRow`), table `events` (episode faults and connection drops:
device_id, kind, at_ms, detail), table `meta` (seed, start_ms, devices, config as JSON).

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
from typing import Any

from firmware_sim.device import DeviceSpec, Emission

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL, measurement TEXT NOT NULL, seq INTEGER NOT NULL,
    tick_ms INTEGER NOT NULL, ts_ms INTEGER, value REAL,
    topic TEXT NOT NULL, protocol TEXT NOT NULL, qos INTEGER NOT NULL,
    sent_ms INTEGER, acked INTEGER NOT NULL, ack_ms INTEGER, attempts INTEGER NOT NULL,
    fault TEXT, expect TEXT NOT NULL, failure TEXT, payload_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    device_id TEXT, kind TEXT NOT NULL, at_ms INTEGER NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_INSERT = "INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"

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
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def open(self, meta: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._open)
        rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()]
        await loop.run_in_executor(self._pool, self._write, [], [], rows)

    def record(self, e: Emission, spec: DeviceSpec) -> None:
        self._rows.append((e.device_id, e.measurement, e.seq, e.tick_ms, e.ts_ms, e.value,
                           spec.topic if spec.protocol == "mqtt" else spec.coap_path
                           if spec.protocol == "coap" else "serial", spec.protocol.value,
                           spec.qos, e.sent_ms, 1 if e.ack_ms is not None else 0, e.ack_ms,
                           e.attempts, e.faults or None, e.expect, e.failure, len(e.payload)))
        if len(self._rows) >= self._flush_rows:
            self.flush_soon()

    def event(self, device_id: str | None, kind: str, at_ms: int, detail: str = "") -> None:
        self._events.append((device_id, kind, at_ms, detail))

    def _write(self, rows: list[tuple[Any, ...]], events: list[tuple[Any, ...]],
               meta: list[tuple[str, str]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        if rows:
            conn.executemany(_INSERT, rows)
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
        self._conn.execute("CREATE INDEX IF NOT EXISTS readings_key "
                           "ON readings (device_id, measurement, seq)")
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
        cur = self._conn.execute(f"SELECT * FROM readings {where} ORDER BY rowid", args)
        for r in cur:
            yield LedgerRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                            bool(r[10]), r[11], r[12], r[13], r[14], r[15], r[16])

    def __iter__(self) -> Iterator[LedgerRow]:
        return self._rows()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM readings").fetchone()[0])

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
