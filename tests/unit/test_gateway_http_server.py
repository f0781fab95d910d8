"""GatewayHttp over real HTTP on 127.0.0.1 (aiohttp client), and the health check rules."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.coap import CoapStats
from gateway.http import GatewayMetrics, HealthChecks
from gateway.http.server import GatewayHttp


async def get(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_metrics_serves_the_dedicated_registry() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    stats = CoapStats(readings_accepted=5)
    metrics.register_source("coap", lambda: stats)
    async with GatewayHttp("127.0.0.1", 0, registry) as http:
        status, content_type, body = await get(http.url + "/metrics")
        stats.readings_accepted = 6
        _, _, later = await get(http.url + "/metrics")
        _, om_type, om_body = await get(http.url + "/metrics",
                                        Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("text/plain")
    assert 'fieldlink_gateway_readings_received_total{protocol="coap"} 5.0' in body
    assert 'fieldlink_gateway_readings_received_total{protocol="coap"} 6.0' in later
    assert "process_resident_memory_bytes" in body
    assert om_type.startswith("application/openmetrics-text") and om_body.endswith("# EOF\n")


async def test_healthz_ok_lists_every_check() -> None:
    async def buffer_writable() -> bool:
        return True

    checks = {"buffer": buffer_writable, "coap": lambda: (True, "listening on udp port 5683")}
    async with GatewayHttp("127.0.0.1", 0, CollectorRegistry(), checks) as http:
        status, content_type, body = await get(http.url + "/healthz")
    assert status == 200 and content_type.startswith("application/json")
    assert json.loads(body) == {"status": "ok", "checks": {
        "buffer": {"ok": True, "detail": ""},
        "coap": {"ok": True, "detail": "listening on udp port 5683"}}}


async def test_healthz_503_names_the_failed_check() -> None:
    state = {"listening": True}
    async with GatewayHttp("127.0.0.1", 0, CollectorRegistry()) as http:
        http.add_health_check("mqtt", lambda: (state["listening"], "port 1883"))
        assert (await get(http.url + "/healthz"))[0] == 200
        state["listening"] = False
        status, _, body = await get(http.url + "/healthz")
    report = json.loads(body)
    assert status == 503
    assert report["status"] == "fail" and report["failed"] == ["mqtt"]
    assert report["checks"]["mqtt"] == {"ok": False, "detail": "port 1883"}


async def test_mounted_routes_are_served_and_late_mounting_is_refused() -> None:
    async def status_page(request: web.Request) -> web.Response:
        return web.Response(text="<h1>gateway</h1>", content_type="text/html")

    http = GatewayHttp("127.0.0.1", 0, CollectorRegistry())
    http.add_routes([web.get("/", status_page)])
    async with http:
        status, _, body = await get(http.url + "/")
        missing = (await get(http.url + "/nope"))[0]
        with pytest.raises(RuntimeError, match="before the HTTP server starts"):
            http.add_routes([web.get("/late", status_page)])
    assert status == 200 and body == "<h1>gateway</h1>"
    assert missing == 404


async def test_shutdown_releases_the_port() -> None:
    async with GatewayHttp("127.0.0.1", 0, CollectorRegistry()) as http:
        port = http.port
    async with GatewayHttp("127.0.0.1", port, CollectorRegistry()) as again:
        assert (await get(again.url + "/healthz"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"http://127.0.0.1:{port}/healthz")


async def test_health_check_results_raising_and_hanging() -> None:
    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    def raises() -> bool:
        raise OSError("database is locked")

    checks = HealthChecks({"plain": lambda: None, "false": lambda: False, "raises": raises,
                           "hangs": hangs, "odd": lambda: "yes"}, timeout=0.1)
    report = await checks.run()
    assert report.checks["plain"].ok
    assert not report.checks["false"].ok
    assert report.checks["raises"].detail == "OSError: database is locked"
    assert report.checks["hangs"].detail == "no answer within 0.1 s"
    assert "expected bool" in report.checks["odd"].detail
    assert report.failed == ["false", "hangs", "odd", "raises"]
    with pytest.raises(ValueError, match="already registered"):
        checks.add("plain", lambda: True)
