"""`AlertStore`: the alert service's SQLite file — engine snapshot, outbox, delivery status.

Synchronous and thread-safe (one lock around every call).  The service runs most calls on
one dedicated thread, in submission order, and commits of transitions alone on the event loop
(see `gateway.alerts.outbox`).  WAL mode.  Tables:

* ``snapshot`` — one row: the last full engine snapshot (msgpack, zstd-compressed), the
  time it was saved and ``covers_id``, the highest outbox id whose transition it includes.
* ``outbox`` — every alert transition, in commit order (``id`` AUTOINCREMENT: never reused,
  also after pruning).  ``record`` is the JSON transition record ``{"transition", "at_ms",
  **AlertTransition.body}``.
* ``delivery`` — one row per (transition, channel): ``pending`` until the channel took it,
  then ``delivered``, ``dead`` (refused for good, e.g. a webhook answered 4xx; the error is
  kept) or ``superseded`` (a scheduled retained-message clear made moot by a newer state).
  ``not_before_ms`` delays a row (retained-message clears).

Durability: `commit` (transitions + their delivery rows, optionally the snapshot) runs in one
transaction with ``synchronous=FULL`` — it is on disk when the call returns, before any
channel delivers.  `save_snapshot` writes a snapshot on its own, also durably, with the
outbox id it covers given by the caller (the last one committed when the engine state was
copied).  Status updates (`mark`) use ``synchronous=NORMAL``: a crash can lose the
last ones, and then a transition is delivered again (at-least-once), never lost.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import zstandard

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    saved_ms INTEGER NOT NULL,
    covers_id INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key TEXT NOT NULL,
    transition TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox (dedup_key, id);
CREATE TABLE IF NOT EXISTS delivery (
    outbox_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (outbox_id, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivery_pending ON delivery (channel, outbox_id)
    WHERE status = 'pending';
"""

PENDING, DELIVERED, DEAD, SUPERSEDED = "pending", "delivered", "dead", "superseded"


@dataclass(frozen=True, slots=True)
class Entry:
    """One transition to commit: its record and the channels (with not-before times) that
    must deliver it."""

    record: dict[str, Any]
    channels: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Pending:
    """A delivery still to do, as loaded at start or returned by `commit`."""

    outbox_id: int
    channel: str
    record: dict[str, Any]
    not_before_ms: int = 0
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Mark:
    outbox_id: int
    channel: str
    status: str
    attempts: int
    error: str | None = None


@dataclass
class Loaded:
    snapshot: dict[str, Any] | None
    covers_id: int
    #: transition records committed after the snapshot, in commit order
    replay: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    #: outbox id of a pending retained clear -> later records of its dedup key
    newer: dict[int, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)


def encode_snapshot(snap: dict[str, Any]) -> bytes:
    """msgpack + zstd; the same bytes as `msgpack.packb(snap)` compressed, but packed piece by
    piece: one `packb` of a 10,000-device snapshot is a single C call that holds the GIL for
    ~100 ms, and the event loop (on another thread) would wait that long.  Large `bytes`
    values (window state's value arrays, megabytes each) are not copied into the packer:
    their header is written here and the object itself joins the output."""
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[bytes] = []
    _pack_parts(snap, packer, parts, 0)
    # compressed as a stream (the frame still records the content size, so a one-shot
    # `decompress` reads it): joining the parts first would hold two more copies of it all
    comp = zstandard.ZstdCompressor(level=3).compressobj(size=sum(map(len, parts)))
    out: list[bytes] = []
    run: list[bytes] = []
    run_len = 0
    for part in parts:
        if len(part) >= _BIN_BY_REFERENCE:
            if run:
                out.append(comp.compress(b"".join(run)))
                run, run_len = [], 0
            out.append(comp.compress(part))
        else:
            run.append(part)
            run_len += len(part)
            if run_len >= 65536:
                out.append(comp.compress(b"".join(run)))
                run, run_len = [], 0
    if run:
        out.append(comp.compress(b"".join(run)))
    out.append(comp.flush())
    return b"".join(out)


#: bytes at least this long are passed through instead of copied by the packer
_BIN_BY_REFERENCE = 4096


