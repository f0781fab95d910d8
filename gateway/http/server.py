"""The gateway's small HTTP endpoint: `/metrics`, `/healthz`, and routes others mount.

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    async with GatewayHttp("0.0.0.0", 9100, registry, {"coap": coap.health}) as http:
        http.add_health_check("serial", serial_in.health)
        ...

* ``GET /metrics`` — Prometheus text format (OpenMetrics when the scraper asks for it) of
  `registry`, a dedicated `CollectorRegistry` (never the process-global one, so several
  gateways can run in one process, e.g. in tests).
* ``GET /healthz`` — runs every health check (see `gateway.http.health`): 200 with
  ``{"status": "ok", "checks": {...}}`` or 503 with ``{"status": "fail", "failed": [...],
  "checks": {...}}``.
* `add_routes(routes)` mounts more (the status page): aiohttp `RouteDef`s, e.g.
  ``web.get("/", handler)``.  Routes are fixed once the server has started (aiohttp freezes
  its router), so mount them before `__aenter__`; afterwards it raises `RuntimeError`.

No access log: a scrape every few seconds is not news.  Shutdown closes the listening socket
and waits for requests in progress (aiohttp's graceful cleanup).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from gateway.http.health import Check, HealthChecks

log = logging.getLogger("fieldlink.gateway.http")


class GatewayHttp:
    def __init__(self, host: str = "127.0.0.1", port: int = 9100,
                 registry: CollectorRegistry | None = None,
                 health_checks: HealthChecks | Mapping[str, Check] | None = None, *,
                 check_timeout: float = 2.0) -> None:
        self.host = host
        self._requested_port = port
        self.registry = registry if registry is not None else CollectorRegistry()
        if isinstance(health_checks, HealthChecks):
            self.health = health_checks
        else:
            self.health = HealthChecks(health_checks, timeout=check_timeout)
        self._app = web.Application()
        self._app.router.add_get("/metrics", self._metrics)
        self._app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("GatewayHttp is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        if self._runner is not None:
            raise RuntimeError("add routes before the HTTP server starts")
        self._app.router.add_routes(list(routes))

    def add_health_check(self, name: str, check: Check) -> None:
        self.health.add(name, check)

    async def __aenter__(self) -> GatewayHttp:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
            addresses = runner.addresses
            self._port = int(addresses[0][1]) if addresses else self._requested_port
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("http listening", extra={"fields": {"host": self.host, "port": self._port}})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("http stopped")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        report = await self.health.run()
        return web.json_response(report.as_json(), status=200 if report.ok else 503)
