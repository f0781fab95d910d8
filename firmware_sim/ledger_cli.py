"""`fieldlink sim ledger PATH`: what a finished (or running) simulation sent and what came back.

Prints counts by fate, failure reason, fault kind and expectation, and the run's meta data
(seed, start time, final summary); `--json` prints them as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from firmware_sim.ledger import Ledger


def report(path: str) -> dict[str, Any]:
    with Ledger.open(path) as led:
        out: dict[str, Any] = {"ledger": path, "readings": len(led)}
        q = led.sql
        out["sent"] = q("SELECT count(*) FROM readings WHERE sent_ms IS NOT NULL")[0][0]
        out["acknowledged"] = q("SELECT count(*) FROM readings WHERE acked = 1")[0][0]
        out["failed"] = dict(q("SELECT failure, count(*) FROM readings WHERE failure IS NOT "
                               "NULL GROUP BY failure ORDER BY failure"))
        out["faults"] = dict(q("SELECT fault, count(*) FROM readings WHERE fault IS NOT NULL "
                               "GROUP BY fault ORDER BY fault"))
        out["expect"] = dict(q("SELECT expect, count(*) FROM readings GROUP BY expect "
                               "ORDER BY expect"))
        out["expected_unique"] = len(led.expected_unique())
        out["devices"] = q("SELECT count(DISTINCT device_id) FROM readings")[0][0]
        out["events"] = dict(q("SELECT kind, count(*) FROM events GROUP BY kind "
                               "ORDER BY kind"))
        out["meta"] = {k: v for k, v in led.meta().items() if k != "config"}
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="fieldlink sim ledger", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="ledger file written by `fieldlink sim run --ledger`")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(list(argv))
    try:
        out = report(args.path)
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"fieldlink sim ledger: {args.path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    for key, value in out.items():
        if key == "meta":
            continue
        print(f"{key:<16} {value}")
    return 0
