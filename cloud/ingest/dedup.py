"""De-duplication of batches by (gateway, sequence): the durable batch ledger.

`BatchLedger` — durable (SQLite, `<cloud.data_dir>/ingest-ledger.sqlite3`).  A batch is
recorded only after the bus acknowledged every record of it, together with the answer it got,
so a retried batch either was produced (its row exists: answered `"duplicate": true` with the
first answer's counts) or was not (no row: produced now).  A crash between the bus's
acknowledgement and the row's commit means the retry is produced a second time: the bus is
at-least-once, and every sink de-duplicates by reading idempotency key, which makes the whole
pipeline effectively exactly-once.  Rows older than `horizon_ms` (default 7 days, longer than
any gateway keeps a batch) are pruned.

Readings are de-duplicated in memory by `cloud.ingest.recent.RecentKeys`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BatchLedger", "BatchResult"]

log = logging.getLogger("fieldlink.cloud.ingest")

_U63 = 2**63


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer a produced batch got; a retry of the batch gets it again."""

    batch_id: str
    readings: int
    events: int
    duplicate_readings: int
    rejected: int

    def as_json(self, duplicate: bool) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "readings": self.readings, "events": self.events,
                "duplicate_readings": self.duplicate_readings, "rejected": self.rejected,
                "duplicate": duplicate}


def _signed(sequence: int) -> int:
    # SQLite integers are signed 64-bit; batch sequences are u64
    return sequence - 2**64 if sequence >= _U63 else sequence


_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway_id TEXT NOT NULL, sequence INTEGER NOT NULL, produced_ms INTEGER NOT NULL,
    readings INTEGER NOT NULL, events INTEGER NOT NULL, duplicate_readings INTEGER NOT NULL,
    rejected INTEGER NOT NULL, PRIMARY KEY (gateway_id, sequence)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_age ON batches (produced_ms);
"""


class BatchLedger:
    """`async with BatchLedger(path) as ledger:`; `lookup` is synchronous (a point read),
    `record` commits in a writer thread, many batches per transaction."""

    def __init__(self, path: str | os.PathLike[str], *, horizon_ms: int = 7 * 86_400_000,
                 cache_size: int = 4096) -> None:
        self.path = Path(path)
        self.horizon_ms = horizon_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._read: sqlite3.Connection | None = None
        self._write: sqlite3.Connection | None = None
        self._cache: OrderedDict[tuple[str, int], BatchResult] = OrderedDict()
        self._cache_size = cache_size
        self._pending: list[tuple[str, int, int, BatchResult, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    async def __aenter__(self) -> BatchLedger:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def open_() -> None:
            self._write = self._connect()
            self._write.executescript(_SCHEMA)
            self._read = self._connect()

        await loop.run_in_executor(self._executor, open_)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for conn in (self._read, self._write):
            if conn is not None:
                await loop.run_in_executor(self._executor, conn.close)
        self._read = self._write = None
        self._executor.shutdown(wait=True)

    def lookup(self, gateway_id: str, sequence: int) -> BatchResult | None:
        """The recorded answer of the batch, or None if it was never produced."""
        hit = self._cache.get((gateway_id, sequence))
        if hit is not None:
            return hit
        if self._read is None:
            raise RuntimeError("the ledger is closed")
        row = self._read.execute(
            "SELECT readings, events, duplicate_readings, rejected FROM batches "
            "WHERE gateway_id = ? AND sequence = ?", (gateway_id, _signed(sequence))).fetchone()
        if row is None:
            return None
        result = BatchResult(f"{gateway_id}:{sequence}", *row)
        self._remember(gateway_id, sequence, result)
        return result

    def _remember(self, gateway_id: str, sequence: int, result: BatchResult) -> None:
        self._cache[(gateway_id, sequence)] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def record(self, gateway_id: str, sequence: int, now_ms: int,
                     result: BatchResult) -> None:
        """Commit the batch's row (durably, synchronous=FULL); returns once committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((gateway_id, sequence, now_ms, result, fut))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="ledger-commit")
        await fut
        self._remember(gateway_id, sequence, result)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [(gw, _signed(seq), now, r.readings, r.events, r.duplicate_readings,
                         r.rejected) for gw, seq, now, r, _ in batch]
                try:
                    await loop.run_in_executor(self._executor, self._insert, rows)
                except sqlite3.Error as e:
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._flushing = None

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        assert self._write is not None
        conn = self._write
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def prune(self, now_ms: int) -> int:
        """Forget batches produced more than `horizon_ms` ago; how many were removed."""
        def delete() -> int:
            assert self._write is not None
            return self._write.execute("DELETE FROM batches WHERE produced_ms < ?",
                                       (now_ms - self.horizon_ms,)).rowcount

        return await asyncio.get_running_loop().run_in_executor(self._executor, delete)
