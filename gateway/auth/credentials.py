"""The credentials file: who may connect to the gateway's MQTT broker, and in which role.

Format (JSON, one object)::

    {"format": 1,
     "accounts": {"sensor_001_line1": {"role": "device", "hash": "$argon2id$...",
                                        "created_ms": 1705322445000},
                  "ops-dashboard":    {"role": "operator", "hash": "$argon2id$...", ...}}}

Guarantees:

* passwords are stored only as argon2id hashes (`gateway.auth.passwords`);
* `save_accounts` is atomic: a temporary file in the same directory, created with mode 0600,
  fsync'd, renamed over the old file, then the directory fsync'd — a reader sees the old or
  the new file, never a torn one, and the file is never world-readable;
* `locked(path)` serialises concurrent writers (two `devices add` at once) with an advisory
  lock on `<path>.lock`;
* a file that cannot be parsed raises `ConfigError` naming the file and the problem; a missing
  file is an empty set of accounts.

Usernames follow the device-id rule of `edge.payload.decode` (1..128 printable characters,
no whitespace, no `/`, `+`, `#`), because a device's username *is* its device id and appears
as an MQTT topic level.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError

ROLES = ("device", "operator")
FORMAT = 1
MAX_USERNAME = 128


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    role: str  # "device" | "operator"
    password_hash: str
    created_ms: int = 0


def username_problem(username: str) -> str | None:
    """Why `username` cannot be an account name, or None if it can."""
    if not 1 <= len(username) <= MAX_USERNAME:
        return f"must be 1..{MAX_USERNAME} characters"
    if any(c in username for c in "/+#") or username.startswith("$"):
        return "must not contain '/', '+' or '#' or start with '$' (it is an MQTT topic level)"
    if not username.isprintable() or any(c.isspace() for c in username):
        return "must be printable with no whitespace"
    return None


def load_accounts(path: str | os.PathLike[str]) -> dict[str, Account]:
    """Read the credentials file.  Missing file → {}.  Raises ConfigError when invalid."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(file, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(file, [("", f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(file, [("format", f"expected a JSON object with format {FORMAT}")])
    raw = data.get("accounts")
    if not isinstance(raw, dict):
        raise ConfigError(file, [("accounts", "expected an object of username → account")])
    accounts: dict[str, Account] = {}
    problems: list[tuple[str, str]] = []
    for name, entry in raw.items():
        where = f"accounts.{name}"
        why = username_problem(name)
        if why:
            problems.append((where, f"invalid username: {why}"))
            continue
        if not isinstance(entry, dict):
            problems.append((where, "expected an object"))
            continue
        role, pw_hash = entry.get("role"), entry.get("hash")
        if role not in ROLES:
            problems.append((f"{where}.role", f"must be one of {', '.join(ROLES)}"))
            continue
        if not isinstance(pw_hash, str) or not pw_hash.startswith("$argon2"):
            problems.append((f"{where}.hash", "must be an argon2 hash"))
            continue
        created = entry.get("created_ms", 0)
        accounts[name] = Account(name, role, pw_hash, created if isinstance(created, int) else 0)
    if problems:
        raise ConfigError(file, problems)
    return accounts


def save_accounts(path: str | os.PathLike[str], accounts: Mapping[str, Account]) -> None:
    """Write the credentials file atomically with mode 0600 (see module docstring)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "format": FORMAT,
        "accounts": {
            a.username: {"role": a.role, "hash": a.password_hash, "created_ms": a.created_ms}
            for a in sorted(accounts.values(), key=lambda a: a.username)
        },
    }
    data = (json.dumps(body, indent=2) + "\n").encode()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, an existing tmp cannot keep its mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock for a read-modify-write of the credentials file."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
