"""`WebService`: the cloud dashboard — pages, JSON API, live alerts — on one HTTP port.

    settings = WebSettings.from_config(cfg)
    async with open_bus(cfg) as bus, WebService(settings, bus) as web:
        print(web.url)                                 # until the block exits

What it runs, in start order (left in reverse):

1. the web store (`<cloud.data_dir>/web.sqlite3`: sessions, cloud-side acknowledgements) and
   the users file;
2. the InfluxDB reader and the archive reader (nothing connects yet: a store that is down
   makes its API answers 503, the service still starts);
3. the alert feed (task "web-alerts-feed": the alerts topic with a group of its own);
4. the HTTP server (`cloud.http.ServiceHttp`): `/login`, the pages, `/api/...`,
   `/static/...`, `/metrics`, `/healthz`;
5. the task "web-housekeeping": every `housekeeping_s`, re-reads the users file and deletes
   expired sessions and those of removed users.

Every response carries a strict Content-Security-Policy (scripts and styles from this server
only, no inline code, no framing) and `X-Content-Type-Options: nosniff`.

Shutdown: open live-alert streams end first (so the server's graceful close does not wait
for them), then the listener closes and requests in progress finish, then the feed, readers
and store close.  The bus belongs to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cloud.errors import ConfigError
from cloud.http import ServiceHttp
from cloud.web.api import Api, FleetReader
from cloud.web.archive import ArchiveReader
from cloud.web.auth import Guard
from cloud.web.board import AlertBoard
from cloud.web.feed import AlertFeed
from cloud.web.history import History
from cloud.web.influx import InfluxReader
from cloud.web.pages import STATIC_DIR
from cloud.web.store import WebStore
from cloud.web.users import UserBook
from edge.clock import Clock, SystemClock

__all__ = ["CSP", "WebService", "WebSettings"]

log = logging.getLogger("fieldlink.cloud.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                     # "no-referrer" would make Chromium send `Origin: null` on form POSTs,
                     # which the CSRF origin check must refuse
                     "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8800
    session_ttl_s: float = 8 * 3600.0
    users_file: Path = Path("web-users.json")
    store_path: Path = Path("web.sqlite3")
    alerts_topic: str = "fieldlink.alerts"
    #: gateways ingest accepts (listed even before they ever sent anything)
    known_gateways: tuple[str, ...] = ()
    influx: Any = None  # cloud.sinks.influx.client.InfluxTarget
    #: how long InfluxDB keeps data (None: forever — the archive is never needed)
    retention_ms: int | None = 7 * 86_400_000
    archive_root: str | None = None
    offline_after_s: float = 300.0
    lookback_s: float = 86_400.0
    secure_cookies: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    housekeeping_s: float = 60.0

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> WebSettings:
        """From a `CloudConfig`; `overrides` (command-line options) win."""
        from cloud.sinks.influx.client import InfluxTarget, duration_seconds

        retention = duration_seconds(cfg.influxdb.retention)
        values: dict[str, Any] = dict(
            host=cfg.web.host, port=cfg.web.port, session_ttl_s=cfg.web.session_ttl_s,
            users_file=Path(cfg.web.users_file),
            store_path=Path(cfg.cloud.data_dir) / "web.sqlite3",
            alerts_topic=cfg.kafka.topics.alerts.name,
            known_gateways=tuple(sorted(cfg.ingest.gateways)),
            influx=InfluxTarget.from_config(cfg.influxdb),
            retention_ms=retention * 1000 if retention else None,
            archive_root=cfg.archive_path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class _Collector:
    def __init__(self, service: WebService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        if s.guard is None or s.api is None or s.feed is None:
            return
        logins = CounterMetricFamily("fieldlink_web_logins", "Dashboard login attempts",
                                     labels=["outcome"])
        for outcome in ("ok", "failed", "throttled", "bad_token"):
            logins.add_metric([outcome], s.guard.counts[f"login_{outcome}"])
        yield logins
        yield CounterMetricFamily("fieldlink_web_unauthenticated",
                                  "Requests refused for want of a session",
                                  value=s.guard.counts["unauthenticated"])
        yield CounterMetricFamily("fieldlink_web_csrf_refused",
                                  "POSTs refused for a missing or wrong CSRF token",
                                  value=s.guard.counts["csrf_refused"])
        yield GaugeMetricFamily("fieldlink_web_sessions", "Open dashboard sessions",
                                value=s.store.session_count())
        yield GaugeMetricFamily("fieldlink_web_alert_streams", "Open live-alert streams",
                                value=s.feed.subscribers)
        yield GaugeMetricFamily("fieldlink_web_alerts_active", "Active alerts on the board",
                                value=len(s.board))
        yield CounterMetricFamily("fieldlink_web_alert_records",
                                  "Records read from the alerts topic",
                                  value=s.feed.records)
        yield CounterMetricFamily("fieldlink_web_alert_records_malformed",
                                  "Unreadable records on the alerts topic (skipped)",
                                  value=s.feed.malformed_records)
        yield CounterMetricFamily("fieldlink_web_acks", "Alerts acknowledged on the dashboard",
                                  value=s.api.counts["acks"])
        yield CounterMetricFamily("fieldlink_web_store_unavailable",
                                  "API answers 503 because InfluxDB or the archive failed",
                                  value=s.api.counts["store_unavailable"])


class WebService:
    def __init__(self, settings: WebSettings, bus: Any, *, clock: Clock | None = None,
                 registry: CollectorRegistry | None = None, influx: Any = None) -> None:
        """`influx`: a reader to use instead of an `InfluxReader` of `settings.influx` (the
        seam unit tests put a fake InfluxDB in)."""
        self.settings = settings
        self.bus = bus
        self.clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store = WebStore(settings.store_path)
        self.board = AlertBoard()
        self.users: UserBook | None = None
        self.guard: Guard | None = None
        self.api: Api | None = None
        self.feed: AlertFeed | None = None
        self.influx: Any = influx
        self.archive: ArchiveReader | None = None
        self.http: ServiceHttp | None = None
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("WebService is not running")
        return self.http.url

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        self.users = UserBook(s.users_file)  # ConfigError: refuse to start on a bad file
        await asyncio.to_thread(self.store.open, self.clock.now_ms())
        self._stack.callback(self.store.close)
        self.board.load_acks(self.store.acks())
        if self.influx is None:
            if s.influx is None:
                raise ConfigError("web", [("influxdb", "the dashboard needs an InfluxDB "
                                                       "target")])
            self.influx = await self._stack.enter_async_context(InfluxReader(s.influx))
        if s.archive_root:
            self.archive = ArchiveReader(s.archive_root)
            self._stack.callback(self.archive.close)
        self.feed = await self._stack.enter_async_context(
            AlertFeed(self.bus, s.alerts_topic, self.board))
        self.guard = Guard(self.store, self.users, self.clock,
                           ttl_ms=int(s.session_ttl_s * 1000),
                           secure_cookies=s.secure_cookies or s.tls_cert is not None)
        history = History(self.influx, self.archive, retention_ms=s.retention_ms)
        fleet = FleetReader(self.influx, self.clock, lookback_ms=int(s.lookback_s * 1000))
        self.api = Api(self.guard, self.store, self.board, self.feed, fleet, history,
                       self.clock, known_gateways=list(s.known_gateways),
                       offline_after_ms=int(s.offline_after_s * 1000))
        self._stack.callback(self.api.stopping.set)
        self.registry.register(_Collector(self))  # type: ignore[arg-type]
        routes: list[web.AbstractRouteDef] = [
            *self.guard.routes(), *self.api.routes(),
            web.static("/static", STATIC_DIR, append_version=False)]
        self.http = ServiceHttp(s.host, s.port, self.registry,
                                {"influxdb": self.influx.healthy, "alerts": self.feed.health},
                                routes, ssl_context=self._tls(), name="web",
                                shutdown_timeout=10.0)
        self.http.app.on_response_prepare.append(_security_headers)
        await self._stack.enter_async_context(self.http)
        self._task = asyncio.create_task(self._housekeeping(), name="web-housekeeping")
        self._stack.push_async_callback(self._stop_task)
        log.info("dashboard listening", extra={"fields": {
            "url": self.http.url, "users": len(self.users), "alerts_topic": s.alerts_topic,
            "archive": s.archive_root}})

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.tls_cert is None:
            return None
        from cloud.http import tls_context

        if s.tls_key is None:
            raise ConfigError("web", [("tls_key", "a certificate needs its key file")])
        return tls_context(s.tls_cert, s.tls_key)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _housekeeping(self) -> None:
        assert self.users is not None
        while True:
            await asyncio.sleep(self.settings.housekeeping_s)
            try:
                self.users.refresh()
                names = set(self.users.names())
                gone = await self.store.purge(self.clock.now_ms(), users=names)
                if gone:
                    log.info("sessions ended", extra={"fields": {"count": gone}})
            except ConfigError as exc:
                log.error("users file unreadable; keeping the accounts read before",
                          extra={"fields": {"error": str(exc)}})
            except Exception:
                log.exception("web housekeeping failed; retrying at the next interval")

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.api is not None:
            self.api.stopping.set()
        await self._stack.aclose()
        log.info("dashboard stopped")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
