"""Dead letters: refused input kept with its raw bytes, bounded, counted.

Functions of the open transaction of a `Store` (the writer thread, or the CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.buffer import space
from gateway.buffer.results import DeadLetter

if TYPE_CHECKING:
    from gateway.buffer.store import Store


def add(store: Store, items: list[tuple[bytes, str, str, str, str]], now_ms: int) -> None:
    """(raw, source, peer, reason, detail) tuples.  Over the row cap, the oldest go."""
    cap = store.settings.deadletter_max_raw
    rows = []
    for raw, source, peer, reason, detail in items:
        raw = bytes(raw)
        if len(raw) > cap:
            detail = f"{detail} (raw truncated from {len(raw)} bytes)".strip()
            raw = raw[:cap]
        rows.append((now_ms, source, peer, reason, detail, raw))
        store.bump(f"deadletter.{reason}")
    per_row = 64 + sum(len(r[5]) + len(r[4]) for r in rows) / max(1, len(rows))
    if store.tx_class is None:
        store.tx_class = space.DEADLETTER
    if not space.make_room(store, space.pages_for(store, len(rows), per_row=per_row),
                           deadletter=True):
        # full of data and no older dead letter left to make way: refuse, counted
        store.bump("deadletter_dropped.space", len(rows))
        return
    store.conn.executemany("INSERT INTO deadletter(t_ms, source, peer, reason, detail, raw)"
                           " VALUES (?, ?, ?, ?, ?, ?)", rows)
    store.tx.deadletters += len(rows)
    over = store.tx.deadletters - store.settings.deadletter_max_rows
    if over > 0:
        drop_oldest(store, over, "cap")


def drop_oldest(store: Store, n: int, reason: str) -> int:
    """Delete the `n` oldest dead letters, counted as `deadletter_dropped.<reason>`."""
    gone = store.conn.execute("DELETE FROM deadletter WHERE id IN (SELECT id FROM deadletter"
                              " ORDER BY id LIMIT ?)", (n,)).rowcount
    store.tx.deadletters -= gone
    store.bump(f"deadletter_dropped.{reason}", gone)
    return gone


def select(store: Store, *, reason: str | None = None, ids: list[int] | None = None,
           limit: int | None = None) -> list[DeadLetter]:
    """Dead letters by reason and/or id, oldest first (reads only)."""
    sql = "SELECT id, t_ms, source, peer, reason, detail, raw FROM deadletter"
    where: list[str] = []
    args: list[Any] = []
    if reason is not None:
        where.append("reason = ?")
        args.append(reason)
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        args += list(ids)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [DeadLetter(id=i, t_ms=t, source=src, peer=peer, reason=why, detail=detail,
                       raw=bytes(raw))
            for i, t, src, peer, why, detail, raw in store.conn.execute(sql, args)]


def delete(store: Store, ids: list[int], reason: str = "exported") -> int:
    """Delete dead letters by id, counted as `deadletter_dropped.<reason>`."""
    gone = 0
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        gone += store.conn.execute(
            f"DELETE FROM deadletter WHERE id IN ({','.join('?' * len(chunk))})",
            chunk).rowcount
    store.tx.deadletters -= gone
    store.bump(f"deadletter_dropped.{reason}", gone)
    return gone
