"""Values the buffer hands out: append results, claims, dead letters, statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from edge.model import Event, Priority, Reading

#: class names used as metric labels and CLI arguments, by priority
CLASS_NAMES: dict[Priority, str] = {
    Priority.RAW: "raw", Priority.AGGREGATE: "aggregate", Priority.ALERT: "alert"}
CLASS_BY_NAME: dict[str, Priority] = {v: k for k, v in CLASS_NAMES.items()}


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What became of one `append()` / `append_events()` call.

    A durable call resolves after its commit: `stored + duplicates + refused` equals the
    number of records given.  A non-durable call resolves at enqueue with everything in
    `pending`; its outcome is counted in the statistics when it commits.
    """

    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    refused_reason: str | None = None
    pending: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was refused (the ingress may acknowledge)."""
        return self.refused == 0


class ClaimedRow(NamedTuple):
    """One row of a claim.  `id` is unique within its class table (raw vs events)."""

    id: int
    priority: Priority
    #: the idempotency key the row was de-duplicated by (`Reading.idempotency_key()` /
    #: `Event.key`)
    key: bytes
    record: Reading | Event


@dataclass(frozen=True, slots=True)
class Claim:
    """Rows handed to the uplink as one batch, identified by its sequence number.

    `seq` is the claim id and the batch sequence number at once: strictly increasing, never
    reused (also across a deleted and recreated file: it starts at creation time in ms x
    1000), and persisted before the claim is returned.  Rows are ordered alerts, then
    aggregates, then raw, each by ascending id, so ids are monotonic per device within a class.
    """

    seq: int
    created_ms: int
    rows: tuple[ClaimedRow, ...]
    #: opaque bytes the uplink stored with `set_claim_meta()` (e.g. the encoded frame)
    meta: bytes | None = None

    @property
    def claim_id(self) -> int:
        return self.seq

    @property
    def readings(self) -> list[Reading]:
        return [r.record for r in self.rows if isinstance(r.record, Reading)]

    @property
    def events(self) -> list[Event]:
        return [r.record for r in self.rows if isinstance(r.record, Event)]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    t_ms: int
    source: str
    peer: str
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True)
class BufferStats:
    """A snapshot, refreshed after every commit; `stats()` is cheap.

    Counters (`appended` … `counters`) are persistent: they survive restarts because they are
    updated inside the same transactions as the rows they count.  Commit timings are since
    the process started.
    """

    #: rows present, by class name ("raw", "aggregate", "alert"), claimed ones included
    rows: dict[str, int]
    claimed_rows: int
    claims_in_flight: int
    db_bytes: int
    wal_bytes: int
    #: pages in use (not on the free list) x page size
    used_bytes: int
    #: an estimate of `used_bytes` per class: rows x the bytes a row was measured to take
    #: (raw: learnt from inserts; events: a fixed 200 B)
    est_bytes_by_class: dict[str, int]
    max_bytes: int
    #: now minus the receive time of the oldest row not yet acknowledged; None when empty
    oldest_unsent_age_ms: int | None
    seen_keys: int
    dead_letter_rows: int
    #: persistent, by class name
    appended: dict[str, int]
    duplicates: dict[str, int]
    acked: dict[str, int]
    #: persistent, reason -> class name -> rows removed without an ack
    dropped: dict[str, dict[str, int]]
    #: persistent, reason -> class name -> records not stored (the caller was told)
    refused: dict[str, dict[str, int]]
    #: persistent, reason -> dead letters received
    dead_letters: dict[str, int]
    #: persistent, reason -> dead letters removed (cap, space, replayed)
    dead_letters_dropped: dict[str, int]
    #: every persistent counter, flat ("dropped.evicted.raw": 12, ...)
    counters: dict[str, int]
    commits: int = 0
    #: commits that fsynced (synchronous=FULL, and every claim commit)
    sync_commits: int = 0
    checkpoints: int = 0
    commit_ms_last: float = 0.0
    commit_ms_avg: float = 0.0
    commit_ms_max: float = 0.0
    group_size_last: int = 0
    group_size_avg: float = 0.0
    #: readings handed to the writer and not yet committed
    pending_readings: int = 0
    schema_version: int = 0

    @property
    def disk_bytes(self) -> int:
        return self.db_bytes + self.wal_bytes
