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

from typing import TYPE_CHECKING

from edge.model import Event, Priority, Reading
from gateway.buffer import space
from gateway.buffer.results import CLASS_NAMES, Claim, ClaimedRow
from gateway.buffer.rows import EVENT_COLS, READING_COLS, decode_event, decode_reading

if TYPE_CHECKING:
    from gateway.buffer.store import Store

RAW, AGG, ALERT = int(Priority.RAW), int(Priority.AGGREGATE), int(Priority.ALERT)


def make_claim(store: Store, max_records: int, live_share: float, now_ms: int) -> int | None:
    """Claim up to `max_records` rows; returns the new seq, or None when nothing is waiting.
    Must run in a transaction opened with `begin(fsync=True)`."""
    if max_records <= 0:
        return None
    conn = store.conn
    event_ids: list[int] = []
    for prio in (ALERT, AGG):
        left = max_records - len(event_ids)
        if left <= 0:
            break
        event_ids += [i for (i,) in conn.execute(
            "SELECT id FROM events WHERE claim_id IS NULL AND prio = ? ORDER BY id LIMIT ?",
            (prio, left))]
    room = max_records - len(event_ids)
    raw_ids: list[int] = []
    if room > 0:
        quota = int(room * max(0.0, min(1.0, live_share)))
        cutoff = now_ms - store.settings.live_window_ms
        live: list[int] = []
        if quota:
            for rid, rx_ms in conn.execute(
                    "SELECT id, rx_ms FROM readings WHERE claim_id IS NULL ORDER BY id DESC"
                    " LIMIT ?", (quota,)):
                if rx_ms < cutoff:
                    break
                live.append(rid)
        if live:
            backlog = [i for (i,) in conn.execute(
                "SELECT id FROM readings WHERE claim_id IS NULL AND id < ? ORDER BY id LIMIT ?",
                (live[-1], room - len(live)))]
        else:
            backlog = [i for (i,) in conn.execute(
                "SELECT id FROM readings WHERE claim_id IS NULL ORDER BY id LIMIT ?", (room,))]
        raw_ids = backlog + live[::-1]
    if not event_ids and not raw_ids:
        return None
    tx = store.tx
    seq = tx.next_seq
    tx.next_seq += 1
    conn.execute("UPDATE meta SET value = ? WHERE name = 'next_seq'", (tx.next_seq,))
    conn.execute("INSERT INTO claims(seq, created_ms, n_rows) VALUES (?, ?, ?)",
                 (seq, now_ms, len(event_ids) + len(raw_ids)))
    conn.executemany("UPDATE events SET claim_id = ? WHERE id = ?", [(seq, i) for i in event_ids])
    conn.executemany("UPDATE readings SET claim_id = ? WHERE id = ?", [(seq, i) for i in raw_ids])
    tx.claims += 1
    tx.claimed += len(event_ids) + len(raw_ids)
    store.bump("claims.created")
    return seq


def load_claim(store: Store, seq: int) -> Claim | None:
    row = store.conn.execute("SELECT created_ms, meta FROM claims WHERE seq = ?",
                             (seq,)).fetchone()
    if row is None:
        return None
    rows: list[ClaimedRow] = []
    for r in store.conn.execute(f"SELECT {EVENT_COLS} FROM events WHERE claim_id = ?"
                                " ORDER BY prio DESC, id", (seq,)):
        ev: Event = decode_event(store.series, r)
        rows.append(ClaimedRow(id=r[0], priority=Priority(r[2]), key=ev.key, record=ev))
    for r in store.conn.execute(f"SELECT {READING_COLS} FROM readings WHERE claim_id = ?"
                                " ORDER BY id", (seq,)):
        reading: Reading = decode_reading(store.series, r)
        rows.append(ClaimedRow(id=r[0], priority=Priority.RAW, key=bytes(r[1][6:]),
                               record=reading))
    return Claim(seq=seq, created_ms=row[0], rows=tuple(rows),
                 meta=None if row[1] is None else bytes(row[1]))


