"""`fieldlink cloud web`: the cloud dashboard, and its accounts.

    fieldlink cloud web [-c cloud.yaml] [--offline-after S] [--tls-cert F --tls-key F]
                        [--secure-cookies]
    fieldlink cloud web users add NAME [--password-stdin | --generate] [--replace]
    fieldlink cloud web users remove NAME
    fieldlink cloud web users list [--json]

The server runs until SIGTERM/SIGINT (live-alert streams end, requests in progress finish,
exit 0).  It needs the bus (Kafka, or the embedded bus of `cloud.data_dir`) for live alerts
and InfluxDB for data; either may be down at start — the pages say so and recover.

`users` edits `web.users_file` of the configuration (or `--file`), under an exclusive lock,
atomically, mode 0600.  `add` asks for the password twice on the terminal, reads one line
from stdin with `--password-stdin`, or prints a generated one with `--generate`.  A running
dashboard picks the change up at the next login (and ends a removed user's sessions within a
minute).

Exit codes: 0 done; 1 invalid configuration (or `web.enabled: false`), or the user exists /
does not exist; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge.config.cloud import CloudConfig, load_cloud_config
from edge.errors import ConfigError
from edge.logs import setup_logging

__all__ = ["main", "run", "users_main"]

log = logging.getLogger("fieldlink.cloud.web")

DEFAULT_FILE = "config/cloud.yaml"


async def run(cfg: CloudConfig, *, stop: asyncio.Event | None = None,
              **overrides: object) -> int:
    """Serve until `stop` is set (by default: on SIGTERM or SIGINT)."""
    from cloud.bus import open_bus
    from cloud.web.service import WebService, WebSettings

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        settings = WebSettings.from_config(cfg, **overrides)
        async with open_bus(cfg) as bus, WebService(settings, bus) as service:
            log.info("dashboard ready", extra={"fields": {"url": service.url,
                                                           "bus": bus.kind}})
            await stop.wait()
            log.info("dashboard stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _load(path: str) -> CloudConfig | None:
    try:
        return load_cloud_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args and args[0] == "users":
        return users_main(args[1:])
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud web",
        description="Serve the cloud dashboard: fleet, devices, charts and live alerts "
                    "(operators log in; accounts: `fieldlink cloud web users --help`).")
    parser.add_argument("-c", "--config", default=DEFAULT_FILE, metavar="FILE",
                        help=f"the cloud configuration (default: {DEFAULT_FILE})")
    parser.add_argument("--offline-after", type=float, metavar="S",
                        help="a gateway with no reading or status for this long is shown "
                             "offline (default 300)")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--secure-cookies", action="store_true",
                        help="mark cookies Secure although this server speaks plain HTTP "
                             "(behind a TLS-terminating proxy)")
    ns = parser.parse_args(args)
    if (ns.tls_cert is None) != (ns.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    cfg = _load(ns.config)
    if cfg is None:
        return 1
    if not cfg.web.enabled:
        print(f"{ns.config}: web.enabled is false; the dashboard is switched off",
              file=sys.stderr)
        return 1
    setup_logging(cfg.logging.level, json_lines=cfg.logging.json_lines)
    try:
        return asyncio.run(run(cfg, offline_after_s=ns.offline_after, tls_cert=ns.tls_cert,
                               tls_key=ns.tls_key, secure_cookies=ns.secure_cookies or None))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1


# -- users ---------------------------------------------------------------------------------


def _users_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud web users",
        description="Manage the dashboard's operator accounts (web.users_file).")
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", default=None, metavar="FILE",
                       help=f"take web.users_file from this configuration (default: "
                            f"{DEFAULT_FILE})")
    where.add_argument("--file", type=Path, default=None, help="the users file itself")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", parents=[common], help="add an account")
    add.add_argument("name")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin")
    how.add_argument("--generate", action="store_true",
                     help="generate a password and print it once")
    add.add_argument("--replace", action="store_true",
                     help="set a new password for an existing account")
    rm = sub.add_parser("remove", parents=[common], help="remove an account")
    rm.add_argument("name")
    ls = sub.add_parser("list", parents=[common], help="list the accounts")
    ls.add_argument("--json", action="store_true")
    return parser


def _password(ns: argparse.Namespace) -> str:
    from cloud.web.users import generate_password

    if ns.generate:
        return generate_password()
    if ns.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {ns.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def users_main(argv: Sequence[str]) -> int:
    from cloud.web.users import (
        User,
        hash_password,
        load_users,
        locked,
        save_users,
        username_problem,
    )

    ns = _users_parser().parse_args(list(argv))
    path = ns.file
    if path is None:
        cfg = _load(ns.config or DEFAULT_FILE)
        if cfg is None:
            return 1
        path = Path(cfg.web.users_file)
    try:
        if ns.action == "list":
            users = load_users(path)
            if ns.json:
                print(json.dumps([{"name": u.name, "created_ms": u.created_ms}
                                  for u in sorted(users.values(), key=lambda u: u.name)]))
            else:
                for u in sorted(users.values(), key=lambda u: u.name):
                    created = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                            time.gmtime(u.created_ms / 1000))
                    print(f"{u.name}\t{created}")
            return 0
        why = username_problem(ns.name)
        if why:
            print(f"invalid user name {ns.name!r}: {why}", file=sys.stderr)
            return 2
        if ns.action == "add":
            password = _password(ns)
            pw_hash = hash_password(password)  # before the lock: hashing is slow
            with locked(path):
                users = load_users(path)
                if ns.name in users and not ns.replace:
                    print(f"user {ns.name!r} exists (use --replace to set a new password)",
                          file=sys.stderr)
                    return 1
                users[ns.name] = User(ns.name, pw_hash, int(time.time() * 1000))
                save_users(path, users)
            if ns.generate:
                print(password)
            print(f"{'updated' if ns.replace else 'added'} {ns.name} in {path}",
                  file=sys.stderr)
            return 0
        with locked(path):
            users = load_users(path)
            if users.pop(ns.name, None) is None:
                print(f"no user {ns.name!r} in {path}", file=sys.stderr)
                return 1
            save_users(path, users)
        print(f"removed {ns.name} from {path}", file=sys.stderr)
        return 0
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
