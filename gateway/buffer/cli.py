"""`fieldlink gateway queue …`: inspect and manage the store-and-forward buffer.

Works on the buffer file directly, also while the gateway runs (SQLite locking keeps both
consistent; the gateway reloads its counters when it sees another process committed).

    fieldlink gateway queue stats [--json]
    fieldlink gateway queue peek [-n 20] [--class raw]
    fieldlink gateway queue replay-deadletter [--reason R] [--id N ...] [--out FILE] [--delete]
    fieldlink gateway queue purge --class raw --older-than 2h --yes

The file is `--db PATH`, or `buffer.path` of `--config FILE` (default config/gateway.yaml).
Exit codes: 0 done, 1 refused (purge without --yes), 2 usage error or no buffer file.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import yaml

from edge.clock import Clock, SystemClock
from edge.errors import FieldlinkError
from edge.model import Event, Priority, Reading
from gateway.buffer import deadletters
from gateway.buffer.results import CLASS_BY_NAME, CLASS_NAMES, BufferStats, DeadLetter
from gateway.buffer.settings import BufferSettings
from gateway.buffer.store import Store

DEFAULT_CONFIG = "config/gateway.yaml"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class UsageError(Exception):
    pass


def parse_duration(text: str) -> float:
    """'90' / '90s' / '15m' / '2h' / '1d' / '500ms' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 2h, 1d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("buffer file")
    where.add_argument("--db", metavar="PATH", help="the buffer's SQLite file")
    where.add_argument("--config", metavar="FILE",
                       help=f"read buffer.path from this gateway config (default "
                            f"{DEFAULT_CONFIG} when --db is not given)")
    p = argparse.ArgumentParser(
        prog="fieldlink gateway queue",
        description="Inspect and manage the gateway's store-and-forward buffer.",
        epilog="Every removal is counted (purge: dropped.purged.<class>; exported dead "
               "letters: deadletter_dropped.exported) and shown by `stats`.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    st = sub.add_parser("stats", parents=[common], help="rows, bytes, age, claims, counters",
                        description="Rows per class, bytes on disk, age of the oldest unsent "
                                    "row, claims in flight, and every persistent counter.")
    st.add_argument("--json", action="store_true", help="one JSON object instead of text")

    pk = sub.add_parser("peek", parents=[common], help="the next rows to be sent, as JSON lines",
                        description="Print the first N rows in send order (alerts, "
                                    "aggregates, raw) as JSON lines.")
    pk.add_argument("-n", type=int, default=20, help="how many rows (default 20)")
    pk.add_argument("--class", dest="classes", action="append", choices=sorted(CLASS_BY_NAME),
                    help="only this class (repeatable)")

    rd = sub.add_parser(
        "replay-deadletter", parents=[common], help="export dead letters for re-publishing",
        description="Write dead letters as JSON lines (id, time, source, peer, reason, detail, "
                    "raw_b64) to stdout or --out, e.g. to re-publish them after fixing a "
                    "decoder or a device registration.  With --delete the exported ones are "
                    "removed from the buffer after the output was written and synced.")
    rd.add_argument("--reason", help="only dead letters with this reason")
    rd.add_argument("--id", dest="ids", type=int, action="append", help="only this id "
                    "(repeatable)")
    rd.add_argument("--limit", type=int, help="at most this many")
    rd.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    rd.add_argument("--delete", action="store_true", help="delete what was exported")

    pg = sub.add_parser(
        "purge", parents=[common], help="delete unsent rows (requires --yes)",
        description="Delete unclaimed rows by class and age.  Rows in a claim (being sent) "
                    "are never purged.  Without --yes only prints what would be deleted.")
    pg.add_argument("--class", dest="classes", action="append", choices=sorted(CLASS_BY_NAME),
                    help="class to purge (repeatable)")
    pg.add_argument("--all", action="store_true", help="every class, alerts included")
    pg.add_argument("--older-than", type=parse_duration, metavar="DURATION",
                    help="only rows received longer ago than this (e.g. 30m, 2h, 7d)")
    pg.add_argument("--yes", action="store_true", help="really delete")
    return p


