"""`UplinkSettings`: how the uplink runs — plain data, built from `gateway.yaml`.

    settings = UplinkSettings.from_config(cfg)       # cfg: edge.config.gateway.GatewayConfig

    cfg key                           setting
    gateway.id                        gateway_id (signs requests, names the batches)
    uplink.url                        url (base URL; `/v1/batches` is appended unless given)
    uplink.gateway_secret             secret
    uplink.batch_max_readings         batch_max_records (rows per claim: alerts, aggregates,
                                      readings together)
    uplink.batch_max_age_ms           batch_max_age_ms
    uplink.compression                compression
    uplink.timeout_s                  timeout_s (one request, connect to last byte)
    uplink.backoff_base_s / cap_s     backoff_base_s / backoff_cap_s
    uplink.breaker_failures           breaker_failures
    uplink.breaker_reset_s            breaker_reset_s
    uplink.bandwidth_bytes_per_s      bandwidth_bytes_per_s (None: no cap)
    uplink.live_share                 live_share
    uplink.max_in_flight              max_in_flight (default 1) — when the config has it
    uplink.tls.cafile/certfile/keyfile  cafile / certfile / keyfile — when the config has them

Settings without a configuration key keep their defaults here (poll interval, shutdown grace);
tests construct `UplinkSettings` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.errors import ConfigError

__all__ = ["BATCH_CONTENT_TYPE", "BATCHES_PATH", "UplinkSettings"]

#: the media type cloud ingest accepts for one batch frame (docs/uplink.md)
BATCH_CONTENT_TYPE = "application/vnd.fieldlink.batch"
#: the ingest endpoint, relative to the configured base URL
BATCHES_PATH = "/v1/batches"


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    url: str
    gateway_id: str
    secret: bytes
    batch_max_records: int = 1000
    batch_max_age_ms: int = 1000
    compression: str = "zstd"
    timeout_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    bandwidth_bytes_per_s: int | None = None
    #: bytes the bandwidth cap lets through at once after an idle period (None: one second's
    #: worth, at least one maximal frame would still be sent, just later)
    bandwidth_burst_bytes: int | None = None
    live_share: float = 0.3
    #: batches posted concurrently.  1 keeps batches in sequence order on the wire
    max_in_flight: int = 1
    #: TLS for https URLs: the CA bundle that signs the ingest certificate (None: the system
    #: store), and a client certificate + key when ingest asks for one
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    #: how often the buffer's counters are looked at while nothing triggers a batch
    poll_interval_s: float = 0.05
    #: at shutdown, an attempt in progress gets this long to finish before it is abandoned
    #: (an abandoned batch stays claimed and is resent identically at the next start)
    shutdown_grace_s: float = 5.0
    #: bytes of an error answer kept for logs and stats
    max_answer_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(("url", f"{self.url!r} is not an http(s) URL with a host"))
        if not self.gateway_id:
            problems.append(("gateway.id", "must not be empty"))
        elif any(c in self.gateway_id for c in ".\r\n") or len(self.gateway_id.encode()) > 255:
            # "." separates the signed fields of edge.signing; a frame holds <= 255 bytes
            problems.append(("gateway.id", "cannot sign batches: use at most 255 bytes and no "
                                           "'.'"))
        if len(self.secret) < 16:
            problems.append(("gateway_secret", "must be at least 16 bytes"))
        if not 1 <= self.batch_max_records <= 100_000:
            problems.append(("batch_max_readings", "must be within 1..100000"))
        if self.batch_max_age_ms < 0:
            problems.append(("batch_max_age_ms", "must be >= 0"))
        if self.compression not in ("zstd", "gzip", "none"):
            problems.append(("compression", "must be zstd, gzip or none"))
        if self.timeout_s <= 0:
            problems.append(("timeout_s", "must be > 0"))
        if not 0 < self.backoff_base_s <= self.backoff_cap_s:
            problems.append(("backoff_base_s", "must be > 0 and <= backoff_cap_s"))
        if self.breaker_failures < 1 or self.breaker_reset_s <= 0:
            problems.append(("breaker_failures", "needs >= 1 failures and a reset time > 0"))
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            problems.append(("bandwidth_bytes_per_s", "must be > 0 (or unset for no cap)"))
        if not 0.0 <= self.live_share <= 1.0:
            problems.append(("live_share", "must be within 0..1"))
        if not 1 <= self.max_in_flight <= 64:
            problems.append(("max_in_flight", "must be within 1..64"))
        if (self.certfile is None) != (self.keyfile is None):
            problems.append(("tls.certfile", "a client certificate needs both certfile and "
                                             "keyfile"))
        if problems:
            raise ConfigError("uplink settings", [
                (k if k.startswith("gateway.") else f"uplink.{k}", v) for k, v in problems])

    @property
    def endpoint(self) -> str:
        """The URL batches are posted to."""
        base = self.url.rstrip("/")
        return base if base.endswith(BATCHES_PATH) else base + BATCHES_PATH

    @property
    def display_url(self) -> str:
        """The endpoint without credentials or query (safe for logs)."""
        parts = urlsplit(self.endpoint)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    @classmethod
    def from_config(cls, cfg: Any) -> UplinkSettings:
        """From an `edge.config.gateway.GatewayConfig`.  Raises ConfigError when the uplink
        has no secret (the config loader already refuses that while the uplink is enabled)."""
        up = cfg.uplink
        if up.gateway_secret is None:
            raise ConfigError("gateway config", [("uplink.gateway_secret", "required when the "
                                                  "uplink is enabled")])
        tls = getattr(up, "tls", None)

        def tls_path(name: str) -> Path | None:
            value = getattr(tls, name, None) if tls is not None else None
            return Path(value) if value is not None else None

        bandwidth = up.bandwidth_bytes_per_s
        return cls(
            url=up.url, gateway_id=cfg.gateway.id,
            secret=up.gateway_secret.get_secret_value().encode(),
            batch_max_records=up.batch_max_readings, batch_max_age_ms=up.batch_max_age_ms,
            compression=up.compression, timeout_s=up.timeout_s,
            backoff_base_s=up.backoff_base_s, backoff_cap_s=up.backoff_cap_s,
            breaker_failures=up.breaker_failures, breaker_reset_s=up.breaker_reset_s,
            bandwidth_bytes_per_s=int(bandwidth) if bandwidth is not None else None,
            live_share=up.live_share,
            max_in_flight=int(getattr(up, "max_in_flight", 1) or 1),
            cafile=tls_path("cafile"), certfile=tls_path("certfile"),
            keyfile=tls_path("keyfile"))
