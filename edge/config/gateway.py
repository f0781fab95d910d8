"""The gateway's configuration: the model of `gateway.yaml` and `load_gateway_config(path)`.

Every key has a default, so an almost empty file is a working gateway; the commented example
`config/gateway.yaml` explains each key and docs/configuration.md lists them.

`load_gateway_config(path)` is `edge.config.load_config` (YAML, unknown keys refused, secrets
overridable from the environment: `FIELDLINK_UPLINK__GATEWAY_SECRET`,
`FIELDLINK_ALERTS__PAGERDUTY_ROUTING_KEY`) plus three steps that need the file's location or
the whole model:

1. relative paths (keys declared with `PathField`) are resolved against the directory of the
   config file, never the working directory, so `fieldlink gateway run -c /etc/x/gw.yaml`
   means the same from anywhere;
2. derived defaults are filled in (`buffer.path` = `<gateway.data_dir>/buffer.sqlite3`);
3. cross-key checks (`GatewayConfig.problems()`: TLS files when TLS is on, the uplink secret
   when the uplink is on, listener port clashes...) — all problems are reported together.

Any problem raises `edge.errors.ConfigError` naming file, key path and reason.  The models are
frozen; secrets are `pydantic.SecretStr` (`.get_secret_value()`), so printing a config never
shows them.  The field types shared with the cloud's model (`Port`, `ByteSize`, `HttpUrl`,
`PathField`, `TlsSection`, `HttpSection`, `LoggingSection`) are defined here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import Field
from pydantic_core import PydanticCustomError

from edge.config import SecretField, StrictModel, load_config
from edge.errors import ConfigError
from edge.payload.decode import Limits, is_valid_device_id

__all__ = [
    "AclSection", "AlertsSection", "BufferSection", "ByteSize", "CoapSection", "DeviceEntry",
    "DevicesSection", "GatewayConfig", "GatewaySection", "HttpSection", "HttpUrl",
    "LoggingSection", "MqttSection", "MqttTlsSection", "PathField", "Port", "SerialPortSection",
    "SerialSection", "TlsSection", "UplinkSection", "ValidationSection", "WebSocketSection",
    "WebhookSection", "Problems", "check_model", "load_gateway_config", "port_clashes",
    "resolve_paths",
]

M = TypeVar("M", bound=pydantic.BaseModel)
Problems = list[tuple[str, str]]

# --------------------------------------------------------------------------- shared types


def _port(v: int) -> int:
    if not 0 <= v <= 65535:
        raise PydanticCustomError("port", "{value} is not a port number (1-65535, or 0 for "
                                  "any free port)", {"value": v})
    return v


#: a TCP/UDP port; 0 lets the OS pick one (tests)
Port = Annotated[int, pydantic.AfterValidator(_port)]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def _size(v: Any) -> Any:
    if isinstance(v, str):
        m = _SIZE.fullmatch(v)
        if not m:
            raise PydanticCustomError("byte_size", "{value} is not a size: give bytes, or a "
                                      "number with KiB, MiB, GiB (1024s) or KB, MB, GB (1000s)",
                                      {"value": repr(v)})
        base = 1024 if m.group(3) or m.group(2).lower() == "" else 1000
        return int(float(m.group(1)) * base ** _POWERS[m.group(2).lower()])
    return v


def _positive(v: int) -> int:
    if v <= 0:
        raise PydanticCustomError("positive", "must be a positive size, got {value}",
                                  {"value": v})
    return v


#: bytes: an integer, or a string such as "256MiB", "64 KiB", "1.5GB"
ByteSize = Annotated[int, pydantic.BeforeValidator(_size), pydantic.AfterValidator(_positive)]

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|"
                  r"[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?(?P<path>/[^\s]*)?")


def _http_url(v: str) -> str:
    m = _URL.fullmatch(v)
    if not m or m["scheme"].lower() not in ("http", "https"):
        raise PydanticCustomError("url", "{value} is not an http:// or https:// URL with a "
                                  "host", {"value": repr(v)})
    if m["port"] and not 0 < int(m["port"]) <= 65535:
        raise PydanticCustomError("url", "{value} has an invalid port", {"value": repr(v)})
    return v


#: an http:// or https:// URL with a host (kept as written)
HttpUrl = Annotated[str, pydantic.AfterValidator(_http_url)]


def PathField(default: Any = None, **kwargs: Any) -> Any:  # noqa: N802 - reads like Field
    """A filesystem path; a relative one is resolved against the config file's directory."""
    return Field(default, json_schema_extra={"path": True}, **kwargs)


