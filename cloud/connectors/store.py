"""Connector state that survives restarts: cursors and the ids already delivered (SQLite).

    store = ConnectorStore(path)
    cursor = store.cursor("github:acme/widgets:commits")        # {} when none yet
    new = store.unseen("github:acme/widgets:commits", ids)      # ids not delivered before
    store.commit("github:...", cursor={...}, delivered=ids)     # one durable transaction

Protocol: a connector produces items to the bus FIRST and records them here afterwards, so a
crash in between re-delivers those items (at-least-once) and never skips one.  `unseen`
filters what was recorded, which removes the usual duplicates — overlapping `since` windows,
a webhook retried by its sender — without a downstream step.

Bounds: the delivered ids of a scope are kept newest-first up to `keep_ids` (default
100,000); older ones are forgotten (an item older than that window and re-sent would be
delivered again).  synchronous=FULL: a recorded cursor survives a power cut.  Blocking;
callers use a worker thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ConnectorStore"]

_CHUNK = 500


class ConnectorStore:
    def __init__(self, path: str | os.PathLike[str], *, keep_ids: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_ids = keep_ids
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript("""
            CREATE TABLE IF NOT EXISTS cursors (scope TEXT PRIMARY KEY, value TEXT NOT NULL,
                                                updated_ms INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS delivered (scope TEXT NOT NULL, id TEXT NOT NULL,
                                                  seq INTEGER NOT NULL,
                                                  PRIMARY KEY (scope, id)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS delivered_age ON delivered (scope, seq);
        """)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def cursor(self, scope: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT value FROM cursors WHERE scope = ?",
                                     (scope,)).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def unseen(self, scope: str, ids: Iterable[str]) -> list[str]:
        """`ids` (in order, repeats removed) that were not delivered before."""
        ids = list(dict.fromkeys(ids))
        seen: set[str] = set()
        with self._lock:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                seen.update(r[0] for r in self._conn.execute(
                    f"SELECT id FROM delivered WHERE scope = ? AND id IN ({marks})",
                    [scope, *chunk]))
        return [i for i in ids if i not in seen]

    def commit(self, scope: str, *, cursor: dict[str, Any] | None = None,
               delivered: Iterable[str] = ()) -> None:
        """Record a new cursor and/or delivered ids, in one durable transaction."""
        ids = list(delivered)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if cursor is not None:
                    conn.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)",
                                 (scope, json.dumps(cursor, sort_keys=True),
                                  int(time.time() * 1000)))
                if ids:
                    top = conn.execute("SELECT coalesce(max(seq), 0) FROM delivered WHERE "
                                       "scope = ?", (scope,)).fetchone()[0]
                    conn.executemany("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)",
                                     [(scope, i, top + n + 1) for n, i in enumerate(ids)])
                    conn.execute("DELETE FROM delivered WHERE scope = ? AND seq <= ?",
                                 (scope, top + len(ids) - self.keep_ids))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def scopes(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT scope FROM cursors ORDER BY 1")]
