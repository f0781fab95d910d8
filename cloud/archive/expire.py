"""Expiry: partition directories whose day is older than `expire_after_days` are deleted.

    result = expire(store, now_ms, after_days=365)

A day is expired once `after_days` have passed since it ENDED (UTC), the same clock as
compaction's.  Every file of its directories goes (data files, and any leftover of an
interrupted write or compaction), then the emptied directories.  Deleting is idempotent: an
interrupted run is finished by the next one.  A query running meanwhile may see part of an
expiring day — it is on its way out either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cloud.archive.layout import day_start_ms, format_day, parse_partition
from cloud.archive.store import ArchiveStore

__all__ = ["ExpiryResult", "expire", "expired_days"]

log = logging.getLogger("fieldlink.cloud.archive")

_DAY_MS = 86_400_000


@dataclass
class ExpiryResult:
    days: list[str] = field(default_factory=list)
    directories: int = 0
    files: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"days": self.days, "directories": self.directories, "files": self.files,
                "bytes": self.bytes}


def is_expired(day: int, now_ms: int, after_days: float) -> bool:
    return day_start_ms(day + 1) + after_days * _DAY_MS <= now_ms


def expired_days(store: ArchiveStore, now_ms: int, after_days: float) -> list[int]:
    days = set()
    for rel_dir in store.partitions():
        parsed = parse_partition(rel_dir)
        if parsed is not None and is_expired(parsed[0], now_ms, after_days):
            days.add(parsed[0])
    return sorted(days)


def expire(store: ArchiveStore, now_ms: int, after_days: float, *,
           dry_run: bool = False) -> ExpiryResult:
    """Delete (or with `dry_run` only count) every expired day's files."""
    if after_days <= 0:
        raise ValueError("after_days must be positive")
    result = ExpiryResult()
    dirs: set[str] = set()
    days: set[int] = set()
    for rel_dir, name, size in store.files():
        parsed = parse_partition(rel_dir)
        if parsed is None or not is_expired(parsed[0], now_ms, after_days):
            continue
        days.add(parsed[0])
        dirs.add(rel_dir)
        result.files += 1
        result.bytes += size
        if not dry_run:
            store.delete(f"{rel_dir}/{name}")
    if not dry_run:
        for rel_dir in sorted(dirs):
            store.remove_empty_dirs(rel_dir)
    result.days = [format_day(d) for d in sorted(days)]
    result.directories = len(dirs)
    if result.files and not dry_run:
        log.info("archive days expired", extra={"fields": result.as_dict()})
    return result