def _device_id_or_none(v: str | None) -> str | None:
    if v is not None and not is_valid_device_id(v):
        raise PydanticCustomError("device_id", "{value} is not a valid id: 1-128 printable "
                                  "characters without whitespace, '/', '+' or '#'",
                                  {"value": repr(v)})
    return v


DeviceId = Annotated[str, pydantic.AfterValidator(_device_id_or_none)]


def _to_str(v: Any) -> Any:
    # YAML reads `line: 1` as an int; tags are strings everywhere downstream
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


Tag = Annotated[str, pydantic.BeforeValidator(_to_str)]


class TlsSection(StrictModel):
    """A server certificate, and optionally client certificates checked against `cafile`."""

    enabled: bool = False
    certfile: Path | None = PathField(None)
    keyfile: Path | None = PathField(None)
    #: the CA bundle that signs client certificates
    cafile: Path | None = PathField(None)
    require_client_cert: bool = False

    @property
    def client_certs(self) -> Literal["none", "optional", "required"]:
        """required with require_client_cert; optional when only a cafile is given."""
        if self.require_client_cert:
            return "required"
        return "optional" if self.cafile is not None else "none"

    def _checks(self) -> Problems:
        if not self.enabled:
            return []
        out = [(k, "required when tls.enabled is true") for k in ("certfile", "keyfile")
               if getattr(self, k) is None]
        if self.require_client_cert and self.cafile is None:
            out.append(("cafile", "required when require_client_cert is true: the CA that "
                                  "signs client certificates"))
        return out


