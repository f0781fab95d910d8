"""The gateway's local status page, for a technician on site (docs/dashboards.md).

    http.add_routes(status_routes(gateway))      # GET /status, GET /status.json

`snapshot` (pure) turns the components' stats() into the page's JSON; `routes` serves the
one HTML page and the JSON, behind HTTP Basic with an operator account (or, without a
credentials file, to the gateway's own loopback clients only).
"""

from gateway.status.routes import StatusPage, status_routes
from gateway.status.snapshot import Parts, RateMeter, status_body

__all__ = ["Parts", "RateMeter", "StatusPage", "status_body", "status_routes"]
