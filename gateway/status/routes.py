"""The status page's two routes on the gateway's HTTP server, and who may see them.

    http.add_routes(status_routes(gateway))      # before the HTTP server starts

    GET /status         the page: one HTML file, script and style inline (no framework, no
                        other request), polling /status.json every 3 s
    GET /status.json    `gateway.status.snapshot.status_body`

Access (checked on both routes):

* the gateway has a credentials file (`mqtt.credentials_file`): HTTP Basic with an
  **operator** account of it (`fieldlink gateway devices add NAME --role operator`), verified
  like an MQTT CONNECT (argon2id off the event loop, cached).  401 without or with wrong
  credentials (the browser asks), 403 for a device account;
* no credentials file (anonymous MQTT): no operator can be recognised, so the page answers
  only clients on the gateway itself (127.0.0.1 / ::1: a technician's SSH tunnel,
  `ssh -L 9100:127.0.0.1:9100 pi@gateway`), 403 to anyone else.

The page is served with a Content-Security-Policy that allows exactly its inline script and
style (by hash) and requests to this origin.  Both routes are cheap: stats() snapshots are
in-memory; the newest dead letters are read from the buffer only when their count changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.clock import Clock, SystemClock
from gateway.errors import Unauthorized
from gateway.status.snapshot import Parts, RateMeter, plain, status_body

__all__ = ["StatusPage", "status_routes"]

log = logging.getLogger("fieldlink.gateway.status")

REALM = 'Basic realm="fieldlink gateway status", charset="UTF-8"'
PAGE = Path(__file__).with_name("page.html")


def _csp(html: str) -> str:
    """A policy allowing the page's own inline <script> and <style> blocks, nothing else."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest())
                        .decode() + "'" for b in blocks)
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")


def _loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class StatusPage:
    def __init__(self, gateway: Any, *, clock: Clock | None = None,
                 dead_letters_shown: int = 10) -> None:
        self.gateway = gateway
        self.clock = clock or getattr(gateway, "clock", None) or SystemClock()
        self.dead_letters_shown = dead_letters_shown
        self.meter = RateMeter()
        self.html = PAGE.read_text()
        self.csp = _csp(self.html)
        self.counts = {"unauthorized": 0, "forbidden": 0, "served": 0}
        self._dl_total: int | None = None
        self._dl_recent: list[Any] = []

    # -- access ------------------------------------------------------------------------------

    def _deny(self, status: int, message: str) -> web.Response:
        self.counts["unauthorized" if status == 401 else "forbidden"] += 1
        headers = {"WWW-Authenticate": REALM} if status == 401 else None
        return web.json_response({"error": message}, status=status, headers=headers)

    async def authorize(self, request: web.Request) -> web.Response | None:
        """None when the request may see the page, else the refusal."""
        auth = getattr(self.gateway, "auth", None)
        if auth is None:
            if _loopback(request.remote):
                return None
            return self._deny(403, "this gateway runs without a credentials file: the status "
                                   "page answers only on the gateway itself (127.0.0.1)")
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return self._deny(401, "operator credentials required (HTTP Basic)")
        try:
            username, sep, password = base64.b64decode(encoded.strip(), validate=True
                                                       ).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return self._deny(401, "malformed Basic credentials")
        if not sep or not username:
            return self._deny(401, "malformed Basic credentials")
        try:
            account = await auth.authenticate(username, password.encode())
        except Unauthorized:
            return self._deny(401, "invalid credentials")
        if account.role != "operator":
            return self._deny(403, f"{username!r} is not an operator account")
        return None

    # -- data --------------------------------------------------------------------------------

    def _component(self, name: str) -> Any:
        gw = self.gateway
        comp = (getattr(gw, "components", None) or {}).get(name)
        return comp if comp is not None else getattr(gw, name, None)

    @staticmethod
    def _stats(component: Any, attr: str = "stats") -> Any:
        if component is None:
            return None
        try:
            value = getattr(component, attr)
            return plain(value() if callable(value) else value)
        except Exception as exc:  # noqa: BLE001 - a broken component must not break the page
            return exc

    async def _recent_dead_letters(self, buffer: Any, stats: Any) -> list[Any]:
        """The newest dead letters, re-read only when the count received changed.  Ids grow
        by one per dead letter, so the newest are among the last `total` ids."""
        if buffer is None or isinstance(stats, BaseException) or stats is None:
            return []
        total = sum((stats.get("dead_letters") or {}).values())
        if total == self._dl_total:
            return self._dl_recent
        try:
            hi = total + 1
            found = await buffer.dead_letters(ids=list(range(max(1, hi - 500), hi)))
            if not found and stats.get("dead_letter_rows"):
                # ids were reused after the table emptied: take them in id order, bounded
                found = await buffer.dead_letters(limit=2000)
        except Exception as exc:  # noqa: BLE001 - shown as "none", logged
            log.warning("status page could not read dead letters",
                        extra={"fields": {"error": repr(exc)}})
            return self._dl_recent
        found.sort(key=lambda d: d.id)
        self._dl_total, self._dl_recent = total, found[-self.dead_letters_shown:]
        return self._dl_recent

    async def body(self) -> dict[str, Any]:
        gw = self.gateway
        buffer = getattr(gw, "buffer", None)
        buffer_stats = self._stats(buffer)
        pipeline = getattr(gw, "pipeline", None)
        alerts = self._component("alerts")
        config = getattr(gw, "config", None)
        parts = Parts(
            gateway_id=str(getattr(getattr(config, "gateway", None), "id", "") or "?"),
            buffer=buffer_stats,
            pipeline=self._stats(pipeline, "stats") if pipeline is not None else None,
            mqtt=self._stats(getattr(gw, "mqtt", None)),
            coap=self._stats(getattr(gw, "coap", None)),
            serial=self._stats(getattr(gw, "serial", None)),
            uplink=self._stats(self._component("uplink")),
            alerts_active=_call(lambda: alerts.engine.active_alerts())
            if alerts is not None else None,
            dead_letters=await self._recent_dead_letters(buffer, buffer_stats))
        return status_body(parts, self.clock.now_ms(), self.meter)

    # -- handlers ----------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        refused = await self.authorize(request)
        if refused is not None:
            return refused
        return web.Response(text=self.html, content_type="text/html", headers={
            "Content-Security-Policy": self.csp, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    async def json(self, request: web.Request) -> web.StreamResponse:
        refused = await self.authorize(request)
        if refused is not None:
            return refused
        self.counts["served"] += 1
        return web.json_response(await self.body(), headers={"Cache-Control": "no-store"},
                                 dumps=_dumps)


def _call(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - shown on the page as that section's error
        return exc


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


def status_routes(gateway: Any, *, clock: Clock | None = None) -> list[web.RouteDef]:
    """GET /status and GET /status.json for `GatewayHttp.add_routes` (see the module
    docstring).  `gateway` is the running `gateway.app.Gateway` (or anything with its
    attributes: buffer, pipeline, mqtt, coap, serial, components, config, auth)."""
    page = StatusPage(gateway, clock=clock)
    return [web.get("/status", page.page), web.get("/status.json", page.json)]
