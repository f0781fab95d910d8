"""The gateway's HTTP endpoint (`/metrics`, `/healthz`, mounted routes) and its metrics.

`gateway.http.metrics` (prometheus_client only) and `gateway.http.health` import nothing
heavy; `GatewayHttp` (aiohttp) is imported on first use, so a component that only registers
metrics or health checks does not pull in the web server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.http.health import CheckOutcome, HealthChecks, HealthReport
from gateway.http.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gateway.http.server import GatewayHttp

__all__ = ["CheckOutcome", "GatewayHttp", "GatewayMetrics", "HealthChecks", "HealthReport"]


def __getattr__(name: str) -> Any:
    if name == "GatewayHttp":
        from gateway.http.server import GatewayHttp
        return GatewayHttp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
