"""The gateway's store-and-forward buffer: SQLite in WAL mode, group commit, bounded by bytes.

Invariants (each is checked by tests/unit/test_buffer_model.py after every step):

1. A reading acknowledged to a sensor is in a committed transaction: `append(durable=True)`
   resolves only after the COMMIT of the transaction holding its rows returned (with
   synchronous=FULL, after the WAL was fsynced).
2. A claimed row is deleted only by the ack of its claim.  Eviction and purge touch unclaimed
   rows only.
3. A row is in at most one claim (`claim_id` is a single column), and a claim survives
   restarts unchanged — same rows, same sequence number — until acknowledged or released.
4. Alerts are never evicted.  Aggregates are evicted only when no unclaimed raw reading is
   left to evict.
5. Every removal that is not an ack is counted with a reason in the same transaction
   (`dropped.evicted.*`, `dropped.purged.*`, `deadletter_dropped.*`, `dedup_pruned.*`), and
   every record not stored is reported to its caller and counted (`refused.*`,
   `duplicates.*`).  Counters are persistent.
6. After every commit the database file holds at most `max_bytes - wal_limit` bytes, and the
   WAL is checkpointed back under `wal_limit` whenever a commit grew it past that, so file +
   WAL stay within `max_bytes` (plus one transaction's WAL frames until that checkpoint).
7. A record is stored at most once per de-duplication key (sensor time + idempotency key),
   also after it was sent, for `dedup_horizon_s` / `dedup_max_keys`.
8. Sequence numbers are strictly increasing and never reused, across restarts and power loss
   (claim commits are always fsynced) and across a deleted and recreated file.

Public API: `Buffer` (async), `BufferSettings`, `Synchronous`, `Eviction`, `AppendResult`,
`Claim`, `ClaimedRow`, `DeadLetter`, `BufferStats`.  `Store` is the synchronous core (the CLI
and tests use it directly).  The design and measured figures are in docs/buffer.md.
"""

from gateway.buffer.buffer import Buffer
from gateway.buffer.results import (
    AppendResult,
    BufferStats,
    Claim,
    ClaimedRow,
    DeadLetter,
)
from gateway.buffer.settings import BufferSettings, Eviction, Synchronous
from gateway.buffer.store import Store

__all__ = [
    "AppendResult", "Buffer", "BufferSettings", "BufferStats", "Claim", "ClaimedRow",
    "DeadLetter", "Eviction", "Store", "Synchronous",
]
