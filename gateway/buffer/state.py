"""In-memory mirrors of the buffer file: row counts, claims (raw rows as id ranges),
counters.  Owned by `Store`; the committed copy is never mutated, so `stats()` can read it
from the event loop thread while the writer works on a copy."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from edge.model import Priority
from gateway.buffer.results import CLASS_NAMES

RAW, AGG, ALERT = int(Priority.RAW), int(Priority.AGGREGATE), int(Priority.ALERT)
#: a claim's raw readings, as packed (first id, last id) pairs
_RANGE = struct.Struct("<qq")


def pack_ranges(ranges: tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(_RANGE.pack(a, b) for a, b in ranges)


def unpack_ranges(blob: bytes) -> tuple[tuple[int, int], ...]:
    return tuple(_RANGE.iter_unpack(bytes(blob)))


CLASS = {int(p): name for p, name in CLASS_NAMES.items()}

#: what an aggregate or alert row takes on disk, roughly (for the per-class estimate)
EVENT_BYTES_EST = 200
#: above any row id SQLite hands out
MAX_ID = 2**63 - 1


class ClaimInfo(NamedTuple):
    #: inclusive id ranges of the claimed raw readings, ascending
    ranges: tuple[tuple[int, int], ...]
    n_raw: int
    n_events: int


@dataclass
class State:
    """In-memory mirror of what the file holds; the committed copy is never mutated."""

    rows: dict[int, int] = field(default_factory=lambda: {RAW: 0, AGG: 0, ALERT: 0})
    claims: dict[int, ClaimInfo] = field(default_factory=dict)
    seen: int = 0
    deadletters: int = 0
    next_seq: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def copy(self) -> State:
        return replace(self, rows=dict(self.rows), claims=dict(self.claims),
                       counters=dict(self.counters))

    @property
    def claimed(self) -> int:
        return sum(c.n_raw + c.n_events for c in self.claims.values())

    @property
    def claimed_raw(self) -> int:
        return sum(c.n_raw for c in self.claims.values())

    def claimed_ranges(self) -> list[tuple[int, int, int]]:
        """(first id, last id, seq) of every claimed raw range, ascending."""
        return sorted((a, b, seq) for seq, c in self.claims.items() for a, b in c.ranges)

    def raw_gaps(self) -> list[tuple[int, int]]:
        """Inclusive id ranges holding only unclaimed raw readings, ascending."""
        gaps = []
        lo = 0
        for a, b, _seq in self.claimed_ranges():
            if a > lo:
                gaps.append((lo, a - 1))
            lo = max(lo, b + 1)
        gaps.append((lo, MAX_ID))
        return gaps

    def raw_claim_of(self, row_id: int) -> int | None:
        for a, b, seq in self.claimed_ranges():
            if a <= row_id <= b:
                return seq
        return None


@dataclass
class Timings:
    commits: int = 0
    sync_commits: int = 0
    checkpoints: int = 0
    commit_ms_last: float = 0.0
    commit_ms_total: float = 0.0
    commit_ms_max: float = 0.0
    group_last: int = 0
    group_total: int = 0
