"""The dashboard's own state: sessions and cloud-side alert acknowledgements, in SQLite.

    store = WebStore(cfg.cloud.data_dir / "web.sqlite3")   # opened by WebService
    await store.put_session(session); store.session(token_hash, now_ms)
    await store.record_ack(ack); store.acks()

One file (WAL) that one web process owns.  Reads come from an in-memory mirror loaded at
open (a request never waits on disk); writes go to SQLite first, in a worker thread, and
reach the mirror only once committed, so a login or an acknowledgement that was answered
survives a crash or restart.  Expired sessions are deleted at open and by `purge`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from cloud.web.board import AckRecord
from cloud.web.sessions import Session

__all__ = ["WebStore"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sessions (
        token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL,
        created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS acks (
        alert_id TEXT NOT NULL, incarnation INTEGER NOT NULL, by TEXT NOT NULL,
        at_ms INTEGER NOT NULL, PRIMARY KEY (alert_id, incarnation))""",
)


class WebStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._sessions: dict[str, Session] = {}
        self._acks: dict[tuple[str, int], AckRecord] = {}
        # one writer at a time: the connection is shared with the worker thread
        self._lock = asyncio.Lock()

    def open(self, now_ms: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("DELETE FROM sessions WHERE expires_ms <= ?", (now_ms,))
        self._sessions = {row[0]: Session(*row) for row in conn.execute(
            "SELECT token_hash, user, csrf, created_ms, expires_ms FROM sessions")}
        self._acks = {(row[0], row[1]): AckRecord(*row) for row in conn.execute(
            "SELECT alert_id, incarnation, by, at_ms FROM acks")}
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the web store is not open")
        return self._conn

    async def _write(self, sql: str, args: tuple[object, ...]) -> int:
        conn = self._c()
        async with self._lock:
            return await asyncio.to_thread(lambda: conn.execute(sql, args).rowcount)

    # -- sessions ----------------------------------------------------------------------------

    def session(self, token_hash: str, now_ms: int) -> Session | None:
        s = self._sessions.get(token_hash)
        if s is None or s.expired(now_ms):
            return None
        return s

    async def put_session(self, s: Session) -> None:
        await self._write("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                          (s.token_hash, s.user, s.csrf, s.created_ms, s.expires_ms))
        self._sessions[s.token_hash] = s

    async def delete_session(self, token_hash: str) -> None:
        await self._write("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        self._sessions.pop(token_hash, None)

    async def purge(self, now_ms: int, *, users: set[str] | None = None) -> int:
        """Delete expired sessions, and those of users not in `users` (when given)."""
        gone = [h for h, s in self._sessions.items()
                if s.expired(now_ms) or (users is not None and s.user not in users)]
        for h in gone:
            await self.delete_session(h)
        return len(gone)

    def session_count(self) -> int:
        return len(self._sessions)

    # -- acknowledgements --------------------------------------------------------------------

    async def record_ack(self, ack: AckRecord) -> bool:
        """Persist `ack`; False when that incarnation was acknowledged already."""
        n = await self._write("INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?)",
                              (ack.alert_id, ack.incarnation, ack.by, ack.at_ms))
        if n:
            self._acks[(ack.alert_id, ack.incarnation)] = ack
        return bool(n)

    def acks(self) -> list[AckRecord]:
        return list(self._acks.values())