class HttpSection(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9100


class LoggingSection(StrictModel):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    #: one JSON object per line (true) or plain text lines (false)
    json_lines: bool = Field(default=True, alias="json")

    @pydantic.field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


# --------------------------------------------------------------------------- sections


class GatewaySection(StrictModel):
    #: this gateway's identity towards the cloud (the key of the cloud's `ingest.gateways`)
    id: DeviceId = "gw-1"
    #: state: the buffer, retained messages, alert state
    data_dir: Path = PathField(Path("/var/lib/fieldlink/gateway"))


_PLACEHOLDER = "{username}"


def _topic_filter_problem(pattern: str) -> str | None:
    levels = pattern.split("/")
    if not pattern or "\0" in pattern:
        return "empty or holds NUL"
    for i, level in enumerate(levels):
        if "{" in level and level not in (_PLACEHOLDER,):
            return f"placeholder must be a whole topic level ({_PLACEHOLDER} or {{device}})"
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be the whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _topic_filter(v: str) -> str:
    pattern = v.replace("{device}", _PLACEHOLDER)
    why = _topic_filter_problem(pattern)
    if why:
        raise PydanticCustomError("topic_filter", "{pattern} is not a valid MQTT topic filter: "
                                  "{why}", {"pattern": repr(v), "why": why})
    return pattern


#: an MQTT topic filter; `{device}` is normalised to its synonym `{username}`
TopicFilter = Annotated[str, pydantic.AfterValidator(_topic_filter)]


class AclSection(StrictModel):
    """Topic patterns; `{username}` (or its synonym `{device}`) is the client's username,
    which for a device account is its device id."""

    device_publish: tuple[TopicFilter, ...] = ("factory/+/+/{username}",
                                               "devices/{username}/#", "factory/{username}/#")
    device_subscribe: tuple[TopicFilter, ...] = ("devices/{username}/#",)
    operator_only: tuple[TopicFilter, ...] = ("alerts/#",)


class MqttTlsSection(TlsSection):
    host: str = "0.0.0.0"
    port: Port = 8883
    #: a verified client certificate's CN is the username (no password asked)
    identity_as_username: bool = False


class WebSocketSection(StrictModel):
    enabled: bool = False
    host: str = "0.0.0.0"
    port: Port = 8083
    path: str = "/mqtt"

    @pydantic.field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise PydanticCustomError("url_path", "{value} must start with '/' and hold no "
                                      "whitespace", {"value": repr(v)})
        return v


class MqttSection(StrictModel):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Port = 1883
    #: a PUBLISH payload larger than this is dead-lettered as oversize (decoder limit)
    max_payload_bytes: ByteSize = 65_536
    #: a packet larger than this drops the connection (reason oversize_frame)
    max_packet_bytes: ByteSize = 262_144
    allow_anonymous: bool = False
    credentials_file: Path = PathField(Path("mqtt-credentials.json"))
    acl: AclSection = AclSection()
    tls: MqttTlsSection = MqttTlsSection()
    websocket: WebSocketSection = WebSocketSection()
    retain_last_reading: bool = True
    #: longest keepalive a client may ask for (0: no cap)
    keepalive_max_s: int = Field(default=3600, ge=0, le=65535)
    max_connections: int = Field(default=20_000, ge=1)

    def _checks(self) -> Problems:
        if self.max_packet_bytes < self.max_payload_bytes:
            return [("max_packet_bytes", f"{self.max_packet_bytes} is smaller than "
                                         f"max_payload_bytes ({self.max_payload_bytes})")]
        return []


class CoapSection(StrictModel):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Port = 5683
    max_payload_bytes: ByteSize = 65_536
    #: the longest a request waits for its commit before it is answered 5.03
    ingest_timeout_s: float = Field(default=20.0, gt=0)
    #: seconds before an empty ACK would be sent; must exceed ingest_timeout_s
    empty_ack_delay_s: float = Field(default=30.0, gt=0)
    msgpack_content_formats: tuple[Annotated[int, Field(ge=0, le=65535)], ...] = (65001,)

    def _checks(self) -> Problems:
        if self.empty_ack_delay_s <= self.ingest_timeout_s:
            return [("empty_ack_delay_s", f"{self.empty_ack_delay_s} s must be larger than "
                                          f"ingest_timeout_s ({self.ingest_timeout_s} s), or a "
                                          "slow commit is acknowledged before it happened")]
        return []


class SerialPortSection(StrictModel):
    #: the device path, e.g. /dev/ttyUSB0 or a /dev/serial/by-id/ link
    path: str = Field(min_length=1)
    baudrate: int = Field(default=115_200, gt=0)
    format: Literal["json", "csv"] = "json"
    #: the device every line of this port belongs to (None: lines name their device)
    device_id: DeviceId | None = None
    max_line_bytes: ByteSize = 65_536
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=30.0, gt=0)

    def _checks(self) -> Problems:
        if self.backoff_base_s > self.backoff_cap_s:
            return [("backoff_base_s", "must not exceed backoff_cap_s")]
        return []


class SerialSection(StrictModel):
    ports: tuple[SerialPortSection, ...] = ()

    def _checks(self) -> Problems:
        seen: set[str] = set()
        out = []
        for i, port in enumerate(self.ports):
            if port.path in seen:
                out.append((f"ports[{i}].path", f"{port.path} is listed twice"))
            seen.add(port.path)
        return out


class DeviceEntry(StrictModel):
    """Registry defaults for one device; a message's own fields take precedence."""

    facility: Tag | None = None
    line: Tag | None = None
    zone: Tag | None = None
    measurement: str | None = None
    unit: str | None = None


class DevicesSection(StrictModel):
    #: a device not in the registry: accept its readings, or reject (dead-letter) them
    unknown_devices: Literal["accept", "reject"] = "accept"
    registry: dict[str, DeviceEntry] = {}

    @pydantic.field_validator("registry")
    @classmethod
    def _ids(cls, v: dict[str, DeviceEntry]) -> dict[str, DeviceEntry]:
        for device_id in v:
            _device_id_or_none(device_id)
        return v


class ValidationSection(StrictModel):
    #: a sensor time further than this from the receive time is replaced (and flagged)
    clock_skew_tolerance_s: float = Field(default=300.0, ge=0)
    max_readings_per_payload: int = Field(default=1000, ge=1)
    max_string_length: int = Field(default=128, ge=1, le=4096)

    def limits(self, max_payload_bytes: int) -> Limits:
        """The decoder limits for one transport (each has its own payload cap)."""
        return Limits(max_payload_bytes=max_payload_bytes,
                      max_readings=self.max_readings_per_payload,
                      max_string_length=self.max_string_length,
                      clock_skew_tolerance_ms=round(self.clock_skew_tolerance_s * 1000))


