"""The cloud tier's configuration: the model of `cloud.yaml` and `load_cloud_config(path)`.

Loading works exactly like the gateway's (see `edge.config.gateway`): YAML validated by
`edge.config.load_config`, relative paths resolved against the config file's directory,
derived defaults filled in (`archive.path` = `<cloud.data_dir>/archive`), then cross-key
checks; every problem is reported with file, key path and reason in one `ConfigError`.

Secrets (`pydantic.SecretStr`, overridable from the environment):

* `ingest.gateways` — gateway id → HMAC secret.  `FIELDLINK_INGEST__GATEWAYS` replaces the
  whole map; its value is `id=secret[,id=secret...]` or a JSON object.
* `influxdb.token` — `FIELDLINK_INFLUXDB__TOKEN`.

Kafka: an empty `kafka.bootstrap_servers` means no Kafka at all: the cloud tier runs on its
embedded single-machine bus (`cloud.bus.embedded`, an append-only SQLite log in
`cloud.data_dir` shared by the ingest and sink processes).  `embedded` says which.  The local
test broker that `deploy/local/services/kafka.sh` runs is on `LOCAL_KAFKA` (127.0.0.1:19092).  `acks` is not a choice: ingest answers 2xx only after every
in-sync replica has the batch, so it is fixed to "all".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field
from pydantic_core import PydanticCustomError

from edge.config import SecretField, StrictModel, load_config
from edge.config.gateway import (
    ByteSize,
    HttpSection,
    HttpUrl,
    LoggingSection,
    PathField,
    Port,
    Problems,
    TlsSection,
    check_model,
    port_clashes,
    resolve_paths,
)
from edge.errors import ConfigError
from edge.payload.decode import is_valid_device_id

__all__ = ["ArchiveSection", "CloudConfig", "CloudHttpSection", "CloudSection",
           "InfluxSection", "IngestSection", "KafkaSection", "KafkaTopic", "KafkaTopics",
           "LOCAL_KAFKA", "WebSection", "load_cloud_config"]

#: the broker deploy/local/services/kafka.sh runs (FIELDLINK_KAFKA_PORT changes its port)
LOCAL_KAFKA = "127.0.0.1:19092"
_MIN_SECRET = 16


class CloudSection(StrictModel):
    #: state: the archive (unless archive.path says otherwise), web sessions
    data_dir: Path = PathField(Path("/var/lib/fieldlink/cloud"))


def _gateway_map(v: Any) -> Any:
    """The environment gives a string: `id=secret,id2=secret2` or a JSON object."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise PydanticCustomError("gateway_map", "not a JSON object of gateway id to "
                                      "secret") from None
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        gateway_id, sep, secret = item.partition("=")
        if not sep:
            # never echo the item: it may be a secret
            raise PydanticCustomError("gateway_map", "expected id=secret pairs separated by "
                                      "commas")
        out[gateway_id.strip()] = secret.strip()
    return out


GatewayMap = Annotated[dict[str, pydantic.SecretStr], pydantic.BeforeValidator(_gateway_map)]


class IngestSection(StrictModel):
    host: str = "127.0.0.1"
    port: Port = 8700
    #: gateway id → the secret that gateway signs its batches with (uplink.gateway_secret)
    gateways: GatewayMap = SecretField({})
    #: a batch whose signed timestamp is older (or newer) than this is refused as a replay
    replay_window_s: float = Field(default=300.0, gt=0)
    max_body_bytes: ByteSize = 16 * 1024 * 1024
    tls: TlsSection = TlsSection()

    @pydantic.field_validator("gateways")
    @classmethod
    def _gateways(cls, v: dict[str, pydantic.SecretStr]) -> dict[str, pydantic.SecretStr]:
        for gateway_id, secret in v.items():
            if not is_valid_device_id(gateway_id):
                raise PydanticCustomError("gateway_id", "{id} is not a valid gateway id",
                                          {"id": repr(gateway_id)})
            if len(secret.get_secret_value()) < _MIN_SECRET:
                raise PydanticCustomError("secret", "the secret of {id} is too short: use at "
                                          "least 16 characters", {"id": repr(gateway_id)})
        return v

    def secret_for(self, gateway_id: str) -> bytes | None:
        secret = self.gateways.get(gateway_id)
        return secret.get_secret_value().encode() if secret is not None else None


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class KafkaTopic(StrictModel):
    name: str
    partitions: int = Field(default=3, ge=1, le=10_000)

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TOPIC.fullmatch(v) or v in (".", ".."):
            raise PydanticCustomError("topic", "{value} is not a Kafka topic name (1-249 of "
                                      "letters, digits, '.', '_', '-')", {"value": repr(v)})
        return v


class KafkaTopics(StrictModel):
    readings: KafkaTopic = KafkaTopic(name="fieldlink.readings", partitions=6)
    aggregates: KafkaTopic = KafkaTopic(name="fieldlink.aggregates", partitions=3)
    alerts: KafkaTopic = KafkaTopic(name="fieldlink.alerts", partitions=3)
    deadletter: KafkaTopic = KafkaTopic(name="fieldlink.deadletter", partitions=1)

    def _checks(self) -> Problems:
        seen: dict[str, str] = {}
        out = []
        for key in ("readings", "aggregates", "alerts", "deadletter"):
            name = getattr(self, key).name
            if name in seen:
                out.append((f"{key}.name", f"{name} is already the {seen[name]} topic"))
            seen[name] = key
        return out


def _servers(v: Any) -> Any:
    return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def _acks(v: Any) -> Any:
    if v not in ("all", -1, "-1"):
        raise PydanticCustomError("acks", "acks is fixed to 'all': ingest answers 2xx only "
                                  "after every in-sync replica has the batch")
    return "all"