def pending_claims(store: Store) -> list[Claim]:
    """Every claim not yet acknowledged or released, oldest first."""
    seqs = [s for (s,) in store.conn.execute("SELECT seq FROM claims ORDER BY seq")]
    return [c for c in (load_claim(store, s) for s in seqs) if c is not None]


def set_meta(store: Store, seq: int, meta: bytes | None) -> bool:
    return store.conn.execute("UPDATE claims SET meta = ? WHERE seq = ?",
                              (meta, seq)).rowcount == 1


def _class_counts(store: Store, seq: int) -> dict[int, int]:
    counts = {p: n for p, n in store.conn.execute(
        "SELECT prio, count(*) FROM events WHERE claim_id = ? GROUP BY prio", (seq,))}
    counts[RAW] = store.conn.execute(
        "SELECT count(*) FROM readings WHERE claim_id = ?", (seq,)).fetchone()[0]
    return counts


def ack(store: Store, seq: int, now_ms: int) -> int:
    """Delete the claim's rows (the cloud has them) and remember their keys.  Returns rows
    removed; 0 and `ack_unknown` counted when the claim no longer exists."""
    conn = store.conn
    if conn.execute("SELECT 1 FROM claims WHERE seq = ?", (seq,)).fetchone() is None:
        store.bump("ack_unknown")
        return 0
    counts = _class_counts(store, seq)
    s = store.settings
    if s.dedup_horizon_s > 0 and s.dedup_max_keys > 0:
        added = 0
        for table in ("events", "readings"):
            added += conn.execute(
                f"INSERT OR IGNORE INTO seen(dk, t_ms) SELECT dk, ? FROM {table}"
                " WHERE claim_id = ? ORDER BY dk", (now_ms, seq)).rowcount
        store.tx.seen += added
    conn.execute("DELETE FROM events WHERE claim_id = ?", (seq,))
    conn.execute("DELETE FROM readings WHERE claim_id = ?", (seq,))
    conn.execute("DELETE FROM claims WHERE seq = ?", (seq,))
    total = _settle(store, counts, "acked")
    store.bump("claims.acked")
    store.rows_removed()
    space.prune_seen(store, now_ms)
    return total


def release(store: Store, seq: int, *, reason: str = "released") -> int:
    """Make the claim's rows claimable again.  Returns rows released."""
    conn = store.conn
    if conn.execute("SELECT 1 FROM claims WHERE seq = ?", (seq,)).fetchone() is None:
        store.bump("release_unknown")
        return 0
    counts = _class_counts(store, seq)
    conn.execute("UPDATE events SET claim_id = NULL WHERE claim_id = ?", (seq,))
    conn.execute("UPDATE readings SET claim_id = NULL WHERE claim_id = ?", (seq,))
    conn.execute("DELETE FROM claims WHERE seq = ?", (seq,))
    tx = store.tx
    tx.claims -= 1
    n = sum(counts.values())
    tx.claimed -= n
    for prio, k in counts.items():
        store.bump(f"released.{CLASS_NAMES[Priority(prio)]}", k)
    store.bump(f"claims.{reason}")
    return n


def release_expired(store: Store, lease_s: float, now_ms: int) -> int:
    """Release claims created more than `lease_s` ago (at open, when a lease is set)."""
    cutoff = now_ms - int(lease_s * 1000)
    seqs = [s for (s,) in store.conn.execute(
        "SELECT seq FROM claims WHERE created_ms < ? ORDER BY seq", (cutoff,))]
    for seq in seqs:
        release(store, seq, reason="expired")
    return len(seqs)


def _settle(store: Store, counts: dict[int, int], what: str) -> int:
    tx = store.tx
    total = 0
    for prio, n in counts.items():
        tx.rows[prio] -= n
        total += n
        store.bump(f"{what}.{CLASS_NAMES[Priority(prio)]}", n)
    tx.claims -= 1
    tx.claimed -= total
    return total
