"""Ingest settings, mapped from the cloud configuration (`edge.config.cloud.CloudConfig`).

    cfg key                        setting
    ingest.host / ingest.port      host, port
    ingest.gateways                secrets (gateway id → HMAC secret bytes)
    ingest.replay_window_s         replay_window_ms
    ingest.max_body_bytes          max_body_bytes (413 above it, before the body is read)
    ingest.tls.*                   tls_* (HTTPS; client certificates checked against cafile)
    kafka.topics.*                 topics (names) and topic_specs (partitions, replication)
    kafka.key                      key_mode (facility_line | device)
    kafka.compression              record_compression: "none" inside records when the bus
                                   compresses batches of records itself, else "zstd"
    kafka.bootstrap_servers        empty: the embedded bus — its records are frames
                                   compressed with zstd
    cloud.data_dir                 ledger_path (<data_dir>/ingest-ledger.sqlite3)

Settings without a configuration key keep their defaults here (ledger horizon, recent-key
capacity, record size cap, Retry-After, timeouts); `dataclasses.replace` changes them in
tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.bus import TopicSpec, topic_specs

if TYPE_CHECKING:
    from edge.config.cloud import CloudConfig

__all__ = ["IngestSettings", "LEDGER_FILE", "Topics"]

LEDGER_FILE = "ingest-ledger.sqlite3"


@dataclass(frozen=True, slots=True)
class Topics:
    readings: str = "fieldlink.readings"
    aggregates: str = "fieldlink.aggregates"
    alerts: str = "fieldlink.alerts"
    deadletter: str = "fieldlink.deadletter"


@dataclass(frozen=True)
class IngestSettings:
    ledger_path: Path
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8700
    replay_window_ms: int = 300_000
    max_body_bytes: int = 16 * 1024 * 1024
    tls_enabled: bool = False
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    tls_cafile: Path | None = None
    tls_require_client_cert: bool = False
    topics: Topics = Topics()
    topic_specs: tuple[TopicSpec, ...] = ()
    key_mode: str = "facility_line"
    #: compression of the frames inside records (the bus may compress record batches too)
    record_compression: str = "none"
    #: a record value stays below this (Kafka's default message.max.bytes is ~1 MB)
    max_record_bytes: int = 512 * 1024
    #: forget batches produced longer ago than this (the gateway never retries that late)
    ledger_horizon_ms: int = 7 * 86_400_000
    #: reading identities remembered per gateway (see cloud.ingest.dedup.RecentKeys)
    recent_keys: int = 50_000
    #: seconds a 503 asks the gateway to wait before retrying
    retry_after_s: int = 5
    #: requests in progress at shutdown get this long to finish
    shutdown_timeout_s: float = 30.0
    #: how often topics creation is retried while the bus is down, at most (seconds)
    setup_retry_cap_s: float = 10.0

    @classmethod
    def from_config(cls, cfg: CloudConfig) -> IngestSettings:
        ingest, kafka = cfg.ingest, cfg.kafka
        t = kafka.topics
        bus_compresses = bool(kafka.bootstrap_servers) and kafka.compression != "none"
        return cls(
            ledger_path=Path(cfg.cloud.data_dir) / LEDGER_FILE,
            secrets={gw: s.get_secret_value().encode() for gw, s in ingest.gateways.items()},
            host=ingest.host, port=ingest.port,
            replay_window_ms=int(ingest.replay_window_s * 1000),
            max_body_bytes=int(ingest.max_body_bytes),
            tls_enabled=ingest.tls.enabled, tls_certfile=ingest.tls.certfile,
            tls_keyfile=ingest.tls.keyfile, tls_cafile=ingest.tls.cafile,
            tls_require_client_cert=ingest.tls.require_client_cert,
            topics=Topics(t.readings.name, t.aggregates.name, t.alerts.name,
                          t.deadletter.name),
            topic_specs=tuple(topic_specs(kafka)),
            key_mode=kafka.key,
            record_compression="none" if bus_compresses else "zstd",
        )
