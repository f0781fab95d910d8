"""The configuration files of a torture run: gateway.yaml, cloud.yaml, sim.yaml, rules.yaml.

Every file is written as an operator would write it and read by the real loaders
(`fieldlink ... --config`).  Secrets go through the files here too, so the secret-in-logs
check covers what the loaders and components do with them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import HOST, free_port

#: alert rules used where a scenario needs alerts: a 1 s window per device; a spike of the
#: simulator (+/- 40 around 22 °C) fires `hot`, a normal window clears it
RULES_HOT = """version: 1
windows:
  - {id: w1s, kind: tumbling, size: 1s, lateness: 500ms, idle_timeout: 500ms,
     key_by: [device_id]}
rules:
  - id: hot
    window: w1s
    match: {device: "*", measurement: temperature}
    condition: "max > 50"
    clear: "max < 40"
    severity: critical
    message: "{device_id} max {max:.1f} > 50"
"""


@dataclass
class Topics:
    readings: str
    aggregates: str
    alerts: str
    deadletter: str

    @classmethod
    def unique(cls, prefix: str = "torture") -> Topics:
        s = f"{prefix}.{uuid.uuid4().hex[:8]}"
        return cls(f"{s}.readings", f"{s}.aggregates", f"{s}.alerts", f"{s}.deadletter")


@dataclass
class GatewayFiles:
    path: Path
    gateway_id: str
    data_dir: Path
    mqtt_port: int
    http_port: int
    tls_port: int | None = None
    coap_port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def buffer_path(self) -> Path:
        return self.data_dir / "buffer.sqlite3"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/metrics"


def write_gateway(path: Path, *, gateway_id: str, secret: str, ingest_url: str,
                  anonymous: bool = True, credentials: Path | None = None,
                  max_bytes: str = "64MiB", rules: Path | None = None,
                  webhook: str | None = None, unknown_devices: str = "accept",
                  registry: dict[str, dict[str, str]] | None = None,
                  tls: dict[str, str] | None = None, batch_max_readings: int = 500,
                  batch_max_age_ms: int = 300, live_share: float = 0.3,
                  synchronous: str = "FULL", breaker_reset_s: float = 2.0,
                  max_payload_bytes: str = "64KiB", coap: bool = False,
                  log_level: str = "info") -> GatewayFiles:
    data = path.parent / "gw"
    mqtt_port, http_port = free_port(), free_port()
    tls_port = free_port() if tls else None
    coap_port = free_port() if coap else None
    if rules is None:
        rules = path.parent / "rules-none.yaml"
        rules.write_text("version: 1\n")
    creds = credentials or (path.parent / "no-credentials.json")
    hooks = (f"  webhooks:\n    - {{url: \"{webhook}\", kind: generic, timeout_s: 2}}\n"
             if webhook else "")
    reg = ""
    if registry:
        reg = "  registry:\n" + "".join(
            f"    {dev}: {{{', '.join(f'{k}: {v}' for k, v in entry.items())}}}\n"
            for dev, entry in registry.items())
    tls_block = ""
    if tls:
        tls_block = (f"  tls:\n    enabled: true\n    host: {HOST}\n    port: {tls_port}\n"
                     f"    certfile: {tls['certfile']}\n    keyfile: {tls['keyfile']}\n"
                     f"    cafile: {tls['cafile']}\n"
                     f"    require_client_cert: {tls.get('require_client_cert', 'true')}\n"
                     f"    identity_as_username: {tls.get('identity_as_username', 'true')}\n")
    path.write_text(f"""gateway:
  id: {gateway_id}
  data_dir: {data}
mqtt:
  host: {HOST}
  port: {mqtt_port}
  allow_anonymous: {str(anonymous).lower()}
  credentials_file: {creds}
  max_payload_bytes: {max_payload_bytes}
{tls_block}coap:
  enabled: {str(coap).lower()}
  host: {HOST}
  port: {coap_port or 5683}
devices:
  unknown_devices: {unknown_devices}
{reg}buffer:
  max_bytes: {max_bytes}
  commit_interval_ms: 5
  synchronous: {synchronous}
uplink:
  enabled: true
  url: {ingest_url}
  gateway_secret: {secret}
  batch_max_readings: {batch_max_readings}
  batch_max_age_ms: {batch_max_age_ms}
  timeout_s: 5
  backoff_base_s: 0.2
  backoff_cap_s: 2
  breaker_failures: 5
  breaker_reset_s: {breaker_reset_s}
  live_share: {live_share}
