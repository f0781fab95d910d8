"""`fieldlink gateway devices add|remove|list`: manage MQTT sensor and operator accounts.

    fieldlink gateway devices add sensor_001_line1            # prints a generated password once
    fieldlink gateway devices add ops --role operator --password-stdin < secret.txt
    fieldlink gateway devices remove sensor_001_line1
    fieldlink gateway devices list [--json]

The file (default `$FIELDLINK_CREDENTIALS_FILE`, else /etc/fieldlink/mqtt-credentials.json) is
rewritten atomically with mode 0600 under an exclusive lock.  A running gateway picks the
change up within seconds (it re-reads the file when it changed); sessions already connected
stay connected until they reconnect.

Exit codes: 0 done, 1 the account exists / does not exist, 2 bad usage or unreadable file.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence

from gateway.auth.credentials import (
    ROLES,
    Account,
    load_accounts,
    locked,
    save_accounts,
    username_problem,
)
from gateway.auth.passwords import generate_password, hash_password
from gateway.errors import ConfigError

DEFAULT_FILE = "/etc/fieldlink/mqtt-credentials.json"
ENV_FILE = "FIELDLINK_CREDENTIALS_FILE"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink gateway devices",
        description="Manage the MQTT accounts of sensors (role device) and operators.",
    )
    parser.add_argument("--file", default=os.environ.get(ENV_FILE, DEFAULT_FILE),
                        help=f"credentials file (default ${ENV_FILE} or {DEFAULT_FILE})")
    # --file is also accepted after the action (`devices add d1 --file x.json`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", parents=[common],
                         help="add an account; prints a generated password once")
    add.add_argument("username", help="the device id (for role device) or operator name")
    add.add_argument("--role", choices=ROLES, default="device")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin")
    how.add_argument("--prompt", action="store_true", help="ask for the password on the tty")
    add.add_argument("--replace", action="store_true",
                     help="replace an existing account (new password and role)")
    rm = sub.add_parser("remove", parents=[common], help="remove an account")
    rm.add_argument("username")
    ls = sub.add_parser("list", parents=[common], help="list accounts (never shows hashes)")
    ls.add_argument("--json", action="store_true", help="one JSON object per account")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        if args.action == "add":
            return _add(args)
        if args.action == "remove":
            return _remove(args)
        return _list(args)
    except ConfigError as exc:
        print(f"fieldlink gateway devices: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fieldlink gateway devices: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _add(args: argparse.Namespace) -> int:
    problem = username_problem(args.username)
    if problem:
        print(f"fieldlink gateway devices: invalid username {args.username!r}: {problem}",
              file=sys.stderr)
        return 2
    generated = not (args.password_stdin or args.prompt)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.prompt:
        password = getpass.getpass(f"password for {args.username}: ")
    else:
        password = generate_password()
    if not password:
        print("fieldlink gateway devices: empty password refused", file=sys.stderr)
        return 2
    pw_hash = hash_password(password)  # slow: outside the lock
    with locked(args.file):
        accounts = load_accounts(args.file)
        if args.username in accounts and not args.replace:
            print(f"fieldlink gateway devices: {args.username!r} exists (use --replace)",
                  file=sys.stderr)
            return 1
        accounts[args.username] = Account(args.username, args.role, pw_hash,
                                          time.time_ns() // 1_000_000)
        save_accounts(args.file, accounts)
    if generated:
        print(password)
        print(f"added {args.role} {args.username!r} to {args.file}; the password above is "
              "shown once and stored only as a hash", file=sys.stderr)
    else:
        print(f"added {args.role} {args.username!r} to {args.file}", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    with locked(args.file):
        accounts = load_accounts(args.file)
        if args.username not in accounts:
            print(f"fieldlink gateway devices: no account {args.username!r} in {args.file}",
                  file=sys.stderr)
            return 1
        del accounts[args.username]
        save_accounts(args.file, accounts)
    print(f"removed {args.username!r} from {args.file}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    accounts = load_accounts(args.file)
    for account in sorted(accounts.values(), key=lambda a: (a.role, a.username)):
        if args.json:
            print(json.dumps({"username": account.username, "role": account.role,
                              "created_ms": account.created_ms}))
        else:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                    time.gmtime(account.created_ms / 1000))
            print(f"{account.role:<9} {account.username}  (added {created})")
    return 0
