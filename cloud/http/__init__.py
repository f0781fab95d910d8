"""The HTTP endpoint every cloud service shares: `/metrics`, `/healthz` and its own routes.

`ServiceHttp` (aiohttp) is imported on first use, so a module that only defines health checks
does not pull in the web server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloud.http.health import Check, CheckOutcome, HealthChecks, HealthReport

if TYPE_CHECKING:
    from cloud.http.server import ServiceHttp, tls_context

__all__ = ["Check", "CheckOutcome", "HealthChecks", "HealthReport", "ServiceHttp",
           "tls_context"]


def __getattr__(name: str) -> Any:
    if name in ("ServiceHttp", "tls_context"):
        from cloud.http import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
