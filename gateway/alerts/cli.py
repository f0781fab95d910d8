"""`fieldlink gateway alerts …`: list alerts and acknowledge them.

    fieldlink gateway alerts list [--recent 20] [--json]      # from the state file
    fieldlink gateway alerts pending [--json]                 # deliveries not done yet
    fieldlink gateway alerts ack DEDUP_KEY --user NAME        # through the running gateway

`list` and `pending` read `<gateway.data_dir>/alerts.sqlite3` of `--config FILE` (default
config/gateway.yaml) or `--db PATH`, read-only, also while the gateway runs: the active
alerts are the last snapshot with the transitions committed since replayed onto it (what the
gateway would restore).  `ack` POSTs to the gateway's HTTP endpoint (`--url`, default from
the config's `http:` section) with HTTP Basic as an operator account; the password comes from
FIELDLINK_OPERATOR_PASSWORD or a prompt.

Exit codes: 0 done; 1 the gateway refused (no such active alert, already acknowledged, bad
credentials); 2 usage error, no state file, gateway unreachable.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.config.gateway import load_gateway_config
from edge.errors import ConfigError
from edge.rules import iso_ms
from gateway.alerts.journal import apply_transitions
from gateway.alerts.store import PENDING, AlertStore

DEFAULT_CONFIG = "config/gateway.yaml"
EMPTY = {"version": 1, "alerts": {"active": [], "incarnations": {}}, "streaks": [], "stale": {}}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG,
                        help="gateway config (default %(default)s)")
    p = argparse.ArgumentParser(prog="fieldlink gateway alerts",
                                description="List and acknowledge the gateway's local alerts.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", parents=[common], help="active alerts and recent transitions")
    ls.add_argument("--db", metavar="PATH", help="the alert state file (instead of --config)")
    ls.add_argument("--recent", type=int, default=20, help="recent transitions (default 20)")
    ls.add_argument("--json", action="store_true", help="one JSON object")
    pe = sub.add_parser("pending", parents=[common], help="deliveries not done yet, by channel")
    pe.add_argument("--db", metavar="PATH", help="the alert state file (instead of --config)")
    pe.add_argument("--json", action="store_true", help="one JSON object")
    ack = sub.add_parser("ack", parents=[common], help="acknowledge a firing alert")
    ack.add_argument("dedup_key", help='e.g. "overheat:oven-3"')
    ack.add_argument("--user", required=True, help="an operator account")
    ack.add_argument("--url", help="the gateway's HTTP endpoint (default: from the config)")
    return p


def _db_path(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    return load_gateway_config(args.config).gateway.data_dir / "alerts.sqlite3"


def _listing(store: AlertStore, recent: int) -> dict[str, Any]:
    loaded = store.load()
    snap = apply_transitions(loaded.snapshot or EMPTY, loaded.replay)
    return {"active": snap["alerts"]["active"], "recent": store.recent(recent)}


def _show_list(data: dict[str, Any]) -> None:
    print(f"{len(data['active'])} active alert(s)")
    for a in data["active"]:
        acked = f"  acked by {a['acked_by']}" if a.get("acked_by") else ""
        print(f"  {a['state']:<12} {a['severity']:<8} {a['rule_id']}:{a['subject']}  since "
              f"{iso_ms(a['fired_at_ms'])}{acked}\n      {a['message']}")
    print(f"{len(data['recent'])} recent transition(s), newest first")
    for t in data["recent"]:
        status = ", ".join(f"{ch} {d['status']}" for ch, d in sorted(t["deliveries"].items()))
        print(f"  #{t['id']:<6} {iso_ms(t['at_ms'])} {t['transition']:<12} "
              f"{t['dedup_key']}  [{status}]")


def _pending(store: AlertStore) -> list[dict[str, Any]]:
    out = []
    for t in store.recent(100_000):
        for ch, d in t["deliveries"].items():
            if d["status"] == PENDING:
                out.append({"id": t["id"], "channel": ch, "transition": t["transition"],
                            "dedup_key": t["dedup_key"], "at_ms": t["at_ms"],
                            "attempts": d["attempts"], "error": d["error"]})
    return sorted(out, key=lambda r: (r["channel"], r["id"]))


def _ack(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        http = load_gateway_config(args.config).http
        host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
        url = f"http://{host}:{http.port}"
    password = os.environ.get("FIELDLINK_OPERATOR_PASSWORD") or getpass.getpass(
        f"password for {args.user}: ")
    token = base64.b64encode(f"{args.user}:{password}".encode()).decode()
    req = urllib.request.Request(
        f"{url.rstrip('/')}/alerts/{urllib.parse.quote(args.dedup_key, safe=':')}/ack",
        method="POST", headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        print(f"refused: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return 2
    alert = body["acknowledged"]
    print(f"acknowledged {alert['dedup_key']} (by {alert['acked_by']})")
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        if args.command == "ack":
            return _ack(args)
        path = _db_path(args)
        store = AlertStore(path, readonly=True)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except FileNotFoundError:
        print(f"no alert state file at {path}", file=sys.stderr)
        return 2
    try:
        data: Any = (_listing(store, args.recent) if args.command == "list"
                     else _pending(store))
    finally:
        store.close()
    if args.json:
        print(json.dumps(data))
    elif args.command == "list":
        _show_list(data)
    else:
        for r in data:
            print(f"{r['channel']:<20} #{r['id']:<6} {r['transition']:<12} {r['dedup_key']}  "
                  f"attempts {r['attempts']}  {r['error'] or ''}")
    return 0
