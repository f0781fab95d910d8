"""Checking MQTT credentials against the credentials file, without burning the CPU.

Who calls it: the MQTT broker, once per CONNECT that carries a username.

Verification is argon2id (≈0.1 s and 19 MiB each, on purpose).  Three things keep a
reconnect storm of 10,000 sensors from starving the gateway:

1. **Verified cache, process lifetime.**  After a password verified, the broker remembers
   (username, account hash, HMAC-SHA256 of the attempt under a per-process random key).  A
   reconnect presenting the same password is accepted by one HMAC (≈1 µs) instead of one
   argon2 run.  The cache holds no password and no reusable hash: the key never leaves the
   process and dies with it.  Changing or removing an account in the file invalidates its
   entry (the entry is bound to the account's hash), at the next file check.
2. **Negative cache.**  A failed (username, attempt) is refused without re-verifying for
   `negative_ttl_s` (bounded to `negative_max` entries), so a sensor with a wrong password
   retrying every second costs nothing after the first attempt.
3. **Bounded worker pool.**  Cache misses are verified in `verify_workers` threads (default
   1; argon2 releases the GIL), never on the event loop, so ingest keeps its latency during
   a storm; callers whose client went away cancel their queued verification.

The cost that remains is one argon2 run per device after a gateway restart: 10,000 devices ×
0.1 s ≈ 17 min of one core (more on a slow Pi), served first come, first served
(docs/mqtt-ingest.md).

The file is re-read when its mtime, size or inode changed, checked at most every
`reload_check_s`; a file that became invalid keeps the last good accounts (and is logged).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from edge.clock import Clock, SystemClock
from gateway.auth.credentials import Account, load_accounts
from gateway.auth.passwords import verify_password
from gateway.errors import ConfigError, Unauthorized

log = logging.getLogger(__name__)


@dataclass
class AuthStats:
    verified: int = 0
    cache_hits: int = 0
    negative_hits: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_errors: int = 0


class Authenticator:
    """Checks (username, password) against a credentials file.  Use as a context manager
    (or call `close()`) to stop the worker threads."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None,
                 verify_workers: int = 1, negative_ttl_s: float = 60.0,
                 negative_max: int = 4096, reload_check_s: float = 2.0) -> None:
        self.path = os.fspath(path)
        self.clock = clock or SystemClock()
        self.stats = AuthStats()
        self._negative_ttl = negative_ttl_s
        self._negative_max = negative_max
        self._reload_check_s = reload_check_s
        self._key = os.urandom(32)
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._negative: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=verify_workers,
                                            thread_name_prefix="mqtt-auth")
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._accounts: dict[str, Account] = {}
        self.reload(force=True)

    def __enter__(self) -> Authenticator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the file -------------------------------------------------------------------------

    def reload(self, *, force: bool = False) -> None:
        """Re-read the file if it changed (or always, with force).  Raises ConfigError only
        on the first load; later a broken file keeps the last good accounts."""
        self._checked_at = self.clock.monotonic()
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if not force and stamp == self._stamp:
            return
        try:
            accounts = load_accounts(self.path)
        except ConfigError:
            if force:
                raise
            self.stats.reload_errors += 1
            log.error("credentials file became invalid; keeping the previous accounts",
                      extra={"fields": {"file": self.path}}, exc_info=True)
            return
        self._stamp = stamp
        self._accounts = accounts
        self.stats.reloads += 1
        # entries are bound to the account hash, so a changed password is already a miss;
        # dropping entries of vanished accounts just frees memory
        for name in [n for n in self._verified if n not in accounts]:
            del self._verified[name]

    def _maybe_reload(self) -> None:
        if self.clock.monotonic() - self._checked_at >= self._reload_check_s:
            self.reload()

    def account(self, username: str) -> Account | None:
        """The account for `username` (e.g. a TLS client-certificate identity), or None."""
        self._maybe_reload()
        return self._accounts.get(username)

    def __len__(self) -> int:
        return len(self._accounts)

    # -- verification -----------------------------------------------------------------------

    def _digest(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    def check_cached(self, username: str, password: bytes) -> Account | None:
        """The account if this exact (username, password) verified before; no slow work."""
        self._maybe_reload()
        account = self._accounts.get(username)
        entry = self._verified.get(username)
        if account is None or entry is None or entry[0] != account.password_hash:
            return None
        if not hmac.compare_digest(entry[1], self._digest(password)):
            return None
        self.stats.cache_hits += 1
        return account

    async def authenticate(self, username: str, password: bytes) -> Account:
        """The account for these credentials, or raise `Unauthorized` with reason
        `unknown_user` or `bad_password`.  Never blocks the event loop."""
        cached = self.check_cached(username, password)
        if cached is not None:
            return cached
        account = self._accounts.get(username)
        digest = self._digest(password)
        if account is None:
            return self._fail("unknown_user", username)
        key = (username, digest)
        now = self.clock.monotonic()
        until = self._negative.get(key)
        if until is not None and until > now and self._accounts.get(username) is account:
            self.stats.negative_hits += 1
            return self._fail("bad_password", username)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, verify_password,
                                        account.password_hash, password)
        if self._accounts.get(username) is not account:
            # the file changed while verifying: decide against the current account
            return await self.authenticate(username, password)
        if not ok:
            self._negative[key] = self.clock.monotonic() + self._negative_ttl
            self._negative.move_to_end(key)
            while len(self._negative) > self._negative_max:
                self._negative.popitem(last=False)
            return self._fail("bad_password", username)
        self._negative.pop(key, None)
        self._verified[username] = (account.password_hash, digest)
        self.stats.verified += 1
        return account

    def _fail(self, reason: str, username: str) -> Account:
        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
        raise Unauthorized(f"authentication failed for {username!r}: {reason}", reason=reason)
