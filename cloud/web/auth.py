"""Who may see the dashboard: login, logout, and the guard every data route goes through.

    guard = Guard(store, users, clock, ttl_ms=..., secure=...)
    web.get("/api/fleet", guard.api(handler))      # 401 JSON without a valid session
    web.get("/", guard.page(handler))              # 401 with the login form without one
    web.post("/api/alerts/ack", guard.api(h))      # + 403 without the session's CSRF token

A guarded handler is called as `handler(request, session)`.  Rules (see `cloud.web.sessions`
for the session and cookie model):

* no cookie, an unknown or expired session, or a session whose user was removed: 401;
* POST (any method but GET/HEAD): the session's CSRF token in `X-CSRF-Token` or the form
  field `csrf`, and — when the browser sends `Origin` — an origin equal to this server's:
  else 403;
* login (`POST /login`): the double-submit login token, then the throttle (429 with
  Retry-After), then the password (verified in a worker thread); success sets the session
  cookie and redirects (303) to `next` (a local path only);
* logout (`POST /logout`, CSRF-checked): deletes the session, clears the cookie.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cloud.errors import ConfigError
from cloud.web.pages import login_page
from cloud.web.sessions import (
    COOKIE,
    CSRF_HEADER,
    LOGIN_COOKIE,
    LoginThrottle,
    Session,
    new_session,
    safe_next,
    token_hash,
    tokens_match,
)
from cloud.web.store import WebStore
from cloud.web.users import UserBook
from edge.clock import Clock

__all__ = ["Guard", "Handler"]

log = logging.getLogger("fieldlink.cloud.web")

Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class Guard:
    def __init__(self, store: WebStore, users: UserBook, clock: Clock, *, ttl_ms: int,
                 secure_cookies: bool = False, throttle: LoginThrottle | None = None) -> None:
        self.store = store
        self.users = users
        self.clock = clock
        self.ttl_ms = ttl_ms
        self.secure_cookies = secure_cookies
        self.throttle = throttle or LoginThrottle()
        self.counts: dict[str, int] = {"login_ok": 0, "login_failed": 0, "login_throttled": 0,
                                       "login_bad_token": 0, "unauthenticated": 0,
                                       "csrf_refused": 0, "logout": 0}

    # -- sessions ----------------------------------------------------------------------------

    def session(self, request: web.Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        s = self.store.session(token_hash(token), self.clock.now_ms())
        if s is None or not self.users.exists(s.user):
            return None
        return s

    def _secure(self, request: web.Request) -> bool:
        return self.secure_cookies or request.secure

    def _csrf_ok(self, request: web.Request, s: Session, form_token: str | None) -> bool:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return False
        return tokens_match(s.csrf, request.headers.get(CSRF_HEADER) or form_token)

    def api(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            s = self.session(request)
            if s is None:
                self.counts["unauthenticated"] += 1
                return web.json_response({"error": "login required"}, status=401,
                                         headers={"Cache-Control": "no-store"})
            if request.method not in _SAFE_METHODS and not self._csrf_ok(request, s, None):
                self.counts["csrf_refused"] += 1
                return web.json_response({"error": "missing or wrong CSRF token"},
                                         status=403)
            return await handler(request, s)
        return guarded

    def page(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            s = self.session(request)
            if s is None:
                self.counts["unauthenticated"] += 1
                return self._login_form(request, safe_next(request.path_qs), status=401)
            return await handler(request, s)
        return guarded

    # -- login / logout ----------------------------------------------------------------------

    def _login_form(self, request: web.Request, next_path: str, *, status: int = 200,
                    error: str = "") -> web.Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        notice = "" if len(self.users) else (
            "No dashboard account exists yet: create one with "
            "`fieldlink cloud web users add NAME`.")
        resp = web.Response(text=login_page(csrf=token, next_path=next_path, error=error,
                                            notice=notice),
                            content_type="text/html", status=status)
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", path="/login",
                        max_age=3600, secure=self._secure(request) or None)
        return resp

    async def login_get(self, request: web.Request) -> web.StreamResponse:
        next_path = safe_next(request.query.get("next"))
        if self.session(request) is not None:
            raise web.HTTPSeeOther(next_path)
        return self._login_form(request, next_path)

    async def login_post(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        username = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        next_path = safe_next(str(form.get("next", "/")))
        if not tokens_match(request.cookies.get(LOGIN_COOKIE, ""), str(form.get("csrf", ""))):
            self.counts["login_bad_token"] += 1
            return self._login_form(request, next_path, status=403,
                                    error="The login form expired; please try again.")
        now = self.clock.now_ms()
        peer = request.remote or "?"
        keys = (f"user:{username.lower()}", f"ip:{peer}")
        wait = self.throttle.wait_s(keys, now)
        if wait > 0:
            self.counts["login_throttled"] += 1
            resp = self._login_form(request, next_path, status=429,
                                    error="Too many failed logins; try again later.")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        try:
            self.users.refresh()
        except ConfigError as exc:
            log.error("users file unreadable; keeping the accounts read before",
                      extra={"fields": {"error": str(exc)}})
        ok = bool(username) and await asyncio.to_thread(self.users.verify, username, password)
        if not ok:
            self.counts["login_failed"] += 1
            self.throttle.failed(keys, now)
            log.warning("dashboard login failed", extra={"fields": {
                "user": username[:64], "peer": peer}})
            return self._login_form(request, next_path, status=401,
                                    error="Wrong user name or password.")
        self.throttle.succeeded(keys[:1])
        token, s = new_session(username, now, self.ttl_ms)
        await self.store.put_session(s)
        self.counts["login_ok"] += 1
        log.info("dashboard login", extra={"fields": {"user": username, "peer": peer}})
        resp = web.HTTPSeeOther(next_path)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/",
                        max_age=self.ttl_ms // 1000, secure=self._secure(request) or None)
        resp.del_cookie(LOGIN_COOKIE, path="/login")
        raise resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        s = self.session(request)
        form = await request.post()
        if s is not None:
            if not self._csrf_ok(request, s, str(form.get("csrf", "")) or None):
                self.counts["csrf_refused"] += 1
                return web.json_response({"error": "missing or wrong CSRF token"},
                                         status=403)
            await self.store.delete_session(s.token_hash)
            self.counts["logout"] += 1
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/login", self.login_get), web.post("/login", self.login_post),
                web.post("/logout", self.logout)]

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "sessions": self.store.session_count(), "users": len(self.users)}
