"""Byte accounting and eviction.

The cap is `settings.max_bytes` for the database file plus its WAL.  The WAL gets a fixed
reserve (`settings.wal_limit`, enforced by a TRUNCATE checkpoint after any commit that grew
it past the limit); the database file gets the rest, `db_budget_pages`.

Before rows are inserted, `make_room` makes sure the pages in use plus an estimate for the new
rows fit the budget, evicting in this order until they do:

1. de-duplication keys of already-sent rows (`seen`), oldest first — costs no data;
2. dead letters, oldest first — refused input must not push out good readings;
3. unclaimed raw readings, oldest first (or newest first, `Eviction.NEWEST_FIRST`);
4. unclaimed aggregates, oldest first — only to make room for an aggregate or an alert.

A record never pushes out a record of a higher class: when only aggregates, alerts and
claimed rows are left, new raw readings are refused (`refused.buffer_full.raw`; the ingress
does not acknowledge them).  A new dead letter may push out only older dead letters; with
none left it is not kept (`deadletter_dropped.space`).  Alerts and claimed rows are never
evicted.  Freed pages go to SQLite's free list and are
reused by the following inserts, so the file stops growing at the budget.  Before every
COMMIT, `enforce` checks the page count; if an estimate was short it evicts the difference
and gives the surplus pages back with `incremental_vacuum`, so after every commit the file
holds at most `db_budget_pages`.
Every eviction is counted by reason and class in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge.model import Priority
from gateway.buffer.settings import Eviction

if TYPE_CHECKING:
    from gateway.buffer.store import Store

#: `Store.tx_class` when a transaction inserted only dead letters
DEADLETTER = -1
#: approximate bytes of one `seen` key (row + unique index entry)
SEEN_ROW_BYTES = 70


def pages(conn: sqlite3.Connection) -> tuple[int, int]:
    """(page_count, freelist_count) of the main database, as the open transaction sees it."""
    pc, free = conn.execute("SELECT (SELECT * FROM pragma_page_count()),"
                            " (SELECT * FROM pragma_freelist_count())").fetchone()
    return int(pc), int(free)


def probe(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """pages() and the highest raw reading id, in one statement."""
    pc, free, max_id = conn.execute(
        "SELECT (SELECT * FROM pragma_page_count()), (SELECT * FROM pragma_freelist_count()),"
        " (SELECT coalesce(max(id), 0) FROM readings)").fetchone()
    return int(pc), int(free), int(max_id)


def pages_for(store: Store, n_rows: int, *, per_row: float | None = None) -> int:
    """A generous estimate of the pages `n_rows` new rows take (B-tree splits included)."""
    per = per_row if per_row is not None else store.row_bytes_est
    return int(n_rows * per * 1.25 / store.page_size) + 2


def make_room(store: Store, need_pages: int, *,
              priority: Priority = Priority.RAW, deadletter: bool = False) -> bool:
    """Evict until `need_pages` more pages fit the budget.  False when they cannot.

    A record may push out only records of its own class or a lower one: raw readings evict
    raw readings, aggregates and alerts also evict aggregates.  A dead letter (`deadletter`)
    may push out only older dead letters.  Raw rows inserted by the open transaction
    (`store.tx_raw_floor`) are never evicted: their callers are about to be told they are
    stored.
    """
    budget = store.settings.db_budget_pages
    pc, free = pages(store.conn)
    if pc - free + need_pages <= budget:
        return True
    victims: list[tuple[Callable[[int], int], float]] = [
        (lambda n: _evict_seen(store, n), SEEN_ROW_BYTES),
        (lambda n: _evict_deadletters(store, n), 512.0)]
    if not deadletter:
        victims.append((lambda n: _evict_raw(store, n, store.tx_raw_floor),
                        store.row_bytes_est))
        if priority >= Priority.AGGREGATE:
            victims.append((lambda n: _evict_aggregates(store, n), 256.0))
    for evict, row_bytes in victims:
        boost = 1
        while True:
            pc, free = pages(store.conn)
            excess = pc - free + need_pages - budget
            if excess <= 0:
                return True
            # deleting rows frees whole pages only once they are empty, so ask for more than
            # the byte arithmetic says, and more again while no page comes free
            n = int(excess * store.page_size / row_bytes * boost) + 16
            if evict(n) == 0:
                break
            pc2, free2 = pages(store.conn)
            if pc2 - free2 >= pc - free:
                boost = min(boost * 2, 1024)
    pc, free = pages(store.conn)
    return pc - free + need_pages <= budget


def enforce(store: Store) -> tuple[int, int]:
    """Before COMMIT: hold `page_count <= budget` whatever the transaction did.  Returns
    pages().

    Inserts estimate their pages generously (x1.25 + 2) and claims/acks grow little, so this
    rarely evicts; when it must, it follows the same rules as `make_room` for the class the
    transaction inserted, then gives the surplus pages back with an incremental vacuum.  If
    nothing that class may push out is left, the file stays over by that estimate error
    until rows leave (counted nowhere else: it is visible as db_bytes in the statistics).
    """
    budget = store.settings.db_budget_pages
    pc, free = pages(store.conn)
    if pc <= budget:
        return pc, free
    cls = store.tx_class
    make_room(store, 0, priority=Priority(max(cls, 0)) if cls is not None else Priority.RAW,
              deadletter=cls == DEADLETTER)
    pc, free = pages(store.conn)
    if pc > budget and free:
        vacuum(store, min(free, pc - budget))
        pc, free = pages(store.conn)
    return pc, free


def reclaim(store: Store) -> int:
    """Give free pages beyond the reclaim threshold back to the filesystem (a bounded chunk
    per call, so one maintenance transaction never writes more than half the WAL budget)."""
    threshold = store.settings.reclaim_threshold // store.page_size
    _pc, free = pages(store.conn)
    if free <= threshold:
        return 0
    chunk = min(free - threshold // 2, max(16, store.settings.wal_limit // 2 // store.page_size))
    vacuum(store, chunk)
    return chunk


def vacuum(store: Store, n_pages: int) -> None:
    """Move `n_pages` free pages to the end of the file and truncate them off."""
    # the pragma frees one page per step, and Python's sqlite3 steps a statement without
    # result columns only once (executescript would step it through, but commits first)
    for _ in range(n_pages):
        store.conn.execute("PRAGMA incremental_vacuum(1)")


def prune_seen(store: Store, now_ms: int) -> int:
    """Drop de-duplication keys older than the horizon or beyond the key cap."""
    s = store.settings
    tx = store.tx
    if tx.seen == 0:
        return 0
    cutoff = now_ms - int(s.dedup_horizon_s * 1000)
    # ids grow with ack time, so the expired keys are a prefix: stop at the first live one
    old = store.conn.execute(
        "DELETE FROM seen WHERE id < coalesce((SELECT id FROM seen WHERE t_ms >= ? ORDER BY id"
        " LIMIT 1), (SELECT max(id) + 1 FROM seen))", (cutoff,)).rowcount
    over = max(0, tx.seen - old - s.dedup_max_keys)
    extra = 0
    if over:
        extra = store.conn.execute("DELETE FROM seen WHERE id IN (SELECT id FROM seen ORDER BY"
                                   " id LIMIT ?)", (over,)).rowcount
    tx.seen -= old + extra
    store.bump("dedup_pruned.horizon", old)
    store.bump("dedup_pruned.count", extra)
    return old + extra


def _evict_seen(store: Store, n: int) -> int:
    gone = store.conn.execute(
        "DELETE FROM seen WHERE id IN (SELECT id FROM seen ORDER BY id LIMIT ?)", (n,)).rowcount
    store.tx.seen -= gone
    store.bump("dedup_pruned.space", gone)
    return gone


def _evict_deadletters(store: Store, n: int) -> int:
    # dead letters vary in size: free them a few at a time
    from gateway.buffer import deadletters  # here, not at the top: it imports this module

    return deadletters.drop_oldest(store, min(n, 64), "space")


def _evict_raw(store: Store, n: int, protect_from_id: int | None) -> int:
    """Delete up to `n` unclaimed raw readings, oldest (or newest) first.  Claimed readings
    are id ranges of `claims`; only the gaps between them are touched."""
    newest = store.settings.eviction == Eviction.NEWEST_FIRST
    gaps = store.tx.raw_gaps()
    if protect_from_id is not None:
        gaps = [(lo, min(hi, protect_from_id - 1)) for lo, hi in gaps if lo < protect_from_id]
    order = "DESC" if newest else "ASC"
    gone = 0
    for lo, hi in (reversed(gaps) if newest else gaps):
        gone += store.conn.execute(
            "DELETE FROM readings WHERE id IN (SELECT id FROM readings WHERE id BETWEEN ? AND ?"
            f" ORDER BY id {order} LIMIT ?)", (lo, hi, n - gone)).rowcount
        if gone >= n:
            break
    store.tx.rows[int(Priority.RAW)] -= gone
    store.bump("dropped.evicted.raw", gone)
    if gone:
        store.rows_removed()
    return gone


def _evict_aggregates(store: Store, n: int) -> int:
    gone = store.conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE claim_id IS NULL AND"
        " prio = ? ORDER BY id LIMIT ?)", (int(Priority.AGGREGATE), n)).rowcount
    store.tx.rows[int(Priority.AGGREGATE)] -= gone
    store.bump("dropped.evicted.aggregate", gone)
    if gone:
        store.rows_removed()
    return gone