def _pack_parts(obj: Any, packer: msgpack.Packer, out: list[bytes], depth: int) -> None:
    if obj.__class__ is dict and depth < 4:
        out.append(packer.pack_map_header(len(obj)))
        for k, v in obj.items():
            out.append(packer.pack(k))
            _pack_parts(v, packer, out, depth + 1)
    elif obj.__class__ is list and len(obj) > 32:
        out.append(packer.pack_array_header(len(obj)))
        for v in obj:
            _pack_parts(v, packer, out, depth + 1)
    elif obj.__class__ is bytes and len(obj) >= _BIN_BY_REFERENCE:
        n = len(obj)  # msgpack bin 16 / bin 32 header, as packb writes it
        out.append(b"\xc5" + n.to_bytes(2, "big") if n < 0x10000 else b"\xc6" + n.to_bytes(4, "big"))
        out.append(obj)
    else:
        out.append(packer.pack(obj))


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    data = zstandard.ZstdDecompressor().decompress(blob)
    snap = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(snap, dict):
        raise ValueError("alert snapshot is not a mapping")
    return snap


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: AlertStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


class AlertStore:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        """`readonly` opens an existing file without changing it (the CLI, while the gateway
        runs); FileNotFoundError if there is none."""
        self.path = str(path)
        self._lock = threading.Lock()
        #: the highest outbox id committed (ids are never reused)
        self.last_id = 0
        self._pending_last = 0
        if readonly:
            if not Path(self.path).is_file():
                raise FileNotFoundError(self.path)
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._sync: str | None = None
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise ValueError(f"{self.path}: alert state schema {version} is newer than this "
                             f"gateway understands ({SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._sync = None
        self.last_id = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()[0]

    @_locked
    def close(self) -> None:
        self._db.close()

    def _synchronous(self, mode: str) -> None:
        if self._sync != mode:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync = mode

    # -- start ------------------------------------------------------------------------------

    @_locked
    def load(self) -> Loaded:
        """The snapshot, the transitions to replay onto it, and every pending delivery."""
        db = self._db
        row = db.execute("SELECT covers_id, data FROM snapshot WHERE id = 1").fetchone()
        snapshot, covers = (None, 0) if row is None else (decode_snapshot(row[1]), row[0])
        replay = [json.loads(r) for (r,) in db.execute(
            "SELECT record FROM outbox WHERE id > ? ORDER BY id", (covers,))]
        pending = [Pending(oid, ch, json.loads(rec), nb, att) for oid, ch, rec, nb, att in
                   db.execute("SELECT d.outbox_id, d.channel, o.record, d.not_before_ms, "
                              "d.attempts FROM delivery d JOIN outbox o ON o.id = d.outbox_id "
                              "WHERE d.status = 'pending' ORDER BY d.outbox_id")]
        loaded = Loaded(snapshot, covers, replay, pending)
        for p in pending:
            if p.not_before_ms:
                loaded.newer[p.outbox_id] = [(i, json.loads(r)) for i, r in db.execute(
                    "SELECT id, record FROM outbox WHERE dedup_key = ? AND id > ? ORDER BY id",
                    (p.record["dedup_key"], p.outbox_id))]
        return loaded

    # -- writes -----------------------------------------------------------------------------

    @_locked
    def commit(self, entries: Sequence[Entry], snapshot: bytes | None = None,
               now_ms: int | None = None) -> list[Pending]:
        """Store `entries` (and the snapshot that includes them) in one durable transaction.
        Returns the deliveries created, in outbox order."""
        out = self._write(entries, snapshot, now_ms)
        self._finish()
        return out

    def begin_commit(self, entries: Sequence[Entry], now_ms: int | None = None
                     ) -> list[Pending]:
        """`commit` in two steps, so the fsync can run on another thread: this one writes the
        rows (no disk wait) and keeps the store locked until `finish_commit` (on any thread)
        made them durable or failed.  Returns the deliveries, valid once finished."""
        self._lock.acquire()
        try:
            return self._write(entries, None, now_ms)
        except BaseException:
            self._lock.release()
            raise

    def finish_commit(self) -> None:
        try:
            self._finish()
        finally:
            self._lock.release()

    def _write(self, entries: Sequence[Entry], snapshot: bytes | None, now_ms: int | None
               ) -> list[Pending]:
        now = _now_ms() if now_ms is None else now_ms
        db = self._db
        self._synchronous("FULL")
        out: list[Pending] = []
        last = self.last_id
        db.execute("BEGIN IMMEDIATE")
        try:
            if entries:
                # Ids are assigned here so that the rows go in as a few multi-row INSERTs:
                # every statement step releases and re-takes the GIL, and with the event loop
                # busy each re-take can wait a thread switch interval.
                row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
                                 ).fetchone()
                oid = row[0] if row else 0
                outbox_rows: list[tuple[Any, ...]] = []
                delivery_rows: list[tuple[Any, ...]] = []
                for e in entries:
                    oid += 1
                    rec = e.record
                    outbox_rows.append((oid, rec["dedup_key"], rec["transition"],
                                        int(rec["at_ms"]), json.dumps(rec, separators=(",", ":"))))
                    for channel, not_before in e.channels:
                        delivery_rows.append((oid, channel, not_before, now))
                        out.append(Pending(oid, channel, rec, not_before))
                self._insert_many("outbox (id, dedup_key, transition, at_ms, record)",
                                  outbox_rows)
                self._insert_many("delivery (outbox_id, channel, not_before_ms, updated_ms)",
                                  delivery_rows)
                last = oid
            if snapshot is not None:
                covers = db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
                db.execute("INSERT OR REPLACE INTO snapshot (id, saved_ms, covers_id, data) "
                           "VALUES (1, ?, ?, ?)", (now, covers, snapshot))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._pending_last = last
        return out

    def _finish(self) -> None:
        try:
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.last_id = self._pending_last

    @_locked
    def save_snapshot(self, snapshot: bytes, covers_id: int, now_ms: int | None = None
                      ) -> None:
        """Store a snapshot that includes the transitions up to outbox id `covers_id`
        (durable; replaces the previous one)."""
        now = _now_ms() if now_ms is None else now_ms
        self._synchronous("FULL")
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO snapshot (id, saved_ms, covers_id, data) "
                             "VALUES (1, ?, ?, ?)", (now, covers_id, snapshot))

    def _insert_many(self, into: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        width = len(rows[0])
        per = max(1, 30_000 // width)  # under SQLite's limit of bound variables
        for i in range(0, len(rows), per):
            chunk = rows[i:i + per]
            marks = ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))
            self._db.execute(f"INSERT INTO {into} VALUES {marks}",
                             [v for r in chunk for v in r])

    @_locked
    def mark(self, marks: Iterable[Mark], now_ms: int | None = None) -> None:
        now = _now_ms() if now_ms is None else now_ms
        self._synchronous("NORMAL")
        with self._db:
            self._db.executemany(
                "UPDATE delivery SET status = ?, attempts = ?, error = ?, updated_ms = ? "
                "WHERE outbox_id = ? AND channel = ?",
                [(m.status, m.attempts, m.error, now, m.outbox_id, m.channel) for m in marks])

    @_locked
    def prune(self, *, older_than_ms: int, keep_rows: int) -> int:
        """Forget finished transitions (no pending delivery, included in the snapshot) older
        than `older_than_ms` or beyond the newest `keep_rows`.  Returns rows removed."""
        db = self._db
        row = db.execute("SELECT covers_id FROM snapshot WHERE id = 1").fetchone()
        covers = row[0] if row else 0
        cutoff = db.execute("SELECT COALESCE(MAX(id), 0) - ? FROM outbox",
                            (keep_rows,)).fetchone()[0]
        self._synchronous("NORMAL")
        with db:
            doomed = [oid for (oid,) in db.execute(
                "SELECT o.id FROM outbox o WHERE o.id <= ? AND (o.at_ms < ? OR o.id <= ?) "
                "AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.outbox_id = o.id "
                "AND d.status = 'pending') LIMIT 5000", (covers, older_than_ms, cutoff))]
            db.executemany("DELETE FROM delivery WHERE outbox_id = ?", [(i,) for i in doomed])
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in doomed])
        return len(doomed)

    # -- reads ------------------------------------------------------------------------------

    @_locked
    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest transitions, newest first, each with its delivery status per channel."""
        db = self._db
        rows = db.execute("SELECT id, record FROM outbox ORDER BY id DESC LIMIT ?",
                          (limit,)).fetchall()
        out = []
        for oid, rec in rows:
            deliveries = {ch: {"status": st, "attempts": att, "error": err,
                               "updated_ms": upd}
                          for ch, st, att, err, upd in db.execute(
                              "SELECT channel, status, attempts, error, updated_ms FROM "
                              "delivery WHERE outbox_id = ?", (oid,))}
            out.append({"id": oid, **json.loads(rec), "deliveries": deliveries})
        return out

    @_locked
    def counts(self) -> dict[str, dict[str, int]]:
        """channel -> status -> rows (for the CLI and tests)."""
        out: dict[str, dict[str, int]] = {}
        for ch, st, n in self._db.execute(
                "SELECT channel, status, COUNT(*) FROM delivery GROUP BY channel, status"):
            out.setdefault(ch, {})[st] = n
        return out
