"""Login sessions, CSRF tokens and the login throttle (pure; times are arguments).

Session model:

* `new_session` makes a random 256-bit token (the cookie value) and a separate random CSRF
  token.  Only the token's SHA-256 is stored (`Session.token_hash`), so the sessions file
  alone does not let anyone in.
* A session expires `session_ttl_s` after login (absolute, not sliding: an operator logs in
  again at least once per shift), at logout, or when its user is removed.
* Cookie: `fieldlink_session`, HttpOnly (scripts cannot read it), SameSite=Strict (no other
  site's page can make the browser send it), Path=/, Secure when the request came over TLS.
* CSRF: every state-changing request (POST) must carry the session's CSRF token in the
  `X-CSRF-Token` header (fetch) or a `csrf` form field, compared in constant time, on top of
  SameSite=Strict.  The login form, made before any session exists, uses a double-submit
  token: a `fieldlink_login` cookie equal to the form's hidden field.

`LoginThrottle`: after `max_failures` failed logins of one user name, or from one client
address, within `window_s`, further attempts for it are refused for `lockout_s` (answered
429 before the password is checked, so a locked account costs no hashing either).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass

__all__ = ["COOKIE", "CSRF_HEADER", "LOGIN_COOKIE", "LoginThrottle", "Session",
           "new_session", "safe_next", "token_hash", "tokens_match"]

COOKIE = "fieldlink_session"
LOGIN_COOKIE = "fieldlink_login"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    user: str
    csrf: str
    created_ms: int
    expires_ms: int

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(user: str, now_ms: int, ttl_ms: int) -> tuple[str, Session]:
    """(cookie token, session) for `user`, valid for `ttl_ms`."""
    token = secrets.token_urlsafe(32)
    return token, Session(token_hash(token), user, secrets.token_urlsafe(32), now_ms,
                          now_ms + ttl_ms)


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison; False for a missing or empty token."""
    if not given or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go after login: a local path only (no scheme, no host, no `//`), so the
    login form cannot be used to send a user to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or \
            "\\" in target or any(ord(c) < 0x20 for c in target):
        return default
    return target


class LoginThrottle:
    def __init__(self, *, max_failures: int = 5, window_s: float = 300.0,
                 lockout_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_ms = int(window_s * 1000)
        self.lockout_ms = int(lockout_s * 1000)
        self._failures: dict[str, deque[int]] = {}
        self._locked_until: dict[str, int] = {}

    def wait_s(self, keys: tuple[str, ...], now_ms: int) -> float:
        """Seconds until any of `keys` (e.g. ("user:alice", "ip:10.0.0.7")) may try again;
        0 when all may."""
        wait = 0
        for key in keys:
            until = self._locked_until.get(key)
            if until is not None:
                if until <= now_ms:
                    del self._locked_until[key]
                else:
                    wait = max(wait, until - now_ms)
        return wait / 1000

    def failed(self, keys: tuple[str, ...], now_ms: int) -> None:
        for key in keys:
            q = self._failures.setdefault(key, deque())
            q.append(now_ms)
            while q and q[0] <= now_ms - self.window_ms:
                q.popleft()
            if len(q) >= self.max_failures:
                self._locked_until[key] = now_ms + self.lockout_ms
                q.clear()
        if len(self._failures) > 10_000:
            # forget keys whose failures have all aged out (bounded memory under a spray)
            for key in [k for k, q in self._failures.items()
                        if not q or q[-1] <= now_ms - self.window_ms]:
                del self._failures[key]

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._failures.pop(key, None)
