"""The secondary pipelines' configuration: `secondary.yaml` and `load_secondary_config(path)`.

Three pipelines share one file, each in its own section:

* `clicks` — the web click collector (`fieldlink cloud clicks collector`) and the windowing
  job behind it (`fieldlink cloud clicks job`); docs/secondary-pipelines.md.
* `cdc` — PostgreSQL change data capture (`fieldlink cloud cdc connector|sink`).
* `connectors` — SaaS pollers and webhook receivers (`fieldlink cloud connectors run`).

The shared sections (`cloud`, `kafka`, `influxdb`, `archive`, `logging`) have exactly the
models of `cloud.yaml` (`edge.config.cloud`), so `cloud_config()` hands the cloud tier's
helpers (the bus, the sinks) the same object type they take everywhere else.

Secrets, overridable from the environment like every fieldlink secret:
`FIELDLINK_CLICKS__WRITE_KEYS` (`key=source,...` or a JSON object), `FIELDLINK_CDC__PASSWORD`,
`FIELDLINK_CONNECTORS__GITHUB__TOKEN`, `FIELDLINK_CONNECTORS__STRIPE__SIGNING_SECRET`,
`FIELDLINK_INFLUXDB__TOKEN`.
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
from edge.config.cloud import (
    ArchiveSection,
    CloudConfig,
    CloudSection,
    InfluxSection,
    KafkaSection,
    KafkaTopic,
)
from edge.config.gateway import (
    ByteSize,
    HttpUrl,
    LoggingSection,
    PathField,
    Port,
    Problems,
    check_model,
    port_clashes,
    resolve_paths,
)
from edge.errors import ConfigError

__all__ = ["CdcSection", "ClicksSection", "ConnectorsSection", "GithubSection",
           "SecondaryConfig", "StripeSection", "load_secondary_config"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _key_map(v: Any) -> Any:
    """From the environment: `source=key,source2=key2` or a JSON object."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise PydanticCustomError("key_map", "not a JSON object of source to write "
                                      "key") from None
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        source, sep, key = item.partition("=")
        if not sep:
            # never echo the item: it holds a write key
            raise PydanticCustomError("key_map", "expected source=key pairs separated by "
                                      "commas")
        out[source.strip()] = key.strip()
    return out


WriteKeys = Annotated[dict[str, pydantic.SecretStr], pydantic.BeforeValidator(_key_map)]


class ClicksSection(StrictModel):
    enabled: bool = True
    #: the collector's listen address (POST /v1/batch, GET /snippet.js, /metrics, /healthz)
    host: str = "127.0.0.1"
    port: Port = 8710
    #: source name -> its write key; a request's key is its HTTP Basic username (as
    #: Segment's), or `writeKey` in the body (browsers' sendBeacon cannot set headers)
    write_keys: WriteKeys = SecretField({})
    #: a user_id or session_id that is itself an email address or phone number is replaced
    #: by an HMAC-SHA256 pseudonym under this key; without a key such events are rejected
    pii_hash_key: pydantic.SecretStr | None = SecretField(None)
    #: browser origins allowed to post (CORS); "*" allows any
    allowed_origins: tuple[str, ...] = ("*",)
    topic: KafkaTopic = KafkaTopic(name="web_events", partitions=6)
    deadletter_topic: KafkaTopic = KafkaTopic(name="web_events.deadletter", partitions=1)
    #: a request body larger than this (after gzip decoding) is refused: 413
    max_body_bytes: ByteSize = 512 * 1024
    #: one event's JSON larger than this is rejected (dead-lettered)
    max_event_bytes: ByteSize = 32 * 1024
    max_batch_events: int = Field(default=2500, ge=1, le=100_000)
    #: event ids remembered for de-duplication (oldest forgotten first)
    dedup_capacity: int = Field(default=2_000_000, ge=1000)
    #: events stamped further ahead of the collector's clock are rejected
    max_future_s: float = Field(default=600.0, ge=0)
    #: tumbling window size and how long after its end a window still takes late events
    window_s: float = Field(default=60.0, gt=0)
    grace_s: float = Field(default=900.0, ge=0)
    #: with no events for this long (processing time), stream time follows the wall clock
    #: so quiet windows still close
    idle_s: float = Field(default=30.0, gt=0)
    #: how often open windows are written to InfluxDB as provisional points (0: only final)
    provisional_every_s: float = Field(default=10.0, ge=0)
    #: the job's consumer group and its checkpoint interval
    group: str = Field(default="clicks-windows", min_length=1)
    checkpoint_every_s: float = Field(default=5.0, gt=0)
    influx_measurement: str = Field(default="web_events_1m", min_length=1)
    #: subdirectory of the archive the window results go to
    archive_dir: str = Field(default="web_events_1m", min_length=1)
    #: /metrics and /healthz of the window job (the collector serves its own on `port`)
    job_port: Port = 9111

    @pydantic.field_validator("write_keys")
    @classmethod
    def _write_keys(cls, v: dict[str, pydantic.SecretStr]) -> dict[str, pydantic.SecretStr]:
        for source, key in v.items():
            if not _NAME.fullmatch(source):
                raise PydanticCustomError("source", "{source} is not a source name (letters, "
                                          "digits, _)", {"source": repr(source)})
            if len(key.get_secret_value()) < 8:
                raise PydanticCustomError("write_key", "the write key of {source} is too "
                                          "short: use at least 8 characters",
                                          {"source": repr(source)})
        return v


