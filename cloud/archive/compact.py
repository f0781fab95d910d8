"""Compaction: the files of an old partition directory merged into one daily file.

    results = compact(store, now_ms, after_days=1.0)     # every directory that is due
    result = compact_dir(store, "date=2024-01-15/facility=factory_a")

A directory is due once its whole day is `after_days` behind `now` and it holds a part file
or more than one file (a directory with one daily file is done; late readings arriving
afterwards add part files, and the next run merges them into a new daily file).

Merging reads every data file, drops rows whose idempotency key an earlier row has (daily
file first, then part files by topic, partition and offset: the first copy wins; the key is
recomputed from each row's columns, `rows.row_keys` — a `key` column of files written before
it was dropped is ignored, so compaction drops it), sorts by device then time, and writes
`daily-<digest>.parquet` (`layout.daily_name` of the inputs).

Crash safety — a reader globbing `**/*.parquet` never sees an input and the output together,
and an interrupted run is finished (or undone) by the next:

1. write the output as `daily-<digest>.parquet.tmp` (fsynced; invisible to readers);
2. write `_compaction.json` {"output": ..., "inputs": [...]} (atomic): the point of no return;
3. rename each input to `<name>.superseded` (invisible);
4. rename the output to its final name (visible);
5. delete the superseded inputs, then the manifest.

`recover(store, dir)` (run first by `compact_dir`): with a manifest whose output (final or
.tmp) exists, steps 3-5 are completed; with a manifest but no output, the inputs are renamed
back and the manifest removed; without a manifest, leftover `daily-*.parquet.tmp` files are
deleted.  Between steps 3 and 4 the directory's readings are briefly invisible (milliseconds
on a local disk): a query may under-count then, never double-count.

Run one compaction at a time per archive (a cron job / systemd timer): two runs on the same
directory at once are not coordinated.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cloud.archive.layout import (
    MANIFEST,
    SUPERSEDED,
    TMP,
    DataFile,
    daily_name,
    day_start_ms,
    parse_data_file,
    parse_partition,
)
from cloud.archive.rows import SCHEMA, dedupe, parquet_bytes, sort_rows
from cloud.archive.store import ArchiveStore

__all__ = ["CompactionResult", "compact", "compact_dir", "due_dirs", "recover"]

log = logging.getLogger("fieldlink.cloud.archive")

_DAY_MS = 86_400_000


@dataclass
class CompactionResult:
    directory: str
    inputs: list[str] = field(default_factory=list)
    output: str | None = None
    rows_in: int = 0
    rows_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    recovered: str | None = None

    @property
    def duplicates(self) -> int:
        return self.rows_in - self.rows_out

    def as_dict(self) -> dict[str, object]:
        return {"directory": self.directory, "inputs": len(self.inputs), "output": self.output,
                "rows_in": self.rows_in, "rows_out": self.rows_out,
                "duplicates": self.duplicates, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "recovered": self.recovered}


def _order(f: DataFile) -> tuple[int, str, int, int]:
    if f.kind == "daily":
        return (0, f.name, 0, 0)
    return (1, f.topic or "", f.partition or 0, f.first or 0)


def data_files(names: list[str]) -> list[DataFile]:
    """The data files among `names`, in merge order (daily first, then by offsets)."""
    files = [f for f in map(parse_data_file, names) if f is not None]
    return sorted(files, key=_order)


def needs_compaction(names: list[str]) -> bool:
    files = data_files(names)
    if MANIFEST in names:
        return True
    return bool(files) and not (len(files) == 1 and files[0].kind == "daily")


def due_dirs(store: ArchiveStore, now_ms: int, after_days: float) -> list[str]:
    """Partition directories whose day ended `after_days` ago and that need compaction."""
    out = []
    for rel_dir, names in sorted(store.partitions().items()):
        parsed = parse_partition(rel_dir)
        if parsed is None:
            continue
        day, _ = parsed
        if day_start_ms(day + 1) + after_days * _DAY_MS > now_ms:
            continue
        if needs_compaction(names) or any(n.startswith("daily-") and n.endswith(TMP)
                                          for n in names):
            out.append(rel_dir)
    return out


def _read_manifest(store: ArchiveStore, rel_dir: str) -> dict[str, Any] | None:
    try:
        data = store.read_bytes(f"{rel_dir}/{MANIFEST}")
    except FileNotFoundError:
        return None
    manifest = json.loads(data)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), str) or \
            not isinstance(manifest.get("inputs"), list):
        raise ValueError(f"{rel_dir}/{MANIFEST} is not a compaction manifest: {manifest!r}")
    return manifest


def _finish(store: ArchiveStore, rel_dir: str, output: str, inputs: list[str]) -> None:
    """Steps 3-5: hide the inputs, publish the output, delete the inputs and the manifest."""
    names = set(store.list_dir(rel_dir))
    for name in inputs:
        if name in names:
            store.rename(f"{rel_dir}/{name}", f"{rel_dir}/{name}{SUPERSEDED}")
    if output + TMP in names:
        store.rename(f"{rel_dir}/{output}{TMP}", f"{rel_dir}/{output}")
    for name in inputs:
        store.delete(f"{rel_dir}/{name}{SUPERSEDED}")
    store.delete(f"{rel_dir}/{MANIFEST}")


def recover(store: ArchiveStore, rel_dir: str) -> str | None:
    """Complete or undo an interrupted compaction of `rel_dir`; what was done, or None."""
    manifest = _read_manifest(store, rel_dir)
    names = set(store.list_dir(rel_dir))
    if manifest is None:
        stale = [n for n in names if n.startswith("daily-") and n.endswith(TMP)]
        for name in stale:
            store.delete(f"{rel_dir}/{name}")
        return f"removed {len(stale)} unfinished output(s)" if stale else None
    output = str(manifest["output"])
    inputs = [str(n) for n in manifest["inputs"]]
    if output in names or output + TMP in names:
        _finish(store, rel_dir, output, inputs)
        return f"completed the compaction into {output}"
    for name in inputs:
        if name + SUPERSEDED in names:
            store.rename(f"{rel_dir}/{name}{SUPERSEDED}", f"{rel_dir}/{name}")
    store.delete(f"{rel_dir}/{MANIFEST}")
    return "undid a compaction whose output was lost"


def _read_table(store: ArchiveStore, rel: str) -> pa.Table:
    table = pq.read_table(io.BytesIO(store.read_bytes(rel)))
    return table.select(SCHEMA.names).cast(SCHEMA)


def compact_dir(store: ArchiveStore, rel_dir: str, *,
                compression_level: int = 6) -> CompactionResult:
    """Merge the data files of `rel_dir` into one daily file (see the module docstring)."""
    result = CompactionResult(rel_dir)
    result.recovered = recover(store, rel_dir)
    if result.recovered:
        log.warning("interrupted compaction recovered", extra={"fields": {
            "directory": rel_dir, "action": result.recovered}})
    names = store.list_dir(rel_dir)
    if not needs_compaction(names):
        return result
    files = data_files(names)
    tables = []
    for f in files:
        rel = f"{rel_dir}/{f.name}"
        tables.append(_read_table(store, rel))
        result.bytes_in += store.size(rel)
    merged = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    result.inputs = [f.name for f in files]
    result.rows_in = merged.num_rows
    table = sort_rows(dedupe(merged))
    result.rows_out = table.num_rows
    output = daily_name(result.inputs)
    data = parquet_bytes(table, compression_level=compression_level)
    store.write_tmp(f"{rel_dir}/{output}{TMP}", data)
    store.write_atomic(f"{rel_dir}/{MANIFEST}",
                       json.dumps({"output": output, "inputs": result.inputs}).encode())
    _finish(store, rel_dir, output, result.inputs)
    result.output = output
    result.bytes_out = len(data)
    log.info("partition compacted", extra={"fields": result.as_dict()})
    return result


def compact(store: ArchiveStore, now_ms: int, after_days: float, *,
            dry_run: bool = False, compression_level: int = 6) -> list[CompactionResult]:
    """Compact every directory that is due; with `dry_run`, only say which."""
    out = []
    for rel_dir in due_dirs(store, now_ms, after_days):
        if dry_run:
            out.append(CompactionResult(rel_dir, inputs=[
                f.name for f in data_files(store.list_dir(rel_dir))]))
            continue
        out.append(compact_dir(store, rel_dir, compression_level=compression_level))
    return out
