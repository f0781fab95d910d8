"""The archive's directory layout and file names (pure: no I/O).

    <root>/date=2024-01-15/facility=factory_a/part-<topic>-<partition>-<first>-<last>.parquet
    <root>/date=2024-01-15/facility=factory_a/daily-<digest>.parquet

* Partitions are hive-style: `date` is the UTC day of the readings' `ts`, `facility` the
  reading's facility, percent-encoded (`a/b c` -> `a%2Fb%20c`; DuckDB and pyarrow decode it);
  a reading without a facility (or with an empty one) goes to `facility=__HIVE_DEFAULT_
  PARTITION__`, which every hive reader reads as NULL.
* A part file holds the readings of ONE Kafka partition's contiguous offset range
  `[first, last]` that fall into that directory.  The name is a function of the range, so the
  sink re-consuming the same offsets after a crash writes the same name again (an atomic
  replace, never a second copy); `cloud.sinks.parquet` explains the rest of the argument.
* A daily file is the compaction of a directory (`cloud.archive.compact`); its digest is
  derived from the names of the files it replaced, so a re-run after a crash names the same
  file.
* Only names ending in `.parquet` are data.  Work in progress carries other suffixes
  (`.tmp`, `.superseded`, `_compaction.json`), so a reader globbing `**/*.parquet` never sees
  a file before it is complete, and never a compaction's inputs together with its output.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import quote, unquote

__all__ = ["DAILY_PREFIX", "DataFile", "MANIFEST", "NULL_PARTITION", "PART_PREFIX",
           "SUPERSEDED", "TMP", "daily_name", "day_of", "day_start_ms", "decode_value",
           "encode_value", "facility_dir", "format_day", "parse_data_file", "parse_day",
           "parse_partition", "part_name", "partition_dir", "ranges_overlap"]

PART_PREFIX = "part-"
DAILY_PREFIX = "daily-"
#: hive's name for a NULL partition value; DuckDB and pyarrow read it as NULL
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
#: suffix of a file being written (not matched by `*.parquet`)
TMP = ".tmp"
#: suffix a compaction input gets once its output is about to become visible
SUPERSEDED = ".superseded"
#: a compaction's intent record, in the directory it compacts
MANIFEST = "_compaction.json"

_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
# topic names are [A-Za-z0-9._-] (Kafka's rule), so '-' separated numbers parse from the right
_PART = re.compile(r"part-(?P<topic>[A-Za-z0-9._-]+)-(?P<partition>\d+)-(?P<first>\d+)-"
                   r"(?P<last>\d+)\.parquet")
_DAILY = re.compile(r"daily-(?P<digest>[0-9a-f]{16})\.parquet")


def day_of(ts_ms: int) -> int:
    """Days since 1970-01-01 of a UTC millisecond timestamp."""
    return ts_ms // _DAY_MS


def day_start_ms(day: int) -> int:
    return day * _DAY_MS


def format_day(day: int) -> str:
    """`2024-01-15` for day 19737."""
    return (_EPOCH + timedelta(days=day)).isoformat()


def parse_day(text: str) -> int:
    """The inverse of `format_day`; ValueError for anything else."""
    return (date.fromisoformat(text) - _EPOCH).days


def encode_value(value: str | None) -> str:
    """A partition value as it appears in a path (percent-encoded; NULL_PARTITION for none)."""
    if not value:
        return NULL_PARTITION
    return quote(value, safe="")


def decode_value(text: str) -> str | None:
    return None if text == NULL_PARTITION else unquote(text)


def facility_dir(facility: str | None) -> str:
    return f"facility={encode_value(facility)}"


def partition_dir(day: int, facility: str | None) -> str:
    """`date=2024-01-15/facility=factory_a`, relative to the archive root."""
    return f"date={format_day(day)}/{facility_dir(facility)}"


def parse_partition(rel_dir: str) -> tuple[int, str | None] | None:
    """(day, facility) of a relative partition directory, or None if it is not one."""
    parts = rel_dir.strip("/").split("/")
    if len(parts) != 2 or not parts[0].startswith("date=") or \
            not parts[1].startswith("facility="):
        return None
    try:
        day = parse_day(parts[0][5:])
    except ValueError:
        return None
    return day, decode_value(parts[1][9:])


def part_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{PART_PREFIX}{topic}-{partition}-{first}-{last}.parquet"


def daily_name(inputs: Iterable[str]) -> str:
    """The name of the compaction of `inputs` (file names): the same inputs, the same name."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(inputs):
        h.update(name.encode())
        h.update(b"\0")
    return f"{DAILY_PREFIX}{h.hexdigest()}.parquet"


@dataclass(frozen=True, slots=True)
class DataFile:
    """What a data file's name says about it."""

    name: str
    #: "part" or "daily"
    kind: str
    topic: str | None = None
    partition: int | None = None
    first: int | None = None
    last: int | None = None

    def overlaps(self, topic: str, partition: int, first: int, last: int) -> bool:
        """Whether this part file holds offsets of `topic`/`partition` within [first, last]."""
        return (self.kind == "part" and self.topic == topic and self.partition == partition
                and self.first is not None and self.last is not None
                and ranges_overlap(self.first, self.last, first, last))


def ranges_overlap(a_first: int, a_last: int, b_first: int, b_last: int) -> bool:
    return a_first <= b_last and b_first <= a_last


def parse_data_file(name: str) -> DataFile | None:
    """The data file `name` (a base name), or None for anything that is not one."""
    m = _PART.fullmatch(name)
    if m is not None:
        return DataFile(name, "part", m["topic"], int(m["partition"]), int(m["first"]),
                        int(m["last"]))
    if _DAILY.fullmatch(name):
        return DataFile(name, "daily")
    return None

