"""The synchronous core of the buffer: one SQLite connection, explicit transactions.

`Store` is used by exactly one thread at a time: the writer thread of `Buffer` in the gateway,
or the operator CLI in its own process.  Every mutating method must run inside
`begin()`..`commit()`; in-memory mirrors (row counts, counters, interned series) change only
when the transaction commits, and are reloaded when another process committed in between
(`PRAGMA data_version`), so a CLI purge next to a running gateway keeps both consistent.

Callers pass `now` (ms) explicitly; the core never reads a clock on its own, except the
writer's maintenance which passes the clock's time.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edge.clock import Clock
from edge.model import Event, Priority, Reading
from gateway.buffer import space
from gateway.buffer.results import AppendResult, BufferStats
from gateway.buffer.rows import (
    CHUNK,
    EVENT_COLS,
    INSERT_EVENT,
    READING_COLS,
    RECORD_ERRORS,
    Series,
    decode_event,
    decode_reading,
    event_row,
    insert_reading_rows,
    reading_params,
)
from gateway.buffer.schema import SCHEMA_VERSION, connect
from gateway.buffer.settings import BufferSettings, Synchronous
from gateway.buffer.state import (
    AGG,
    CLASS,
    EVENT_BYTES_EST,
    RAW,
    ClaimInfo,
    State,
    Timings,
    unpack_ranges,
)


class Store:
    def __init__(self, conn: sqlite3.Connection, settings: BufferSettings, clock: Clock) -> None:
        self.conn = conn
        self.settings = settings
        self.clock = clock
        self.series = Series()
        self.state = State()
        self._tx: State | None = None
        self._dirty: set[str] = set()
        self._fsync_switched = False
        self.page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        #: bytes a raw reading occupies on average (table + indexes), learnt from inserts
        self.row_bytes_est = 130.0
        self._learn_pages = 0
        self._learn_total = 0
        #: raw rows the open transaction stored, and the pages in use before it inserted
        self._learn_rows = 0
        self._used_before: int | None = None
        #: the highest class the open transaction inserted (space.DEADLETTER: dead letters)
        self.tx_class: int | None = None
        #: raw rows from this id on were inserted by the open transaction: never evicted by it
        self.tx_raw_floor: int | None = None
        self.db_pages = 0
        self.free_pages = 0
        self.wal_bytes = 0
        self.oldest_rx: int | None = None
        self._oldest_dirty = True
        self.timings = Timings()
        self._data_version = -1
        self.series_after_gc = 0
        self.load()

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: BufferSettings, clock: Clock, *, create: bool = True) -> Store:
        conn = connect(settings, now_ms=clock.now_ms(), create=create)
        try:
            return cls(conn, settings, clock)
        except BaseException:
            conn.close()
            raise

    def close(self, *, checkpoint: bool = True) -> None:
        if self._tx is not None:
            self.rollback()
        try:
            if checkpoint:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("PRAGMA optimize")
        finally:
            self.conn.close()

    def load(self) -> None:
        """(Re)build every in-memory mirror from the file."""
        c = self.conn
        self.series.load(c)
        st = State()
        st.rows[RAW] = c.execute("SELECT count(*) FROM readings").fetchone()[0]
        for prio, n in c.execute("SELECT prio, count(*) FROM events GROUP BY prio"):
            st.rows[prio] = n
        for seq, n_raw, n_events, ranges in c.execute(
                "SELECT seq, n_raw, n_events, raw_ranges FROM claims"):
            st.claims[seq] = ClaimInfo(unpack_ranges(ranges), n_raw, n_events)
        st.seen = c.execute("SELECT count(*) FROM seen").fetchone()[0]
        st.deadletters = c.execute("SELECT count(*) FROM deadletter").fetchone()[0]
        st.next_seq = c.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()[0]
        st.counters = dict(c.execute("SELECT name, value FROM counters"))
        self.state = st
        self._data_version = c.execute("PRAGMA data_version").fetchone()[0]
        self._oldest_dirty = True
        self.refresh_sizes()

    # -- transactions ------------------------------------------------------------------------
    @property
    def tx(self) -> State:
        if self._tx is None:
            raise RuntimeError("buffer store: not inside a transaction")
        return self._tx

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def begin(self, *, fsync: bool = False) -> None:
        """BEGIN IMMEDIATE.  `fsync` forces synchronous=FULL for this commit (claims)."""
        if self._tx is not None:
            raise RuntimeError("buffer store: transaction already open")
        if fsync and self.settings.synchronous != Synchronous.FULL:
            self.conn.execute("PRAGMA synchronous=FULL")
            self._fsync_switched = True
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            # Holding the write lock, nobody else can commit until we are done; data_version
            # moves only with other connections' commits (the operator CLI's), so checking it
            # here catches every one of them, and our own commits never look like theirs.
            if self.conn.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                self.load()
        except BaseException:
            self.rollback()
            raise
        self._tx = self.state.copy()
        self._dirty.clear()
        self.tx_raw_floor = None
        self.tx_class = None
        self._used_before = None
        self._learn_rows = 0

    def commit(self) -> None:
        tx = self.tx
        pc, free = space.enforce(self)
        self._learn_row_size(pc - free)
        if self._dirty:
            args: list[Any] = []
            for name in sorted(self._dirty):
                args += (name, tx.counters[name] - self.state.counters.get(name, 0))
            self.conn.execute(
                "INSERT INTO counters(name, value) VALUES "
                + ",".join(["(?, ?)"] * len(self._dirty))
                + " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", args)
        self.conn.execute("COMMIT")
        synced = self._fsync_switched or self.settings.synchronous == Synchronous.FULL
        self._restore_sync()
        self.state = tx
        self._tx = None
        self._dirty.clear()
        self.series.committed()
        self.timings.commits += 1
        self.timings.sync_commits += synced

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self._restore_sync()
            self._tx = None
            self._dirty.clear()
            self.series.rolled_back()
            self._oldest_dirty = True

    def _restore_sync(self) -> None:
        if self._fsync_switched:
            self._fsync_switched = False
            self.conn.execute(f"PRAGMA synchronous={Synchronous(self.settings.synchronous).value}")

    @contextmanager
    def transaction(self, *, fsync: bool = False) -> Iterator[Store]:
        self.begin(fsync=fsync)
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()
        self.after_commit()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo only this part of the transaction if it raises (in-memory mirrors included)."""
        saved = self.tx.copy()
        dirty = set(self._dirty)
        self.conn.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO part")
            self.conn.execute("RELEASE part")
            self._tx = saved
            self._dirty = dirty
            raise
        self.conn.execute("RELEASE part")

    def bump(self, name: str, n: int = 1) -> None:
        if n:
            counters = self.tx.counters
            counters[name] = counters.get(name, 0) + n
            self._dirty.add(name)

    def after_commit(self) -> None:
        """Keep the WAL within its allowance and refresh the sizes `stats()` shows."""
        self.refresh_sizes()
        if self.wal_bytes > self.settings.wal_limit:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.timings.checkpoints += 1
            self.refresh_sizes()

    def refresh_sizes(self) -> None:
        self.db_pages, self.free_pages = space.pages(self.conn)
        try:
            self.wal_bytes = os.stat(self.settings.path + "-wal").st_size
        except FileNotFoundError:
            self.wal_bytes = 0
        if self._oldest_dirty:
            self.oldest_rx = self._query_oldest_rx()
            self._oldest_dirty = False

    def _query_oldest_rx(self) -> int | None:
        row = self.conn.execute("SELECT rx_ms FROM readings ORDER BY id LIMIT 1").fetchone()
        ev = self.conn.execute("SELECT min(rx_ms) FROM events").fetchone()[0]
        candidates = [v for v in (row[0] if row else None, ev) if v is not None]
        return min(candidates) if candidates else None

    def rows_removed(self) -> None:
        self._oldest_dirty = True

    # -- appends -----------------------------------------------------------------------------
    def insert_readings(self, batches: list[list[Reading]], now_ms: int) -> list[AppendResult]:
        """Insert several callers' readings; one result per caller, in order.

        Fast path: all callers' rows in one INSERT per 512 rows.  A caller whose readings
        cannot be stored as a whole (no room left after eviction, or an invalid record) is
        refused as a whole, so an ingress never acknowledges half a message.
        """
        total = sum(len(b) for b in batches)
        if total == 0:
            return [AppendResult() for _ in batches]
        pc, free, max_id = space.probe(self.conn)
        need = space.pages_for(self, total)
        if pc - free + need > self.settings.db_budget_pages:
            if not space.make_room(self, need):
                return self._insert_each(batches, now_ms)
            pc, free, max_id = space.probe(self.conn)
        if self.tx_raw_floor is None:
            self.tx_raw_floor = max_id + 1
        if self._used_before is None:
            self._used_before = pc - free
        self.tx_class = max(self.tx_class or RAW, RAW)
        try:
            params, dks = reading_params(self.conn, self.series,
                                         [r for b in batches for r in b])
            if total > CHUNK:  # several statements: all or nothing
                with self.savepoint():
                    stored = insert_reading_rows(self.conn, params)
            else:
                stored = insert_reading_rows(self.conn, params)
        except RECORD_ERRORS:
            return self._insert_each(batches, now_ms)
        self._account(stored, total - stored)
        self._learn_rows += stored
        if stored == total:
            return [_stored(len(b)) for b in batches]
        return self._attribute(batches, dks, max_id)

    def _attribute(self, batches: list[list[Reading]], dks: list[bytes], max_id: int
                   ) -> list[AppendResult]:
        """Which caller's readings were new: the rows above `max_id` are this insert's."""
        inserted = {bytes(dk) for (dk,) in self.conn.execute(
            "SELECT dk FROM readings WHERE id > ?", (max_id,))}
        results = []
        i = 0
        for b in batches:
            n_new = 0
            for dk in dks[i:i + len(b)]:
                if dk in inserted:
                    inserted.discard(dk)  # a repeat within the group is a duplicate
                    n_new += 1
            i += len(b)
            results.append(AppendResult(stored=n_new, duplicates=len(b) - n_new))
        return results

    def _insert_each(self, batches: list[list[Reading]], now_ms: int) -> list[AppendResult]:
        self.tx_class = max(self.tx_class or RAW, RAW)
        if self.tx_raw_floor is None:
            self.tx_raw_floor = space.probe(self.conn)[2] + 1
        results = []
        for b in batches:
            if not b:
                results.append(AppendResult())
                continue
            if not space.make_room(self, space.pages_for(self, len(b))):
                self.bump("refused.buffer_full.raw", len(b))
                results.append(AppendResult(refused=len(b), refused_reason="buffer_full"))
                continue
            try:
                with self.savepoint():
                    params, _dks = reading_params(self.conn, self.series, b)
                    stored = insert_reading_rows(self.conn, params)
                    self._account(stored, len(b) - stored)
            except RECORD_ERRORS:
                self.bump("refused.invalid_record.raw", len(b))
                results.append(AppendResult(refused=len(b), refused_reason="invalid_record"))
                continue
            results.append(AppendResult(stored=stored, duplicates=len(b) - stored))
        return results

    def _account(self, stored: int, dups: int) -> None:
        tx = self.tx
        tx.rows[RAW] += stored
        self.bump("appended.raw", stored)
        self.bump("duplicates.raw", dups)
        if stored and self.oldest_rx is None:
            self._oldest_dirty = True

    def _learn_row_size(self, used_after: int) -> None:
        """Pages grown per raw row stored, over at least 2000 rows (eviction sizes its
        chunks with it)."""
        if self._used_before is None or not self._learn_rows:
            return
        self._learn_pages += used_after - self._used_before
        self._learn_total += self._learn_rows
        self._learn_rows = 0
        if self._learn_total >= 2000:
            if self._learn_pages > 0:
                sample = self._learn_pages * self.page_size / self._learn_total
                self.row_bytes_est = 0.7 * self.row_bytes_est + 0.3 * max(40.0, sample)
            self._learn_pages = self._learn_total = 0

    def insert_events(self, events: list[Event], now_ms: int) -> AppendResult:
        """Aggregates and alerts.  Refused as a whole only when nothing can be evicted."""
        if not events:
            return AppendResult()
        self.tx_class = max(self.tx_class or RAW, AGG)
        if not space.make_room(self, space.pages_for(self, len(events), per_row=256),
                               priority=Priority.AGGREGATE):
            for e in events:
                self.bump(f"refused.buffer_full.{CLASS[int(e.priority)]}")
            return AppendResult(refused=len(events), refused_reason="buffer_full")
        stored = dups = 0
        try:
            with self.savepoint():
                for e in events:
                    row = event_row(self.conn, self.series, e, now_ms)
                    cls = CLASS[row[1]]
                    if self.conn.execute(INSERT_EVENT, row).rowcount:
                        stored += 1
                        self.tx.rows[row[1]] += 1
                        self.bump(f"appended.{cls}")
                    else:
                        dups += 1
                        self.bump(f"duplicates.{cls}")
        except RECORD_ERRORS:
            for e in events:
                self.bump(f"refused.invalid_record.{CLASS[int(e.priority)]}")
            return AppendResult(refused=len(events), refused_reason="invalid_record")
        if stored:
            self._oldest_dirty = True
        return AppendResult(stored=stored, duplicates=dups)

    def gc_series(self) -> int:
        """Forget interned strings no row refers to any more (device ids come and go).
        Scans the tables: run at open and, when their number doubled, by an idle writer."""
        gone = self.conn.execute(
            "DELETE FROM series WHERE id NOT IN (SELECT series FROM readings"
            " UNION SELECT series FROM events)").rowcount
        if gone:
            self.series.load(self.conn)
        self.series_after_gc = len(self.series.keys)
        return int(gone)

    def record_settings(self) -> None:
        """Note the writer's `max_bytes` in the file, for the operator CLI's `stats`."""
        self.conn.execute("INSERT INTO meta(name, value) VALUES ('max_bytes', ?) ON CONFLICT(name)"
                          " DO UPDATE SET value = excluded.value", (self.settings.max_bytes,))

    def recorded_max_bytes(self) -> int | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = 'max_bytes'").fetchone()
        return None if row is None else int(row[0])

    # -- operator actions --------------------------------------------------------------------
    def purge(self, classes: list[Priority], *, older_than_ms: int | None, now_ms: int,
              limit: int = 10_000) -> int:
        """Delete up to `limit` unclaimed rows of `classes` (received before now-older_than).

        Counted as `dropped.purged.<class>`.  Claimed rows are in flight and never purged.
        Call repeatedly (one transaction each) until it returns 0.
        """
        cutoff = None if older_than_ms is None else now_ms - older_than_ms
        age = "" if cutoff is None else " AND rx_ms < ?"
        args: tuple[Any, ...] = () if cutoff is None else (cutoff,)
        gone_total = 0
        for p in classes:
            left = limit - gone_total
            if left <= 0:
                break
            if p == Priority.RAW:
                gone = 0
                for lo, hi in self.tx.raw_gaps():
                    gone += self.conn.execute(
                        "DELETE FROM readings WHERE id IN (SELECT id FROM readings WHERE id"
                        f" BETWEEN ? AND ?{age} ORDER BY id LIMIT ?)",
                        (lo, hi, *args, left - gone)).rowcount
                    if gone >= left:
                        break
            else:
                gone = self.conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE claim_id IS"
                    f" NULL AND prio = ?{age} ORDER BY id LIMIT ?)",
                    (int(p), *args, left)).rowcount
            self.tx.rows[int(p)] -= gone
            self.bump(f"dropped.purged.{CLASS[int(p)]}", gone)
            gone_total += gone
        if gone_total:
            self.rows_removed()
        return gone_total

    def peek(self, n: int, classes: list[Priority] | None = None
             ) -> list[tuple[Priority, int, int | None, Reading | Event]]:
        """The first `n` rows in send order (alerts, aggregates, raw; each by id)."""
        out: list[tuple[Priority, int, int | None, Reading | Event]] = []
        wanted = classes or [Priority.ALERT, Priority.AGGREGATE, Priority.RAW]
        for p in sorted(wanted, reverse=True):
            left = n - len(out)
            if left <= 0:
                break
            if p == Priority.RAW:
                st = self.state if self._tx is None else self._tx
                for row in self.conn.execute(
                        f"SELECT {READING_COLS} FROM readings ORDER BY id LIMIT ?", (left,)):
                    out.append((p, row[0], st.raw_claim_of(row[0]),
                                decode_reading(self.series, row)))
            else:
                for row in self.conn.execute(
                        f"SELECT {EVENT_COLS} FROM events WHERE prio = ? ORDER BY id LIMIT ?",
                        (int(p), left)):
                    out.append((p, row[0], row[-1], decode_event(self.series, row)))
        return out

    # -- statistics --------------------------------------------------------------------------
    def snapshot(self, now_ms: int, *, pending: int = 0) -> BufferStats:
        st = self.state
        t = self.timings
        groups: dict[str, dict[str, dict[str, int]]] = {"dropped": {}, "refused": {}}
        flat: dict[str, dict[str, int]] = {"appended": {}, "duplicates": {}, "acked": {},
                                           "deadletter": {}, "deadletter_dropped": {}}
        for name, value in st.counters.items():
            head, _, rest = name.partition(".")
            if head in groups:
                reason, _, cls = rest.partition(".")
                groups[head].setdefault(reason, {})[cls] = value
            elif head in flat:
                flat[head][rest] = value
        for key in ("appended", "duplicates", "acked"):
            flat[key] = {**{c: 0 for c in CLASS.values()}, **flat[key]}
        return BufferStats(
            rows={CLASS[p]: n for p, n in st.rows.items()},
            claimed_rows=st.claimed, claims_in_flight=len(st.claims),
            db_bytes=self.db_pages * self.page_size, wal_bytes=self.wal_bytes,
            used_bytes=(self.db_pages - self.free_pages) * self.page_size,
            est_bytes_by_class={CLASS[p]: int(n * (self.row_bytes_est if p == RAW else
                                                     EVENT_BYTES_EST))
                                for p, n in st.rows.items()},
            max_bytes=self.settings.max_bytes,
            oldest_unsent_age_ms=None if self.oldest_rx is None else
            max(0, now_ms - self.oldest_rx),
            seen_keys=st.seen, dead_letter_rows=st.deadletters,
            appended=flat["appended"], duplicates=flat["duplicates"], acked=flat["acked"],
            dropped=groups["dropped"], refused=groups["refused"],
            dead_letters=flat["deadletter"], dead_letters_dropped=flat["deadletter_dropped"],
            counters=dict(st.counters),
            commits=t.commits, sync_commits=t.sync_commits, checkpoints=t.checkpoints,
            commit_ms_last=t.commit_ms_last,
            commit_ms_avg=t.commit_ms_total / t.commits if t.commits else 0.0,
            commit_ms_max=t.commit_ms_max, group_size_last=t.group_last,
            group_size_avg=t.group_total / t.commits if t.commits else 0.0,
            pending_readings=pending, schema_version=SCHEMA_VERSION)


#: results of the common case, shared (AppendResult is frozen): building a frozen dataclass
#: costs as much as encoding the reading's row
_STORED = [AppendResult(stored=n) for n in range(65)]


def _stored(n: int) -> AppendResult:
    return _STORED[n] if n < 65 else AppendResult(stored=n)
