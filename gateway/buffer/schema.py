"""The buffer's SQLite schema, its versioned migrations, and how a connection is opened.

`PRAGMA user_version` holds the schema version.  `MIGRATIONS[i]` takes a file from version i
to i+1, inside one transaction, so an interrupted upgrade leaves the old version intact.  A
new file is built by running every step from version 0: a fresh file and an upgraded one
have the same schema by construction.  Never edit a released step; append a new one.

Tables (version 2):

* `readings` — raw readings, one row each.  `dk` is the de-duplication key: 6 bytes of the
  sensor's own time (ms, big-endian) then the 16-byte `Reading.idempotency_key()`.  The time
  prefix keeps the unique index append-mostly (new keys land on its last pages), which is what
  keeps bytes written per commit small; a random 16-byte key would dirty one index page per
  reading.  Readings without a sensor time but with a sequence number get prefix 0 so that
  their redeliveries still match.  Interned strings (device, measurement, unit, location)
  live in `series`.
* `events` — aggregates and alerts (`prio` 1/2), body as msgpack.
* `claims` — one row per claim in flight: `seq` (claim id = batch sequence number),
  creation time, row counts, the claimed raw rows as packed id ranges, opaque `meta` for
  the uplink.  Claiming raw readings writes no reading row: stamping a claim id on each row
  would grow every row of a full page (splitting it) and rewrite every page through the WAL.
  The ranges stay exact because nothing but the claim's ack deletes a row inside them, and
  new rows always get an id above the highest present one, so above every range.
  `events.claim_id` marks claimed aggregates/alerts.
* `seen` — de-duplication keys of rows already acknowledged by the cloud, pruned by age and
  count, so a redelivery after the uplink sent the original is still recognised.
* `deadletter` — refused input with its raw bytes.
* `counters` — persistent counters, updated in the same transaction as the rows they count.
* `meta` — `next_seq` and the `max_bytes` the writer runs with (shown by the CLI).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable

from gateway.buffer.settings import BufferSettings, Synchronous
from gateway.errors import BufferBusy, BufferCorrupt

log = logging.getLogger("fieldlink.gateway.buffer")

# -- version 1: the first released format (no claims; the uplink deleted what it read) -------
V1 = (
    """CREATE TABLE series (
        id INTEGER PRIMARY KEY, device TEXT NOT NULL, measurement TEXT NOT NULL,
        unit TEXT NOT NULL, facility TEXT, line TEXT, zone TEXT)""",
    """CREATE TABLE readings (
        id INTEGER PRIMARY KEY, dk BLOB NOT NULL, rx_ms INTEGER NOT NULL,
        series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value REAL NOT NULL, quality,
        battery REAL, seq INTEGER, sensor_ts_ms INTEGER, flags INTEGER NOT NULL DEFAULT 0)""",
    "CREATE UNIQUE INDEX readings_dk ON readings(dk)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY, dk BLOB NOT NULL, prio INTEGER NOT NULL,
        rx_ms INTEGER NOT NULL, series INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
        body BLOB NOT NULL)""",
    "CREATE UNIQUE INDEX events_dk ON events(dk)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE deadletter (
        id INTEGER PRIMARY KEY, t_ms INTEGER NOT NULL, source TEXT NOT NULL,
        peer TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, raw BLOB NOT NULL)""",
)

# -- version 2: claims, dedup keys of sent rows, persistent batch sequence ------------------
V2 = (
    # raw readings are claimed by id ranges kept in `claims` (no per-row write); events,
    # being few, carry their claim on the row
    "ALTER TABLE events ADD COLUMN claim_id INTEGER",
    "CREATE INDEX events_claimed ON events(claim_id) WHERE claim_id IS NOT NULL",
    "CREATE INDEX events_unclaimed ON events(prio, id) WHERE claim_id IS NULL",
    """CREATE TABLE claims (
        seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, n_raw INTEGER NOT NULL,
        n_events INTEGER NOT NULL, raw_ranges BLOB NOT NULL, meta BLOB)""",
    "CREATE TABLE seen (id INTEGER PRIMARY KEY, dk BLOB NOT NULL UNIQUE, t_ms INTEGER NOT NULL)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID",
)


def _v1(conn: sqlite3.Connection, now_ms: int) -> None:
    for stmt in V1:
        conn.execute(stmt)


def _v2(conn: sqlite3.Connection, now_ms: int) -> None:
    for stmt in V2:
        conn.execute(stmt)
    # Sequence numbers start at creation time x 1000 so that a deleted and recreated buffer
    # never reuses a number the cloud has already seen from this gateway.
    conn.execute("INSERT INTO meta(name, value) VALUES ('next_seq', ?)", (now_ms * 1000,))


MIGRATIONS: list[Callable[[sqlite3.Connection, int], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def classify(exc: sqlite3.Error, what: str) -> Exception:
    """Map an SQLite error to the gateway's error classes (what the caller should do)."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and (
            "malformed" in text or "not a database" in text or "corrupt" in text):
        return BufferCorrupt(f"{what}: the buffer file is damaged ({exc}); move it aside and "
                             "restart, the gateway then starts with an empty buffer")
    return BufferBusy(f"{what}: {exc}")


def connect(settings: BufferSettings, *, now_ms: int, create: bool = True) -> sqlite3.Connection:
    """Open the file, set the pragmas and bring the schema to `SCHEMA_VERSION`.

    Raises BufferCorrupt when the file is not a readable SQLite database (or fails
    `quick_check` when `settings.check_at_open`), FileNotFoundError when `create` is False and
    the file does not exist.
    """
    path = settings.path
    if not create and not os.path.exists(path):
        raise FileNotFoundError(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=settings.busy_timeout_s)
    except sqlite3.Error as exc:
        raise classify(exc, f"open {path}") from exc
    try:
        fresh = conn.execute("PRAGMA user_version").fetchone()[0] == 0 and \
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if fresh:
            # both only take effect before the first table exists
            conn.execute(f"PRAGMA page_size={settings.page_size}")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BufferBusy(f"{path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={Synchronous(settings.synchronous).value}")
        conn.execute(f"PRAGMA cache_size=-{settings.cache_kib}")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        # a passive checkpoint at half the WAL allowance; the writer truncates at the limit
        conn.execute(f"PRAGMA wal_autocheckpoint={max(8, settings.wal_limit // 2 // page_size)}")
        conn.execute(f"PRAGMA journal_size_limit={settings.wal_limit // 2}")
        conn.execute("PRAGMA temp_store=MEMORY")
        if settings.check_at_open and not fresh:
            row = conn.execute("PRAGMA quick_check(1)").fetchone()
            if row is None or row[0] != "ok":
                raise BufferCorrupt(f"{path}: integrity check failed: {row[0] if row else '?'}"
                                    "; move the file aside and restart")
        migrate(conn, now_ms, path=path)
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            # a file created without incremental vacuum cannot give space back; convert once
            log.warning("buffer: converting %s to incremental auto-vacuum (one-time rewrite)",
                        path)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
    except sqlite3.Error as exc:
        conn.close()
        raise classify(exc, f"open {path}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, now_ms: int, *, path: str = "") -> int:
    """Apply the missing migration steps, one transaction each.  Returns the final version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise BufferCorrupt(f"{path}: schema version {version} is newer than this fieldlink "
                            f"understands ({SCHEMA_VERSION}); upgrade fieldlink")
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn, now_ms)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version:
            log.info("buffer: migrated %s from schema %d to %d", path, version, version + 1)
        version += 1
    return version
