"""The small aiohttp server every cloud service runs: `/metrics`, `/healthz`, its own routes.

    registry = CollectorRegistry()                     # dedicated, never the global one
    routes = [web.post("/v1/batches", handler), web.get("/openapi.json", spec)]
    async with ServiceHttp(host, port, registry, {"bus": bus.healthy}, routes) as http:
        print(http.url)
        ...

* ``GET /metrics`` — Prometheus text format (OpenMetrics when asked) of `registry`.
* ``GET /healthz`` — 200 ``{"status": "ok", "checks": {...}}`` or 503 ``{"status": "fail",
  "failed": [...], "checks": {...}}`` (see `cloud.http.health`).
* `routes` — aiohttp route definitions, mounted before the server starts (aiohttp freezes
  the router on start; `add_routes` afterwards raises RuntimeError).

TLS: pass an `ssl.SSLContext` (`tls_context(...)` builds one from the config's files; with a
CA file and `require_client_cert` the server demands a client certificate it signed).

Shutdown (`__aexit__`): the listening socket closes first, requests in progress get up to
`shutdown_timeout` seconds to finish (aiohttp's graceful cleanup), then connections close.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from cloud.http.health import Check, HealthChecks

__all__ = ["ServiceHttp", "tls_context"]

log = logging.getLogger("fieldlink.cloud.http")


def tls_context(certfile: str | Path, keyfile: str | Path, cafile: str | Path | None = None,
                require_client_cert: bool = False) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+).  With `cafile`, client certificates signed by it are
    verified when offered, and required when `require_client_cert`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    if cafile is not None:
        ctx.load_verify_locations(cafile=str(cafile))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert needs a CA file to verify client certificates")
    return ctx


class ServiceHttp:
    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 registry: CollectorRegistry | None = None,
                 health_checks: HealthChecks | Mapping[str, Check] | None = None,
                 routes: Iterable[web.AbstractRouteDef] = (), *,
                 ssl_context: ssl.SSLContext | None = None, check_timeout: float = 2.0,
                 shutdown_timeout: float = 30.0, client_max_size: int = 1024**2,
                 name: str = "http") -> None:
        self.host = host
        self._requested_port = port
        self.name = name
        self.registry = registry if registry is not None else CollectorRegistry()
        if isinstance(health_checks, HealthChecks):
            self.health = health_checks
        else:
            self.health = HealthChecks(health_checks, timeout=check_timeout)
        self.ssl_context = ssl_context
        self.shutdown_timeout = shutdown_timeout
        self._app = web.Application(client_max_size=client_max_size)
        self._app.router.add_get("/metrics", self._metrics)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_routes(list(routes))
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("ServiceHttp is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        if self._runner is not None:
            raise RuntimeError("add routes before the HTTP server starts")
        self._app.router.add_routes(list(routes))

    def add_health_check(self, name: str, check: Check) -> None:
        self.health.add(name, check)

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(self._app, access_log=None,
                               shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port,
                               ssl_context=self.ssl_context)
            await site.start()
            addresses = runner.addresses
            self._port = int(addresses[0][1]) if addresses else self._requested_port
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("http listening", extra={"fields": {
            "service": self.name, "host": self.host, "port": self._port,
            "tls": self.ssl_context is not None}})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("http stopped", extra={"fields": {"service": self.name}})

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        report = await self.health.run()
        return web.json_response(report.as_json(), status=200 if report.ok else 503)