alerts:
  rules_file: {rules}
{hooks}http:
  host: {HOST}
  port: {http_port}
logging:
  level: {log_level}
""")
    return GatewayFiles(path, gateway_id, data, mqtt_port, http_port, tls_port, coap_port)


@dataclass
class CloudFiles:
    path: Path
    ingest_port: int
    topics: Topics
    database: str
    archive: Path
    kafka: str
    influx_url: str

    @property
    def ingest_url(self) -> str:
        return f"http://{HOST}:{self.ingest_port}"


def write_cloud(path: Path, *, kafka: str, influx_url: str, gateways: dict[str, str],
                topics: Topics | None = None, database: str | None = None,
                readings_partitions: int = 3, roll_seconds: float = 1.0,
                replay_window_s: float = 300.0, web_port: int | None = None,
                users_file: Path | None = None, log_level: str = "info") -> CloudFiles:
    topics = topics or Topics.unique()
    database = database or f"torture_{uuid.uuid4().hex[:8]}"
    ingest_port = free_port()
    archive = path.parent / "archive"
    gws = "".join(f"    {gid}: {secret}\n" for gid, secret in gateways.items())
    web = (f"web:\n  enabled: true\n  host: {HOST}\n  port: {web_port}\n"
           f"  users_file: {users_file}\n" if web_port else "web:\n  enabled: false\n")
    path.write_text(f"""cloud:
  data_dir: {path.parent / "cloud-data"}
ingest:
  host: {HOST}
  port: {ingest_port}
  replay_window_s: {replay_window_s}
  gateways:
{gws}kafka:
  bootstrap_servers: [{kafka}]
  topics:
    readings: {{name: {topics.readings}, partitions: {readings_partitions}}}
    aggregates: {{name: {topics.aggregates}, partitions: 1}}
    alerts: {{name: {topics.alerts}, partitions: 1}}
    deadletter: {{name: {topics.deadletter}, partitions: 1}}
influxdb:
  api: v1
  url: {influx_url}
  database: {database}
  retention: 7d
  batch_size: 2000
  flush_interval_ms: 300
  timeout_s: 5
archive:
  path: {archive}
  roll_seconds: {roll_seconds}
{web}http:
  enabled: false
logging:
  level: {log_level}
""")
    return CloudFiles(path, ingest_port, topics, database, archive, kafka, influx_url)


def write_sim(path: Path, *, prefix: str, devices: int, rate_hz: float, target_port: int,
              username: str | None = None, credentials_file: Path | None = None,
              faults: dict[str, float] | None = None, clean_session: bool = True,
              connect_rate: float = 0, drain_timeout_s: float = 5.0,
              offline_queue: int = 10_000, tls: dict[str, str] | None = None,
              kinds: tuple[str, ...] = ("temperature", "pressure")) -> Path:
    """A fleet whose device ids start with `prefix` (unique per trial, so the keys of
    different trials never collide), split evenly over `kinds`."""
    groups = []
    per = max(1, devices // len(kinds))
    for kind in kinds:
        groups.append(f"""  - name: {kind}
    count: {per}
    id_template: "{prefix}_{kind[:4]}_{{n:03d}}_l{{line}}"
    kind: {kind}
    facility: torture
    lines: [1, 2, 3]
    zone: z1
    rate_hz: {rate_hz}
    qos: 1
    clean_session: {str(clean_session).lower()}
""")
    fault_lines = "".join(f"  {k}: {{rate: {v}}}\n" for k, v in (faults or {}).items()) \
        or "  spike: {rate: 0.0}\n"
    target_auth = ""
    if username:
        target_auth += f"  username: \"{username}\"\n"
    if credentials_file:
        target_auth += f"  credentials_file: {credentials_file}\n"
    tls_block = ""
    if tls:
        tls_block = ("  tls:\n    enabled: true\n" + "".join(f"    {k}: {v}\n"
                                                         for k, v in tls.items()))
    path.write_text(f"""seed: 1
connect_rate: {connect_rate}
connect_wait_s: 30
drain_timeout_s: {drain_timeout_s}
offline_queue: {offline_queue}
target:
  host: {HOST}
  port: {target_port}
  protocol: mqtt
  mqtt_client: fast
  connect_timeout_s: 3
  max_inflight: 20
{target_auth}{tls_block}fleet:
{"".join(groups)}faults:
{fault_lines}""")
    return path


def write_rules(path: Path, text: str = RULES_HOT) -> Path:
    path.write_text(text)
    return path