def _table_name(v: str) -> str:
    parts = v.split(".")
    if len(parts) > 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise PydanticCustomError("table", "{value} is not schema.table (letters, digits, _)",
                                  {"value": repr(v)})
    return v if len(parts) == 2 else f"public.{v}"


#: "schema.table"; a bare table name means public.<table>
TableName = Annotated[str, pydantic.AfterValidator(_table_name)]


class CdcSection(StrictModel):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 5432
    user: str = "fieldlink"
    password: pydantic.SecretStr | None = SecretField(None)
    database: str = "fieldlink"
    #: the logical server name: topics are cdc.<server>.<schema>.<table> (Debezium's
    #: topic.prefix)
    server: str = Field(default="fieldlink", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    slot: str = Field(default="fieldlink_cdc", pattern=r"^[a-z0-9_]{1,63}$")
    publication: str = Field(default="fieldlink_cdc", pattern=r"^[A-Za-z0-9_]{1,63}$")
    #: create the publication for `tables` when it does not exist
    create_publication: bool = True
    #: the captured tables, "schema.table" (each needs a primary key)
    tables: tuple[TableName, ...] = ()
    partitions: int = Field(default=3, ge=1)
    #: rows per produced chunk (snapshot and large transactions)
    chunk_rows: int = Field(default=1000, ge=1, le=100_000)
    #: connector state: snapshot progress and the last LSN Kafka acknowledged
    #: (None: <cloud.data_dir>/cdc/<slot>.sqlite3)
    state_file: Path | None = PathField(None)
    #: the sink: where the change events are merged
    sink: Literal["duckdb", "postgres"] = "duckdb"
    #: None: <cloud.data_dir>/cdc/warehouse.duckdb
    duckdb_path: Path | None = PathField(None)
    #: with sink "postgres": a libpq connection string of the warehouse database
    postgres_dsn: pydantic.SecretStr | None = SecretField(None)
    #: schema the warehouse tables are created in (postgres sink; DuckDB uses `main`)
    sink_schema: str = Field(default="warehouse", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    sink_group: str = Field(default="cdc-warehouse", min_length=1)
    metrics_port: Port = 9112
    sink_metrics_port: Port = 9113

    def dsn(self) -> str:
        """libpq key=value connection string of the source database."""
        parts = [f"host={self.host}", f"port={self.port}", f"user={self.user}",
                 f"dbname={self.database}"]
        if self.password is not None:
            parts.append(f"password={self.password.get_secret_value()}")
        return " ".join(parts)

    def topic(self, table: str) -> str:
        """cdc.<server>.<schema>.<table> for a "schema.table"."""
        return f"cdc.{self.server}.{table}"

    @property
    def schema_topic(self) -> str:
        return f"cdc.{self.server}.schema_changes"

    def _checks(self) -> Problems:
        if not self.enabled:
            return []
        out = []
        if not self.tables:
            out.append(("tables", "list at least one table to capture"))
        if self.sink == "postgres" and self.postgres_dsn is None:
            out.append(("postgres_dsn", "required with sink postgres"))
        return out


class GithubSection(StrictModel):
    enabled: bool = False
    base_url: HttpUrl = "https://api.github.com"
    token: pydantic.SecretStr | None = SecretField(None)
    #: "owner/repo" names polled for events and commits
    repos: tuple[str, ...] = ()
    resources: tuple[Literal["events", "commits"], ...] = ("events", "commits")
    poll_interval_s: float = Field(default=60.0, gt=0)
    per_page: int = Field(default=100, ge=1, le=100)
    topic_prefix: str = "saas.github"

    @pydantic.field_validator("repos")
    @classmethod
    def _repos(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for repo in v:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
                raise PydanticCustomError("repo", "{value} is not owner/repo",
                                          {"value": repr(repo)})
        return v


class StripeSection(StrictModel):
    enabled: bool = False
    #: the endpoint's signing secret (whsec_...)
    signing_secret: pydantic.SecretStr | None = SecretField(None)
    #: a signature timestamp further from now than this is refused (replay protection)
    tolerance_s: float = Field(default=300.0, gt=0)
    path: str = Field(default="/webhooks/stripe", pattern=r"^/[A-Za-z0-9/_.-]*$")
    topic: str = "saas.stripe.events"

    def _checks(self) -> Problems:
        if self.enabled and self.signing_secret is None:
            return [("signing_secret", "required when enabled")]
        return []


class ConnectorsSection(StrictModel):
    #: the webhook receiver and /metrics, /healthz
    host: str = "127.0.0.1"
    port: Port = 8720
    #: cursors and delivered-event ids (None: <cloud.data_dir>/connectors/state.sqlite3)
    state_file: Path | None = PathField(None)
    max_body_bytes: ByteSize = 1024 * 1024
    #: retries of one request before the poll round gives up (and the next round resumes)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=300.0, gt=0)
    #: never wait longer than this for a rate-limit reset before trying again
    max_rate_wait_s: float = Field(default=3600.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    deadletter_topic: str = "saas.deadletter"
    github: GithubSection = GithubSection()
    stripe: StripeSection = StripeSection()


class SecondaryConfig(StrictModel):
    """`secondary.yaml`.  Build with `load_secondary_config`; see the module docstring."""

    cloud: CloudSection = CloudSection()
    kafka: KafkaSection = KafkaSection()
    influxdb: InfluxSection = InfluxSection()
    archive: ArchiveSection = ArchiveSection()
    logging: LoggingSection = LoggingSection()
    clicks: ClicksSection = ClicksSection()
    cdc: CdcSection = CdcSection()
    connectors: ConnectorsSection = ConnectorsSection()

    @property
    def archive_path(self) -> str:
        return self.archive.path or str(self.cloud.data_dir / "archive")

    @property
    def data_dir(self) -> Path:
        return self.cloud.data_dir

    @property
    def clicks_dir(self) -> Path:
        """The collector's de-duplication store and the window job's checkpoint."""
        return self.cloud.data_dir / "clicks"

    @property
    def cdc_state_file(self) -> Path:
        return self.cdc.state_file or self.cloud.data_dir / "cdc" / f"{self.cdc.slot}.sqlite3"

    @property
    def cdc_duckdb_path(self) -> Path:
        return self.cdc.duckdb_path or self.cloud.data_dir / "cdc" / "warehouse.duckdb"

    @property
    def connectors_state_file(self) -> Path:
        return self.connectors.state_file or \
            self.cloud.data_dir / "connectors" / "state.sqlite3"

    def cloud_config(self) -> CloudConfig:
        """The shared sections as a `CloudConfig` (for `cloud.bus.open_bus` & co.)."""
        return CloudConfig(cloud=self.cloud, kafka=self.kafka, influxdb=self.influxdb,
                           archive=self.archive, logging=self.logging)

    def problems(self) -> Problems:
        listeners = [("clicks.port", self.clicks.host, self.clicks.port),
                     ("clicks.job_port", "127.0.0.1", self.clicks.job_port),
                     ("cdc.metrics_port", "127.0.0.1", self.cdc.metrics_port),
                     ("cdc.sink_metrics_port", "127.0.0.1", self.cdc.sink_metrics_port),
                     ("connectors.port", self.connectors.host, self.connectors.port)]
        return check_model(self) + port_clashes(listeners)


def load_secondary_config(path: str | os.PathLike[str], *,
                          environ: Mapping[str, str] | None = None) -> SecondaryConfig:
    """Read, validate and complete `secondary.yaml`.  Raises ConfigError with every problem.

    Relative paths are resolved against the file's directory.
    """
    cfg = load_config(path, SecondaryConfig, environ=environ)
    cfg = resolve_paths(cfg, Path(os.path.abspath(path)).parent)
    if cfg.archive.path is None:
        cfg = cfg.model_copy(update={"archive": cfg.archive.model_copy(
            update={"path": cfg.archive_path})})
    problems = cfg.problems()
    if problems:
        raise ConfigError(str(path), problems)
    return cfg