class BufferSection(StrictModel):
    #: the SQLite file (None: <gateway.data_dir>/buffer.sqlite3, filled in by the loader)
    path: Path | None = PathField(None)
    max_bytes: ByteSize = 256 * 1024 * 1024
    #: once full, eviction frees space down to this fraction of max_bytes
    low_water_mark: float = Field(default=0.9, gt=0, lt=1)
    commit_interval_ms: float = Field(default=5.0, ge=0, le=10_000)
    commit_max_readings: int = Field(default=1000, ge=1)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    eviction: Literal["oldest_first", "newest_first"] = "oldest_first"
    deadletter_max_rows: int = Field(default=10_000, ge=1)
    #: keys of already-sent readings kept this long to recognise late redeliveries
    dedup_horizon_s: float = Field(default=3600.0, ge=0)

    @pydantic.field_validator("synchronous", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    def _checks(self) -> Problems:
        if self.max_bytes < 256 * 1024:
            return [("max_bytes", f"{self.max_bytes} is below the minimum of 262144 (256 KiB)")]
        return []


class UplinkSection(StrictModel):
    enabled: bool = True
    url: HttpUrl = "http://127.0.0.1:8700"
    #: HMAC key shared with the cloud's ingest.gateways[<gateway.id>]
    gateway_secret: pydantic.SecretStr | None = SecretField(None)
    batch_max_readings: int = Field(default=1000, ge=1, le=100_000)
    batch_max_age_ms: int = Field(default=1000, ge=0)
    compression: Literal["zstd", "gzip"] = "zstd"
    timeout_s: float = Field(default=10.0, gt=0)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    bandwidth_bytes_per_s: ByteSize | None = None
    live_share: float = Field(default=0.3, ge=0, le=1)

    def _checks(self) -> Problems:
        out = []
        secret = self.gateway_secret
        if self.enabled and secret is None:
            out.append(("gateway_secret", "required when the uplink is enabled: set it here or "
                                          "in FIELDLINK_UPLINK__GATEWAY_SECRET"))
        elif secret is not None and len(secret.get_secret_value()) < 16:
            out.append(("gateway_secret", "too short: use at least 16 characters"))
        if self.backoff_base_s > self.backoff_cap_s:
            out.append(("backoff_base_s", "must not exceed backoff_cap_s"))
        return out


class WebhookSection(StrictModel):
    url: HttpUrl
    kind: Literal["pagerduty", "generic"] = "generic"
    #: PagerDuty Events v2 routing key (default: alerts.pagerduty_routing_key)
    routing_key: pydantic.SecretStr | None = SecretField(None)
    timeout_s: float = Field(default=10.0, gt=0)


class AlertsSection(StrictModel):
    rules_file: Path = PathField(Path("rules.yaml"))
    mqtt_topic_prefix: str = "alerts/"
    #: routing key for pagerduty webhooks that name none (env-overridable, unlike list items)
    pagerduty_routing_key: pydantic.SecretStr | None = SecretField(None)
    webhooks: tuple[WebhookSection, ...] = ()

    @pydantic.field_validator("mqtt_topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.endswith("/") or v.startswith("$") or any(c in v for c in "+# \t\0"):
            raise PydanticCustomError("topic_prefix", "{value} must end with '/', hold no "
                                      "wildcard or whitespace and not start with '$'",
                                      {"value": repr(v)})
        return v

    def routing_key(self, hook: WebhookSection) -> str | None:
        key = hook.routing_key or self.pagerduty_routing_key
        return key.get_secret_value() if key is not None else None

    def _checks(self) -> Problems:
        return [(f"webhooks[{i}].routing_key", "required for kind pagerduty (or set "
                 "alerts.pagerduty_routing_key / FIELDLINK_ALERTS__PAGERDUTY_ROUTING_KEY)")
                for i, hook in enumerate(self.webhooks)
                if hook.kind == "pagerduty" and self.routing_key(hook) is None]


class GatewayConfig(StrictModel):
    """`gateway.yaml`.  Build with `load_gateway_config`; see the module docstring."""

    gateway: GatewaySection = GatewaySection()
    mqtt: MqttSection = MqttSection()
    coap: CoapSection = CoapSection()
    serial: SerialSection = SerialSection()
    devices: DevicesSection = DevicesSection()
    validation: ValidationSection = ValidationSection()
    buffer: BufferSection = BufferSection()
    uplink: UplinkSection = UplinkSection()
    alerts: AlertsSection = AlertsSection()
    http: HttpSection = HttpSection()
    logging: LoggingSection = LoggingSection()

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path or self.gateway.data_dir / "buffer.sqlite3"

    def problems(self) -> Problems:
        """Cross-key problems as (key path, reason); empty when the config is usable."""
        out = check_model(self)
        listeners = []
        if self.mqtt.enabled:
            listeners.append(("mqtt.port", self.mqtt.host, self.mqtt.port))
            if self.mqtt.tls.enabled:
                listeners.append(("mqtt.tls.port", self.mqtt.tls.host, self.mqtt.tls.port))
            if self.mqtt.websocket.enabled:
                listeners.append(("mqtt.websocket.port", self.mqtt.websocket.host,
                                  self.mqtt.websocket.port))
        if self.http.enabled:
            listeners.append(("http.port", self.http.host, self.http.port))
        return out + port_clashes(listeners)


# --------------------------------------------------------------------------- loading

_ANY_HOST = {"0.0.0.0", "::", ""}


def port_clashes(listeners: list[tuple[str, str, int]]) -> Problems:
    """TCP listeners that would bind the same port on overlapping addresses."""
    out = []
    for i, (key, host, port) in enumerate(listeners):
        for other_key, other_host, other_port in listeners[:i]:
            if port and port == other_port and (
                    host == other_host or host in _ANY_HOST or other_host in _ANY_HOST):
                out.append((key, f"port {port} is already used by {other_key}"))
                break
    return out


def check_model(model: pydantic.BaseModel, prefix: str = "") -> Problems:
    """Run every section's `_checks()` in `model`, with key paths prefixed."""
    out: Problems = []
    for name, info in type(model).model_fields.items():
        key = prefix + (info.alias or name)
        value = getattr(model, name)
        if isinstance(value, pydantic.BaseModel):
            out += check_model(value, key + ".")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, pydantic.BaseModel):
                    out += check_model(item, f"{key}[{i}].")
    checks = getattr(model, "_checks", None)
    if checks is not None:
        out += [(prefix + key, why) for key, why in checks()]
    return out


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, str) and "://" in value:  # an fsspec URL, not a local path
        return value
    path = Path(value).expanduser()
    # normpath, not resolve(): "config/../var" reads better, and symlinks stay as named
    resolved = path if path.is_absolute() else Path(os.path.normpath(base / path))
    return resolved if isinstance(value, Path) else str(resolved)


