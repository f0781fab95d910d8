"""What the archive holds, per day and tier (`fieldlink cloud archive stats`).

Tiers of a day's data, oldest last:

    warm       part files written by the sink, not yet due for compaction
    due        old enough to compact (compact_after_days) but not compacted yet
    compacted  one daily file per directory (late readings may add part files again: "due")
    expiring   older than expire_after_days: the next `archive expire` deletes it

(The hot tier is InfluxDB, with its own retention; the archive keeps every reading.)
Row counts come from the Parquet footers (one small read per file; `rows=False` skips them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from cloud.archive.compact import needs_compaction
from cloud.archive.expire import is_expired
from cloud.archive.layout import day_start_ms, format_day, parse_data_file, parse_partition
from cloud.archive.store import ArchiveStore

__all__ = ["DayStats", "archive_stats"]

_DAY_MS = 86_400_000


@dataclass
class DayStats:
    day: str
    tier: str
    facilities: int = 0
    part_files: int = 0
    daily_files: int = 0
    other_files: int = 0
    bytes: int = 0
    rows: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ArchiveStats:
    root: str
    days: list[DayStats] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        rows = [d.rows for d in self.days]
        total_rows = None if any(r is None for r in rows) else sum(r or 0 for r in rows)
        total_bytes = sum(d.bytes for d in self.days)
        tiers: dict[str, int] = {}
        for d in self.days:
            tiers[d.tier] = tiers.get(d.tier, 0) + 1
        return {
            "days": len(self.days), "bytes": total_bytes, "rows": total_rows,
            "bytes_per_row": round(total_bytes / total_rows, 3) if total_rows else None,
            "files": sum(d.part_files + d.daily_files for d in self.days),
            "oldest": self.days[0].day if self.days else None,
            "newest": self.days[-1].day if self.days else None, "tiers": tiers}

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "totals": self.totals,
                "days": [d.as_dict() for d in self.days]}


def archive_stats(store: ArchiveStore, now_ms: int, *, compact_after_days: float | None,
                  expire_after_days: float | None, rows: bool = True) -> ArchiveStats:
    by_day: dict[int, DayStats] = {}
    facilities: dict[int, set[str | None]] = {}
    listing: dict[str, list[tuple[str, int]]] = {}
    for rel_dir, name, size in store.files():
        listing.setdefault(rel_dir, []).append((name, size))
    for rel_dir, entries in sorted(listing.items()):
        names = [n for n, _ in entries]
        parsed = parse_partition(rel_dir)
        if parsed is None:
            continue
        day, facility = parsed
        stats = by_day.get(day)
        if stats is None:
            stats = by_day[day] = DayStats(format_day(day), "compacted")
            if not rows:
                stats.rows = None
        facilities.setdefault(day, set()).add(facility)
        for name, size in entries:
            f = parse_data_file(name)
            stats.bytes += size
            if f is None:
                stats.other_files += 1
                continue
            if f.kind == "part":
                stats.part_files += 1
            else:
                stats.daily_files += 1
            if rows:
                with store.open(f"{rel_dir}/{name}") as fh:
                    stats.rows = (stats.rows or 0) + pq.read_metadata(fh).num_rows
        if needs_compaction(names):
            ready = compact_after_days is not None and \
                day_start_ms(day + 1) + compact_after_days * _DAY_MS <= now_ms
            rank = "due" if ready else "warm"
            if stats.tier == "compacted" or rank == "warm":
                stats.tier = rank
    for day, stats in by_day.items():
        stats.facilities = len(facilities[day])
        if expire_after_days is not None and is_expired(day, now_ms, expire_after_days):
            stats.tier = "expiring"
    return ArchiveStats(store.url, [by_day[d] for d in sorted(by_day)])
