"""The gateway uplink: buffered readings to cloud ingest as compressed, signed batches,
exactly once by idempotency (docs/uplink.md).

    settings = UplinkSettings.from_config(cfg)
    async with Uplink(buffer, settings) as uplink:
        uplink.stats()          # UplinkStats (metrics source kind "uplink")
        uplink.health()         # (ok, detail) for /healthz
        uplink.down_since_ms    # for the alert engine's uplink_down rule

Guarantees: a batch is deleted from the buffer only after ingest answered 200 (or refused it
for good with 400, after a local dead-letter copy); an unanswered batch is resent with the
same sequence number and the same bytes, also after a crash; batches of an earlier run go
first, in sequence order.

Modules: `service` (the component), `settings`, `transport` (aiohttp, TLS, signing),
`frames` (claim <-> frame), and the pure policy parts `verdict` (what each status means),
`breaker` (circuit breaker), `bandwidth` (byte-rate cap), `stats`.
"""

from gateway.uplink.bandwidth import TokenBucket
from gateway.uplink.breaker import CircuitBreaker, CircuitState
from gateway.uplink.service import Uplink
from gateway.uplink.settings import BATCH_CONTENT_TYPE, BATCHES_PATH, UplinkSettings
from gateway.uplink.stats import UplinkStats
from gateway.uplink.verdict import Action, Verdict

__all__ = [
    "BATCHES_PATH", "BATCH_CONTENT_TYPE", "Action", "CircuitBreaker", "CircuitState",
    "TokenBucket", "Uplink", "UplinkSettings", "UplinkStats", "Verdict",
]