def resolve_db(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    config = args.config or DEFAULT_CONFIG
    try:
        with open(config) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise UsageError(f"give --db PATH, or --config FILE with buffer.path "
                         f"({config}: {exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{config}: invalid YAML: {exc}") from None
    path = (data.get("buffer") or {}).get("path") if isinstance(data, dict) else None
    if not path:
        raise UsageError(f"{config}: no buffer.path; give --db PATH")
    return str(path)


def open_store(path: str, clock: Clock) -> Store:
    if not os.path.exists(path):
        raise UsageError(f"no buffer file at {path}")
    return Store.open(BufferSettings(path=path, check_at_open=False), clock, create=False)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         clock: Clock | None = None) -> int:
    out = out or sys.stdout
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        store = open_store(resolve_db(args), clock or SystemClock())
    except UsageError as exc:
        print(f"fieldlink gateway queue: {exc}", file=sys.stderr)
        return 2
    except FieldlinkError as exc:
        print(f"fieldlink gateway queue: {exc.message}", file=sys.stderr)
        return 2
    try:
        command: Callable[[Store, argparse.Namespace, TextIO], int] = {
            "stats": cmd_stats, "peek": cmd_peek, "replay-deadletter": cmd_replay,
            "purge": cmd_purge}[args.command]
        return command(store, args, out)
    except FieldlinkError as exc:
        print(f"fieldlink gateway queue: {exc.message}", file=sys.stderr)
        return 2
    finally:
        store.close(checkpoint=False)


# -- commands ----------------------------------------------------------------------------------
def _snapshot(store: Store) -> BufferStats:
    st = store.snapshot(store.clock.now_ms())
    recorded = store.recorded_max_bytes()
    return dataclasses.replace(st, max_bytes=recorded) if recorded else st


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _nested(d: dict[str, dict[str, int]]) -> str:
    parts = [f"{reason} {cls} {n}" for reason, by in sorted(d.items())
             for cls, n in sorted(by.items()) if n]
    return ", ".join(parts) or "none"