def resolve_paths(model: M, base: Path) -> M:
    """A copy of `model` whose `PathField`s are absolute (relative ones joined to `base`)."""
    updates: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("path") and value is not None:
            updates[name] = _resolve(value, base)
        elif isinstance(value, pydantic.BaseModel):
            updates[name] = resolve_paths(value, base)
        elif isinstance(value, tuple) and value and isinstance(value[0], pydantic.BaseModel):
            updates[name] = tuple(resolve_paths(item, base) for item in value)
    # model_construct keeps model_fields_set: check-config tells set keys from defaults
    return type(model).model_construct(model.model_fields_set,
                                       **{**dict(model), **updates})


def load_gateway_config(path: str | os.PathLike[str], *,
                        environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, validate and complete `gateway.yaml`.  Raises ConfigError with every problem."""
    cfg = load_config(path, GatewayConfig, environ=environ)
    # the directory as named (not symlink-resolved), like other daemons' include paths
    cfg = resolve_paths(cfg, Path(os.path.abspath(path)).parent)
    if cfg.buffer.path is None:
        cfg = cfg.model_copy(update={"buffer": cfg.buffer.model_copy(
            update={"path": cfg.buffer_path})})
    problems = cfg.problems()
    if problems:
        raise ConfigError(str(path), problems)
    return cfg
