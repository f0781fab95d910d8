"""De-duplication state of ingest: batches by (gateway, sequence), readings by identity.

`BatchLedger` — durable (SQLite, `<cloud.data_dir>/ingest-ledger.sqlite3`).  A batch is
recorded only after the bus acknowledged every record of it, together with the answer it got,
so a retried batch either was produced (its row exists: answered `"duplicate": true` with the
first answer's counts) or was not (no row: produced now).  A crash between the bus's
acknowledgement and the row's commit means the retry is produced a second time: the bus is
at-least-once, and every sink de-duplicates by reading idempotency key, which makes the whole
pipeline effectively exactly-once.  Rows older than `horizon_ms` (default 7 days, longer than
any gateway keeps a batch) are pruned.

`RecentKeys` — in memory, per gateway.  Drops readings re-sent in a *different* batch (a
gateway that crashed after sending re-batches its unacknowledged rows under new sequence
numbers) and readings repeated inside one batch.  Identity is the one of
`edge.model.Reading.idempotency_key` (device, measurement and seq — or sensor time and value
when there is no seq), kept as a 64-bit hash: ~70 bytes per key; `reading_identity` computes
it from a `Reading`, `column_identities` from `edge.codec.scan_batch` columns (the same
hashes).  `all_new` answers the common question "is every reading of this batch new?"
without a `Reading` object; `split` picks the new readings out when some are not.  Horizon: the last
`capacity / 2` to `capacity` readings of each gateway (two generations of capacity/2; default
capacity 50,000: 25+ batches of 1,000, well past the few a gateway re-sends after a crash;
small tables also stay in the CPU cache, which the per-reading lookups feel).  Keys are
remembered only once their batch was produced, so a batch that failed (503) is not mistaken
for a duplicate when retried.  The state is lost on restart: the sinks' key de-duplication
is the guarantee, this only saves bus and sink work.  A 64-bit hash collision would drop a
reading; at 5x10^4 keys per gateway the chance is ~10^-15 per reading.
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

from edge.codec import Columns
from edge.codec.columns import expand
from edge.model import FLAG_TS_MISSING, Reading

__all__ = ["BatchLedger", "BatchResult", "RecentKeys", "column_identities", "reading_identity"]

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


def _identity(device_id: str, measurement: str, seq: int | None, flags: int,
              received_ms: int, sensor_ts_ms: int | None, ts_ms: int, value: float) -> int:
    if seq is not None:
        return hash((device_id, measurement, seq))
    if flags & FLAG_TS_MISSING:
        return hash((device_id, measurement, "r", received_ms, float(value).hex()))
    sensor_time = sensor_ts_ms if sensor_ts_ms is not None else ts_ms
    return hash((device_id, measurement, "t", sensor_time, float(value).hex()))


def reading_identity(r: Reading) -> int:
    """64-bit hash of the identity `Reading.idempotency_key` digests (same equality)."""
    return _identity(r.device_id, r.measurement, r.seq, r.flags, r.received_ms,
                     r.sensor_ts_ms, r.ts_ms, r.value)


def column_identities(cols: Columns) -> list[int]:
    """`reading_identity` of every row of `edge.codec.scan_batch` columns, in row order."""
    devices = expand(cols.run_device, cols.lengths)
    measurements = expand([cols.contexts[c][0] for c in cols.run_context], cols.lengths)
    if cols.seq_presence is True:
        # every reading has a seq (the usual case): tuples built and hashed in C
        return list(map(hash, zip(devices, measurements, cols.seq)))
    return list(map(_identity, devices, measurements, cols.spread(cols.seq_presence, cols.seq),
                    cols.flags, cols.received, cols.sensor_ts(), cols.ts, cols.values))


class RecentKeys:
    """Recently produced reading identities per gateway; see the module docstring."""

    def __init__(self, capacity: int = 50_000) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        # sets of ints: `set.isdisjoint(list)` and `set.update(list)` are plain C loops over
        # the batch (a dict's key view goes through the generic containment protocol, 4x
        # slower).  Sets are tracked by the collector, but a few per gateway cost it nothing
        # next to what a batch allocates.
        self._generations: dict[str, tuple[set[int], set[int]]] = {}

    def split(self, gateway_id: str,
              readings: Sequence[Reading]) -> tuple[list[Reading], list[int], int]:
        """(readings not seen before, their identities, number dropped as duplicates)."""
        seqs = [r.seq for r in readings]
        if None in seqs:
            ids = [hash((r.device_id, r.measurement, r.seq)) if r.seq is not None
                   else reading_identity(r) for r in readings]
        else:
            # every reading has a seq (the usual case): tuples built and hashed in C
            ids = list(map(hash, zip([r.device_id for r in readings],
                                     [r.measurement for r in readings], seqs)))
        distinct = set(ids)
        gens = self._generations.get(gateway_id)
        known = (gens[0] & distinct) | (gens[1] & distinct) if gens else set()
        if not known and len(distinct) == len(ids):
            return list(readings), ids, 0
        fresh: list[Reading] = []
        fresh_ids: list[int] = []
        seen = set(known)
        for r, i in zip(readings, ids):
            if i not in seen:
                seen.add(i)
                fresh.append(r)
                fresh_ids.append(i)
        return fresh, fresh_ids, len(readings) - len(fresh)

    def all_new(self, gateway_id: str, ids: Sequence[int]) -> bool:
        """True when no identity in `ids` is remembered for the gateway and none repeats:
        `split` would keep every reading.  A few C loops over the ids, no Reading."""
        if len(set(ids)) != len(ids):
            return False
        gens = self._generations.get(gateway_id)
        return gens is None or (gens[0].isdisjoint(ids) and gens[1].isdisjoint(ids))

    def remember(self, gateway_id: str, ids: Sequence[int]) -> None:
        gens = self._generations.get(gateway_id)
        if gens is None:
            gens = self._generations[gateway_id] = (set(), set())
        current, _ = gens
        current.update(ids)
        if len(current) >= self.capacity // 2:
            # the older generation is forgotten: memory stays within `capacity` keys
            self._generations[gateway_id] = (set(), current)

    def size(self, gateway_id: str) -> int:
        gens = self._generations.get(gateway_id)
        return len(gens[0]) + len(gens[1]) if gens else 0