def cmd_stats(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    st = _snapshot(store)
    if args.json:
        obj: dict[str, Any] = dataclasses.asdict(st)
        obj["disk_bytes"] = st.disk_bytes
        obj["path"] = store.settings.path
        print(json.dumps(obj, sort_keys=True), file=out)
        return 0
    age = "-" if st.oldest_unsent_age_ms is None else f"{st.oldest_unsent_age_ms / 1000:.1f} s"
    lines = [
        f"buffer {store.settings.path} (schema v{st.schema_version})",
        "rows: " + ", ".join(f"{c} {n}" for c, n in st.rows.items())
        + f"  (claimed {st.claimed_rows} in {st.claims_in_flight} claim(s))",
        f"disk: {_size(st.db_bytes)} db + {_size(st.wal_bytes)} wal = {_size(st.disk_bytes)}"
        f" of {_size(st.max_bytes)} (pages in use {_size(st.used_bytes)})",
        f"oldest unsent: {age}",
        "appended: " + ", ".join(f"{c} {n}" for c, n in st.appended.items()),
        "duplicates: " + ", ".join(f"{c} {n}" for c, n in st.duplicates.items()),
        "acked: " + ", ".join(f"{c} {n}" for c, n in st.acked.items()),
        f"dropped: {_nested(st.dropped)}",
        f"refused: {_nested(st.refused)}",
        f"dead letters: {st.dead_letter_rows} kept; received "
        + (", ".join(f"{r} {n}" for r, n in sorted(st.dead_letters.items())) or "none")
        + "; removed "
        + (", ".join(f"{r} {n}" for r, n in sorted(st.dead_letters_dropped.items())) or "none"),
        f"dedup keys of sent rows: {st.seen_keys}",
    ]
    print("\n".join(lines), file=out)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


def record_json(priority: Priority, row_id: int, claim: int | None,
                record: Reading | Event) -> dict[str, Any]:
    obj: dict[str, Any] = {"class": CLASS_NAMES[priority], "id": row_id, "claim": claim}
    if isinstance(record, Reading):
        obj["key"] = record.idempotency_key().hex()
        obj.update(dataclasses.asdict(record))
    else:
        obj.update(kind=record.kind, key=record.key.hex(), ts_ms=record.ts_ms,
                   device_id=record.device_id, body=record.body)
    return obj


def cmd_peek(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    classes = [CLASS_BY_NAME[c] for c in args.classes] if args.classes else None
    for priority, row_id, claim, record in store.peek(max(0, args.n), classes):
        print(json.dumps(record_json(priority, row_id, claim, record), default=_json_default),
              file=out)
    return 0


def export_dead_letters(store: Store, handler: Callable[[DeadLetter], None], *,
                        reason: str | None = None, ids: list[int] | None = None,
                        limit: int | None = None, delete: bool = False,
                        before_delete: Callable[[], None] | None = None) -> int:
    """Hand each selected dead letter to `handler`; then, with `delete`, remove those that
    were handled (after `before_delete`, e.g. an fsync of the output).  Returns how many."""
    letters = deadletters.select(store, reason=reason, ids=ids, limit=limit)
    done = []
    for dl in letters:
        handler(dl)
        done.append(dl.id)
    if delete and done:
        if before_delete is not None:
            before_delete()
        with store.transaction():
            deadletters.delete(store, done, "exported")
    return len(done)


def cmd_replay(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    sink = open(args.out, "a") if args.out else out  # noqa: SIM115 - closed below

    def write(dl: DeadLetter) -> None:
        obj = dataclasses.asdict(dl)
        obj["raw_b64"] = base64.b64encode(obj.pop("raw")).decode()
        print(json.dumps(obj), file=sink)

    def sync() -> None:
        sink.flush()
        if args.out:
            os.fsync(sink.fileno())
    try:
        n = export_dead_letters(store, write, reason=args.reason, ids=args.ids,
                                limit=args.limit, delete=args.delete, before_delete=sync)
    finally:
        if args.out:
            sink.close()
    print(f"{n} dead letter(s) exported{' and deleted' if args.delete else ''}",
          file=sys.stderr)
    return 0


def cmd_purge(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    if args.all:
        classes = [Priority.RAW, Priority.AGGREGATE, Priority.ALERT]
    elif args.classes:
        classes = sorted({CLASS_BY_NAME[c] for c in args.classes})
    else:
        print("fieldlink gateway queue purge: give --class CLASS (repeatable) or --all",
              file=sys.stderr)
        return 2
    older_ms = None if args.older_than is None else int(args.older_than * 1000)
    now = store.clock.now_ms()
    if not args.yes:
        n = count_purgeable(store, classes, older_ms, now)
        print(f"would purge {n} unsent row(s) of {', '.join(CLASS_NAMES[c] for c in classes)}"
              "; re-run with --yes to delete them", file=out)
        return 1
    total = 0
    while True:
        with store.transaction():
            n = store.purge(classes, older_than_ms=older_ms, now_ms=now)
        total += n
        if n == 0:
            break
    print(f"purged {total} row(s) (counted as dropped.purged)", file=out)
    return 0


def count_purgeable(store: Store, classes: list[Priority], older_ms: int | None,
                    now_ms: int) -> int:
    age = "" if older_ms is None else " AND rx_ms < ?"
    args: tuple[Any, ...] = () if older_ms is None else (now_ms - older_ms,)
    total = 0
    for p in classes:
        if p == Priority.RAW:
            sql = f"SELECT count(*) FROM readings WHERE id BETWEEN ? AND ?{age}"
            for lo, hi in store.state.raw_gaps():
                total += store.conn.execute(sql, (lo, hi, *args)).fetchone()[0]
        else:
            sql = f"SELECT count(*) FROM events WHERE claim_id IS NULL AND prio = ?{age}"
            total += store.conn.execute(sql, (int(p), *args)).fetchone()[0]
    return total