class KafkaSection(StrictModel):
    #: host:port list; empty: LOCAL_KAFKA, the single-machine broker
    bootstrap_servers: Annotated[tuple[str, ...], pydantic.BeforeValidator(_servers)] = ()
    client_id: str = Field(default="fieldlink-cloud", min_length=1)
    compression: Literal["zstd", "gzip", "lz4", "snappy", "none"] = "zstd"
    acks: Annotated[Literal["all"], pydantic.BeforeValidator(_acks)] = "all"
    replication_factor: int = Field(default=1, ge=1)
    topics: KafkaTopics = KafkaTopics()
    #: record key: all devices of a production line in one partition (ordered together),
    #: one key per device (spreads load more evenly), or one per gateway (a batch is never
    #: split: the cheapest for ingest; a device talks to one gateway, so it stays ordered)
    key: Literal["facility_line", "device", "gateway"] = "facility_line"

    @pydantic.field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for server in v:
            m = _HOST_PORT.fullmatch(server)
            if not m or not 0 < int(m[2]) <= 65535:
                raise PydanticCustomError("server", "{value} is not host:port",
                                          {"value": repr(server)})
        return v

    def bootstrap(self) -> list[str]:
        return list(self.bootstrap_servers)

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the embedded single-machine bus is used."""
        return not self.bootstrap_servers


_DURATION = re.compile(r"(?:\d+(?:ns|us|µs|ms|s|m|h|d|w))+|INF|0", re.IGNORECASE)


class InfluxSection(StrictModel):
    enabled: bool = True
    #: v1: InfluxDB 1.x (database + retention_policy); v2: 2.x / Cloud (org + bucket + token)
    api: Literal["v1", "v2"] = "v1"
    url: HttpUrl = "http://127.0.0.1:8086"
    #: v2 API token; with v1, "username:password" when auth is on (None: no auth)
    token: pydantic.SecretStr | None = SecretField(None)
    org: str | None = None
    bucket: str | None = None
    database: str = Field(default="fieldlink", min_length=1)
    #: v1 retention policy written to (None: the database's default policy)
    retention_policy: str | None = None
    #: how long the hot store keeps data (InfluxDB duration; INF: forever)
    retention: str = "7d"
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_ms: int = Field(default=1000, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)

    @pydantic.field_validator("retention")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not _DURATION.fullmatch(v):
            raise PydanticCustomError("duration", "{value} is not an InfluxDB duration such "
                                      "as 7d, 12h, 1w2d or INF", {"value": repr(v)})
        return v

    def _checks(self) -> Problems:
        if not self.enabled or self.api == "v1":
            return []
        return [(key, "required with api v2") for key in ("org", "bucket", "token")
                if getattr(self, key) is None]


class ArchiveSection(StrictModel):
    #: a local directory or an fsspec URL (s3://bucket/prefix, ...); None: <data_dir>/archive
    path: str | None = PathField(None)
    #: a Parquet file is closed when it reaches this size ...
    roll_bytes: ByteSize = 128 * 1024 * 1024
    #: ... or this age, whichever comes first
    roll_seconds: float = Field(default=300.0, gt=0)
    #: small files of a partition older than this are merged (None: never)
    compact_after_days: float | None = Field(default=1.0, ge=0)
    #: partitions older than this are deleted (None: kept forever)
    expire_after_days: float | None = Field(default=None, gt=0)

    def _checks(self) -> Problems:
        if (self.expire_after_days is not None and self.compact_after_days is not None
                and self.expire_after_days <= self.compact_after_days):
            return [("expire_after_days", "must be later than compact_after_days")]
        return []


class WebSection(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8800
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0)
    #: dashboard accounts (hashed passwords), managed from the command line
    users_file: Path = PathField(Path("web-users.json"))


class CloudHttpSection(HttpSection):
    port: Port = 9101


class CloudConfig(StrictModel):
    """`cloud.yaml`.  Build with `load_cloud_config`; see the module docstring."""

    cloud: CloudSection = CloudSection()
    ingest: IngestSection = IngestSection()
    kafka: KafkaSection = KafkaSection()
    influxdb: InfluxSection = InfluxSection()
    archive: ArchiveSection = ArchiveSection()
    web: WebSection = WebSection()
    http: CloudHttpSection = CloudHttpSection()
    logging: LoggingSection = LoggingSection()

    @property
    def archive_path(self) -> str:
        return self.archive.path or str(self.cloud.data_dir / "archive")

    def problems(self) -> Problems:
        """Cross-key problems as (key path, reason); empty when the config is usable."""
        listeners = [("ingest.port", self.ingest.host, self.ingest.port)]
        if self.web.enabled:
            listeners.append(("web.port", self.web.host, self.web.port))
        if self.http.enabled:
            listeners.append(("http.port", self.http.host, self.http.port))
        return check_model(self) + port_clashes(listeners)


def load_cloud_config(path: str | os.PathLike[str], *,
                      environ: Mapping[str, str] | None = None) -> CloudConfig:
    """Read, validate and complete `cloud.yaml`.  Raises ConfigError with every problem."""
    cfg = load_config(path, CloudConfig, environ=environ)
    cfg = resolve_paths(cfg, Path(os.path.abspath(path)).parent)
    if cfg.archive.path is None:
        cfg = cfg.model_copy(update={"archive": cfg.archive.model_copy(
            update={"path": cfg.archive_path})})
    problems = cfg.problems()
    if problems:
        raise ConfigError(str(path), problems)
    return cfg
