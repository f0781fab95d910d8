"""Plain settings of the buffer.  The config-file mapping (`buffer:` in gateway.yaml) lives in
the gateway's config model; this module knows nothing about files."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edge.errors import ConfigError

KIB = 1024
MIB = 1024 * 1024


class Synchronous(StrEnum):
    """SQLite `PRAGMA synchronous` for ordinary commits.

    FULL: every commit fsyncs the WAL before `append(durable=True)` resolves, so an
    acknowledged reading survives a power loss.  NORMAL: a commit is written to the WAL but
    fsynced only at checkpoints; it survives a process crash (SIGKILL, OOM kill) but the last
    commits before a power loss may be lost.  Claim commits are always fsynced (see claims).
    """

    FULL = "FULL"
    NORMAL = "NORMAL"


class Eviction(StrEnum):
    """Which raw readings go first when the byte cap is reached."""

    #: drop the oldest unclaimed raw readings (keep the freshest data)
    OLDEST_FIRST = "oldest_first"
    #: drop the newest stored unclaimed raw readings (keep history; the newest commit stays)
    NEWEST_FIRST = "newest_first"


@dataclass(frozen=True, slots=True)
class BufferSettings:
    path: str
    #: cap on the database file plus its WAL, in bytes (the -shm index, 32 KiB, is not counted)
    max_bytes: int = 256 * MIB
    #: a group commit closes this long after its first item arrived (0: commit at once)
    commit_interval_ms: float = 5.0
    #: ... or as soon as this many readings are waiting
    commit_max_readings: int = 1000
    synchronous: Synchronous = Synchronous.FULL
    eviction: Eviction = Eviction.OLDEST_FIRST
    #: dead letters kept; beyond it the oldest are dropped and counted
    deadletter_max_rows: int = 10_000
    #: raw bytes kept per dead letter; longer payloads are truncated (noted in `detail`)
    deadletter_max_raw: int = 64 * KIB
    #: keys of acknowledged (sent) rows are kept this long to recognise late redeliveries
    dedup_horizon_s: float = 3600.0
    #: ... and at most this many of them
    dedup_max_keys: int = 200_000
    #: readings received within this window count as "live" for `claim(live_share=...)`
    live_window_ms: int = 5000
    live_share: float = 0.3
    #: at open, claims older than this are released instead of re-offered (None: never)
    claim_lease_s: float | None = None
    #: the WAL is checkpointed and truncated when it grows past this (None: derived)
    wal_max_bytes: int | None = None
    #: free pages beyond this are returned to the filesystem (incremental vacuum)
    reclaim_free_bytes: int | None = None
    #: readings queued for the writer thread beyond this are refused (back-pressure)
    max_pending_readings: int = 100_000
    page_size: int = 4096
    #: SQLite page cache per connection, KiB
    cache_kib: int = 8192
    #: run `PRAGMA quick_check` at open (reads the whole file; seconds for a large buffer)
    check_at_open: bool = True
    #: seconds the writer waits for a lock held by another process (the operator CLI)
    busy_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if not self.path:
            problems.append(("path", "must name a file"))
        if self.max_bytes < 256 * KIB:
            problems.append(("max_bytes", "must be at least 262144 (256 KiB)"))
        if not 0 <= self.commit_interval_ms <= 10_000:
            problems.append(("commit_interval_ms", "must be within 0..10000"))
        if self.commit_max_readings < 1:
            problems.append(("commit_max_readings", "must be >= 1"))
        if self.deadletter_max_rows < 1:
            problems.append(("deadletter_max_rows", "must be >= 1"))
        if self.deadletter_max_raw < 0:
            problems.append(("deadletter_max_raw", "must be >= 0"))
        if self.dedup_horizon_s < 0 or self.dedup_max_keys < 0:
            problems.append(("dedup_horizon_s", "dedup horizon and key cap must be >= 0"))
        if not 0.0 <= self.live_share <= 1.0:
            problems.append(("live_share", "must be within 0..1"))
        if self.page_size not in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
            problems.append(("page_size", "must be a power of two from 1024 to 65536"))
        if self.wal_max_bytes is not None and not (
                16 * self.page_size <= self.wal_max_bytes <= self.max_bytes // 2):
            problems.append(("wal_max_bytes", "must be within 16 pages .. max_bytes/2"))
        if self.max_pending_readings < self.commit_max_readings:
            problems.append(("max_pending_readings", "must be >= commit_max_readings"))
        try:
            Synchronous(self.synchronous)
            Eviction(self.eviction)
        except ValueError as exc:
            problems.append(("synchronous/eviction", str(exc)))
        if problems:
            raise ConfigError("buffer settings", [(f"buffer.{k}", v) for k, v in problems])

    @property
    def wal_limit(self) -> int:
        """Bytes the WAL may occupy after a commit; reserved out of `max_bytes`."""
        if self.wal_max_bytes is not None:
            return self.wal_max_bytes
        return max(16 * self.page_size, min(16 * MIB, self.max_bytes // 8))

    @property
    def db_budget_pages(self) -> int:
        """Pages the main database file may hold: max_bytes minus the WAL reserve."""
        return (self.max_bytes - self.wal_limit) // self.page_size

    @property
    def reclaim_threshold(self) -> int:
        if self.reclaim_free_bytes is not None:
            return self.reclaim_free_bytes
        return max(4 * MIB, self.max_bytes // 4)
