"""Dashboard accounts: the users file (`web.users_file`) and password verification.

The file is JSON, written atomically with mode 0600 under an exclusive lock (a lock file
next to it), so two `fieldlink cloud web users` commands never lose each other's change:

    {"format": 1, "users": {"alice": {"hash": "$argon2id$v=19$...", "created_ms": 1705...}}}

Passwords are hashed with argon2id at the OWASP minimum (19 MiB, 2 iterations, 1 lane): about
50 ms per verification on a server core.  The encoded hash carries its parameters, so a file
written with other costs still verifies.  `UserBook.verify` is the one call the web service
makes; it is synchronous and slow on purpose, so the service runs it in a worker thread.  An
unknown user costs the same as a wrong password (a dummy hash is verified), so response times
do not tell which user names exist.

The running service re-reads the file when its modification time or size changed (checked at
every login and every minute), so `users add` / `users remove` take effect without a restart;
the sessions of a removed user end within that minute (the guard checks `UserBook.exists` on
every request).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cloud.errors import ConfigError

__all__ = ["FORMAT", "User", "UserBook", "generate_password", "hash_password", "load_users",
           "locked", "save_users", "username_problem", "verify_password"]

FORMAT = 1
MAX_USERNAME = 64
MIN_PASSWORD = 10

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
#: verified for unknown user names, so they cost as much as a wrong password
_DUMMY_HASH = _HASHER.hash(secrets.token_bytes(16))


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str
    created_ms: int = 0


def username_problem(name: str) -> str | None:
    """Why `name` cannot be a user name, or None if it can."""
    if not 1 <= len(name) <= MAX_USERNAME:
        return f"must be 1..{MAX_USERNAME} characters"
    if not all(c.isalnum() or c in "._-@" for c in name):
        return "may contain letters, digits and . _ - @ only"
    return None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def verify_password(encoded: str, password: str) -> bool:
    try:
        return _HASHER.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """A random password (144 bits), printed once by `users add`."""
    return secrets.token_urlsafe(18)


def load_users(path: str | os.PathLike[str]) -> dict[str, User]:
    """Read the users file.  A missing file has no users.  Raises ConfigError when invalid."""
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
    raw = data.get("users")
    if not isinstance(raw, dict):
        raise ConfigError(file, [("users", "expected an object of user name -> user")])
    users: dict[str, User] = {}
    problems: list[tuple[str, str]] = []
    for name, entry in raw.items():
        why = username_problem(name)
        if why:
            problems.append((f"users.{name}", f"invalid user name: {why}"))
            continue
        pw_hash = entry.get("hash") if isinstance(entry, dict) else None
        if not isinstance(pw_hash, str) or not pw_hash.startswith("$argon2"):
            problems.append((f"users.{name}.hash", "must be an argon2 hash"))
            continue
        created = entry.get("created_ms", 0)
        users[name] = User(name, pw_hash, created if isinstance(created, int) else 0)
    if problems:
        raise ConfigError(file, problems)
    return users


def save_users(path: str | os.PathLike[str], users: Mapping[str, User]) -> None:
    """Write the users file atomically (temporary file, fsync, rename, fsync the directory)
    with mode 0600."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "users": {
        u.name: {"hash": u.password_hash, "created_ms": u.created_ms}
        for u in sorted(users.values(), key=lambda u: u.name)}}
    data = (json.dumps(body, indent=2) + "\n").encode()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing tmp file must not keep a wider mode
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
    """Hold an exclusive lock on `<path>.lock` (read-modify-write of the users file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class UserBook:
    """The users file as the web service sees it: re-read when it changed on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._users: dict[str, User] = {}
        self._signature: tuple[int, int] | None = None
        self.refresh()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        """Re-read the file if it changed.  An invalid file keeps the previous users and
        raises ConfigError (the caller logs it)."""
        signature = self._stat()
        if signature == self._signature and (signature is not None or not self._users):
            return
        users = load_users(self.path) if signature is not None else {}
        self._users, self._signature = users, signature

    def __len__(self) -> int:
        return len(self._users)

    def names(self) -> list[str]:
        return sorted(self._users)

    def exists(self, name: str) -> bool:
        return name in self._users

    def verify(self, name: str, password: str) -> bool:
        """True when `name` exists and `password` is its password (slow: ~50 ms)."""
        user = self._users.get(name)
        if user is None:
            verify_password(_DUMMY_HASH, password)
            return False
        return verify_password(user.password_hash, password)
