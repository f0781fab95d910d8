"""The CDC connector's durable state: one small SQLite file per slot.

    state = ConnectorState(path)
    state.snapshot_done, state.last_lsn, state.tables      # read at start
    state.save(last_lsn=..., tables=..., snapshot_done=True)  # one transaction

What it holds and why:

* `slot` — the replication slot this state belongs to.  A state file whose slot differs from
  the configured one is refused (it would resume another stream).
* `snapshot_done` — the initial snapshot was produced completely.  Until it is, a restart
  drops the slot and snapshots again (the exported snapshot died with the connection).
* `last_lsn` — the end LSN of the last transaction whose every event Kafka acknowledged.
  It is written BEFORE the server is told (`flush_lsn` feedback), so after a crash the
  server may resend transactions the state already has: those are skipped by LSN.  A crash
  between Kafka's acknowledgement and this write re-produces the transaction (at-least-once;
  the sink is idempotent).
* `tables` — the captured tables' columns as last announced, to tell a schema change
  (ALTER TABLE) from the server's routine Relation messages, across restarts too.

synchronous=FULL: a saved LSN survives a power cut, so the server is never told of progress
the state could forget.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["ConnectorState", "StateMismatch"]


class StateMismatch(RuntimeError):
    """The state file belongs to another slot."""


class ConnectorState:
    def __init__(self, path: str | os.PathLike[str], slot: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, "
                           "value TEXT NOT NULL)")
        values = dict(self._conn.execute("SELECT key, value FROM state").fetchall())
        stored_slot = values.get("slot")
        if stored_slot is not None and stored_slot != slot:
            raise StateMismatch(f"{self.path} holds the state of slot {stored_slot!r}, not "
                                f"{slot!r}: move it away or configure that slot")
        self.slot = slot
        self.snapshot_done = values.get("snapshot_done") == "1"
        self.last_lsn = int(values.get("last_lsn", "0"))
        self.tables: dict[str, list[list[Any]]] = json.loads(values.get("tables", "{}"))

    def save(self, *, last_lsn: int | None = None, snapshot_done: bool | None = None,
             tables: dict[str, list[list[Any]]] | None = None) -> None:
        """Write the given fields (others unchanged) in one durable transaction."""
        rows = [("slot", self.slot)]
        if last_lsn is not None:
            rows.append(("last_lsn", str(last_lsn)))
        if snapshot_done is not None:
            rows.append(("snapshot_done", "1" if snapshot_done else "0"))
        if tables is not None:
            rows.append(("tables", json.dumps(tables, separators=(",", ":"))))
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                                   rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        if last_lsn is not None:
            self.last_lsn = last_lsn
        if snapshot_done is not None:
            self.snapshot_done = snapshot_done
        if tables is not None:
            self.tables = tables

    def reset(self) -> None:
        """Forget everything (a new snapshot follows)."""
        self._conn.execute("DELETE FROM state")
        self.snapshot_done = False
        self.last_lsn = 0
        self.tables = {}

    def close(self) -> None:
        self._conn.close()
