"""Claims: how the uplink takes rows out of the buffer without ever losing or regrouping them.

Protocol (one uplink; the buffer does not arbitrate between several):

1. `claim(max_records, live_share)` picks unclaimed rows, allocates the next sequence number
   (`meta.next_seq`), writes the `claims` row and stamps `claim_id = seq` on the rows, and
   commits with an fsync whatever `synchronous` says — so a sequence number that has left the
   gateway is never handed out again for other rows, even after a power loss.
2. The uplink encodes the claim (it may store the frame or anything else with
   `set_claim_meta`) and sends it.
3. `ack(seq)` once the cloud acknowledged: the rows are deleted and their keys move to `seen`
   (late redeliveries from sensors are still recognised).  `release(seq)` when the uplink
   gives the batch up: the rows become claimable again (in a later claim with a new `seq`).
4. After a crash or restart, claims are still there: `pending_claims()` re-offers each with
   the same rows, the same `seq` and its `meta`, so the uplink re-sends the identical batch
   (the cloud de-duplicates by batch and by reading key).  With `claim_lease_s`, claims older
   than the lease are released at open instead (counted `claims.expired`).

Selection.  Alerts first, then aggregates (each oldest first), then raw readings: of the
remaining capacity R, `floor(R * live_share)` goes to the newest unclaimed raw readings
received within `live_window_ms` ("live"), the rest to the oldest unclaimed raw readings
("backlog"), so after an outage the backlog drains while live data keeps flowing.  If the
backlog is short, its unused share is not given to live rows beyond the quota; they go in the
next claim.  Within a claim rows are ordered by class, then id, so per device and class ids
are increasing.  Across claims a live row may leave before an older backlog row of the same
device; consumers order by timestamp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge.model import Priority
from gateway.buffer import space
from gateway.buffer.results import CLASS_NAMES, Claim, ClaimedRow
from gateway.buffer.rows import (
    EVENT_COLS,
    READING_COLS,
    decode_event,
    decode_readings,
    insert_seen,
)
from gateway.buffer.state import MAX_ID, ClaimInfo, pack_ranges, unpack_ranges

if TYPE_CHECKING:
    from gateway.buffer.store import Store

RAW, AGG, ALERT = int(Priority.RAW), int(Priority.AGGREGATE), int(Priority.ALERT)


def make_claim(store: Store, max_records: int, live_share: float, now_ms: int
               ) -> Claim | None:
    """Claim up to `max_records` rows; returns the claim, or None when nothing is waiting.
    Must run in a transaction opened with `begin(fsync=True)`."""
    if max_records <= 0:
        return None
    conn = store.conn
    tx = store.tx
    event_rows: list[tuple[Any, ...]] = []
    for prio in (ALERT, AGG):
        left = max_records - len(event_rows)
        if left <= 0:
            break
        event_rows += conn.execute(
            f"SELECT {EVENT_COLS} FROM events WHERE claim_id IS NULL AND prio = ? ORDER BY id"
            " LIMIT ?", (prio, left)).fetchall()
    room = max_records - len(event_rows)
    backlog: list[list[tuple[Any, ...]]] = []
    live: list[list[tuple[Any, ...]]] = []
    if room > 0:
        gaps = tx.raw_gaps()
        live = _select_live(store, gaps, int(room * max(0.0, min(1.0, live_share))), now_ms)
        below = live[0][0][0] if live else MAX_ID + 1
        backlog = _select_backlog(store, gaps, room - sum(len(r) for r in live), below)
    runs = backlog + live  # each a run of consecutive unclaimed rows, ascending
    n_raw = sum(len(r) for r in runs)
    if not event_rows and not n_raw:
        return None
    seq = tx.next_seq
    tx.next_seq += 1
    conn.execute("INSERT INTO meta(name, value) VALUES ('next_seq', ?) ON CONFLICT(name)"
                 " DO UPDATE SET value = excluded.value", (tx.next_seq,))
    info = ClaimInfo(tuple((run[0][0], run[-1][0]) for run in runs), n_raw, len(event_rows))
    conn.execute("INSERT INTO claims(seq, created_ms, n_raw, n_events, raw_ranges)"
                 " VALUES (?, ?, ?, ?, ?)",
                 (seq, now_ms, n_raw, len(event_rows), pack_ranges(info.ranges)))
    conn.executemany("UPDATE events SET claim_id = ? WHERE id = ?",
                     [(seq, r[0]) for r in event_rows])
    tx.claims[seq] = info
    store.bump("claims.created")
    raw_rows = [row for run in runs for row in run]
    return Claim(seq=seq, created_ms=now_ms, rows=tuple(
        _event_rows(store, event_rows) + _raw_rows(store, raw_rows)))


def _event_rows(store: Store, rows: list[tuple[Any, ...]]) -> list[ClaimedRow]:
    out = []
    for r in rows:
        ev = decode_event(store.series, r)
        out.append(ClaimedRow(r[0], Priority(r[2]), ev.key, ev))
    return out


def _raw_rows(store: Store, rows: list[tuple[Any, ...]]) -> list[ClaimedRow]:
    raw = Priority.RAW
    return [ClaimedRow(r[0], raw, r[1][6:], reading)
            for r, reading in zip(rows, decode_readings(store.series, rows))]


def _select_live(store: Store, gaps: list[tuple[int, int]], quota: int, now_ms: int
                 ) -> list[list[tuple[Any, ...]]]:
    """The newest unclaimed raw readings received within the live window, at most `quota`,
    as runs of consecutive rows (one per gap), ascending."""
    cutoff = now_ms - store.settings.live_window_ms
    runs: list[list[tuple[Any, ...]]] = []
    taken = 0
    for lo, hi in reversed(gaps):
        if taken >= quota:
            break
        run = []
        stop = False
        for row in store.conn.execute(
                f"SELECT {READING_COLS} FROM readings WHERE id BETWEEN ? AND ?"
                " ORDER BY id DESC LIMIT ?", (lo, hi, quota - taken)):
            if row[2] < cutoff:  # rx_ms
                stop = True
                break
            run.append(row)
        if run:
            runs.append(run[::-1])
            taken += len(run)
        if stop:
            break
    return runs[::-1]


def _select_backlog(store: Store, gaps: list[tuple[int, int]], want: int, below: int
                    ) -> list[list[tuple[Any, ...]]]:
    """The oldest unclaimed raw readings with an id under `below`, at most `want`."""
    runs: list[list[tuple[Any, ...]]] = []
    taken = 0
    for lo, hi in gaps:
        if taken >= want or lo >= below:
            break
        run = store.conn.execute(
            f"SELECT {READING_COLS} FROM readings WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
            (lo, min(hi, below - 1), want - taken)).fetchall()
        if run:
            runs.append(run)
            taken += len(run)
    return runs


def _info(store: Store, seq: int) -> ClaimInfo | None:
    st = store.tx if store.in_transaction else store.state
    return st.claims.get(seq)


def load_claim(store: Store, seq: int) -> Claim | None:
    row = store.conn.execute("SELECT created_ms, meta, raw_ranges FROM claims WHERE seq = ?",
                             (seq,)).fetchone()
    if row is None:
        return None
    events = store.conn.execute(f"SELECT {EVENT_COLS} FROM events WHERE claim_id = ?"
                                " ORDER BY prio DESC, id", (seq,)).fetchall()
    raw: list[tuple[Any, ...]] = []
    for a, b in unpack_ranges(row[2]):
        raw += store.conn.execute(f"SELECT {READING_COLS} FROM readings WHERE id BETWEEN ?"
                                  " AND ? ORDER BY id", (a, b)).fetchall()
    return Claim(seq=seq, created_ms=row[0],
                 rows=tuple(_event_rows(store, events) + _raw_rows(store, raw)),
                 meta=None if row[1] is None else bytes(row[1]))


def pending_claims(store: Store) -> list[Claim]:
    """Every claim not yet acknowledged or released, oldest first."""
    seqs = [s for (s,) in store.conn.execute("SELECT seq FROM claims ORDER BY seq")]
    return [c for c in (load_claim(store, s) for s in seqs) if c is not None]


def set_meta(store: Store, seq: int, meta: bytes | None) -> bool:
    return store.conn.execute("UPDATE claims SET meta = ? WHERE seq = ?",
                              (meta, seq)).rowcount == 1


def _event_counts(store: Store, seq: int) -> dict[int, int]:
    return {p: n for p, n in store.conn.execute(
        "SELECT prio, count(*) FROM events WHERE claim_id = ? GROUP BY prio", (seq,))}


def ack(store: Store, seq: int, now_ms: int) -> int:
    """Delete the claim's rows (the cloud has them) and remember their keys.  Returns rows
    removed; 0 and `ack_unknown` counted when the claim no longer exists."""
    conn = store.conn
    info = _info(store, seq)
    if info is None:
        store.bump("ack_unknown")
        return 0
    counts = _event_counts(store, seq)
    s = store.settings
    keep = s.dedup_horizon_s > 0 and s.dedup_max_keys > 0
    # read the keys, delete the rows, then remember the keys: the freed pages take the keys,
    # so an ack never grows the file
    dks: list[bytes] = []
    if keep:
        dks += [dk for (dk,) in conn.execute("SELECT dk FROM events WHERE claim_id = ?",
                                             (seq,))]
        for a, b in info.ranges:
            dks += [dk for (dk,) in conn.execute(
                "SELECT dk FROM readings WHERE id BETWEEN ? AND ?", (a, b))]
    conn.execute("DELETE FROM events WHERE claim_id = ?", (seq,))
    n_raw = 0
    for a, b in info.ranges:
        n_raw += conn.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", (a, b)).rowcount
    conn.execute("DELETE FROM claims WHERE seq = ?", (seq,))
    if dks:
        dks.sort()  # in key order: the inserts walk the index instead of jumping around
        store.tx.seen += insert_seen(conn, dks, now_ms)
    counts[RAW] = n_raw
    tx = store.tx
    del tx.claims[seq]
    total = 0
    for prio, n in counts.items():
        tx.rows[prio] -= n
        total += n
        store.bump(f"acked.{CLASS_NAMES[Priority(prio)]}", n)
    store.bump("claims.acked")
    store.rows_removed()
    space.prune_seen(store, now_ms)
    return total


def release(store: Store, seq: int, *, reason: str = "released") -> int:
    """Make the claim's rows claimable again.  Returns rows released."""
    info = _info(store, seq)
    if info is None:
        store.bump("release_unknown")
        return 0
    counts = _event_counts(store, seq)
    counts[RAW] = info.n_raw
    store.conn.execute("UPDATE events SET claim_id = NULL WHERE claim_id = ?", (seq,))
    store.conn.execute("DELETE FROM claims WHERE seq = ?", (seq,))
    del store.tx.claims[seq]
    for prio, k in counts.items():
        store.bump(f"released.{CLASS_NAMES[Priority(prio)]}", k)
    store.bump(f"claims.{reason}")
    return sum(counts.values())


def release_expired(store: Store, lease_s: float, now_ms: int) -> int:
    """Release claims created more than `lease_s` ago (at open, when a lease is set)."""
    cutoff = now_ms - int(lease_s * 1000)
    seqs = [s for (s,) in store.conn.execute(
        "SELECT seq FROM claims WHERE created_ms < ? ORDER BY seq", (cutoff,))]
    for seq in seqs:
        release(store, seq, reason="expired")
    return len(seqs)
