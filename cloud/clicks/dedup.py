"""The collector's memory of event ids: bounded, persistent, shared by its requests.

    async with EventIds(path, capacity=2_000_000) as ids:
        claim = await ids.claim(["e1", "e2"])     # {id: "new" | "seen"}; new ones are held
        ...                                       # produce the new ones, then
        await ids.release(claim_ids, produced=True)   # remember them (durably)

Guarantees:

* An id is remembered only after its event was acknowledged by the bus (`release(...,
  produced=True)`), so a batch that failed with 503 is not mistaken for a duplicate when the
  browser retries it.
* Concurrent requests carrying the same id (a retry racing its original) do not both produce
  it: the second `claim` waits for the first request's outcome; if that failed, the id is
  claimed anew.
* Bounded: ids are kept in insertion order and the oldest beyond `capacity` are forgotten
  (one SQLite row each, ~60-100 bytes; 2 million ids is ~200 MB).  An event re-sent after its
  id was forgotten is produced again: downstream windows tolerate duplicates only within
  this horizon, so size `capacity` above a few hours of traffic.
* Durable: `release` commits (WAL, synchronous=NORMAL: a power cut may forget the last
  transactions, which means re-producing those events — at-least-once, never a loss).

SQLite runs in one worker thread; callers never block the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["EventIds"]

_CHUNK = 500


class EventIds:
    def __init__(self, path: str | os.PathLike[str], *, capacity: int = 2_000_000,
                 prune_every: int = 10_000) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.prune_every = prune_every
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="click-ids")
        self._conn: sqlite3.Connection | None = None
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._since_prune = 0
        self.stats = {"remembered": 0, "forgotten": 0}

    async def __aenter__(self) -> Self:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
        self._conn = conn

    async def _run(self, fn: object, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, fn, *args)  # type: ignore[arg-type]

    # -- the protocol ------------------------------------------------------------------------

    async def claim(self, ids: Sequence[str]) -> dict[str, str]:
        """"new" (now held by the caller, who must `release` it) or "seen", per distinct id."""
        out: dict[str, str] = {}
        pending = list(dict.fromkeys(ids))
        while pending:
            waits = [(i, self._inflight[i]) for i in pending if i in self._inflight]
            free = [i for i in pending if i not in self._inflight]
            if free:
                seen = await self._run(self._lookup, free)
                assert isinstance(seen, set)
                loop = asyncio.get_running_loop()
                for i in free:
                    if i in seen:
                        out[i] = "seen"
                    elif i in self._inflight:
                        # claimed by another request while we looked: decide after it
                        waits.append((i, self._inflight[i]))
                    else:
                        self._inflight[i] = loop.create_future()
                        out[i] = "new"
            pending = []
            for i, fut in waits:
                produced = await asyncio.shield(fut)
                if produced:
                    out[i] = "seen"
                else:
                    pending.append(i)  # the other request failed: try to claim it ourselves
        return out

    async def release(self, ids: Iterable[str], *, produced: bool) -> None:
        """End a claim: remember the ids when their events were produced, else forget it."""
        ids = list(ids)
        try:
            if produced and ids:
                await self._run(self._remember, ids)
        finally:
            for i in ids:
                fut = self._inflight.pop(i, None)
                if fut is not None and not fut.done():
                    fut.set_result(produced)

    async def contains(self, event_id: str) -> bool:
        seen = await self._run(self._lookup, [event_id])
        assert isinstance(seen, set)
        return event_id in seen

    async def count(self) -> int:
        def n() -> int:
            assert self._conn is not None
            return int(self._conn.execute("SELECT count(*) FROM seen").fetchone()[0])

        result = await self._run(n)
        assert isinstance(result, int)
        return result

    # -- SQLite (worker thread) --------------------------------------------------------------

    def _lookup(self, ids: list[str]) -> set[str]:
        assert self._conn is not None
        seen: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            seen.update(r[0] for r in self._conn.execute(
                f"SELECT id FROM seen WHERE id IN ({marks})", chunk))
        return seen

    def _remember(self, ids: list[str]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO seen (id) VALUES (?)", ((i,) for i in ids))
            self._since_prune += len(ids)
            if self._since_prune >= self.prune_every:
                self._since_prune = 0
                self._prune(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats["remembered"] += len(ids)

    def _prune(self, conn: sqlite3.Connection) -> None:
        top = conn.execute("SELECT max(rowid) FROM seen").fetchone()[0] or 0
        cur = conn.execute("DELETE FROM seen WHERE rowid <= ?", (top - self.capacity,))
        self.stats["forgotten"] += cur.rowcount
