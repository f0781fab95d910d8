"""edge.config.gateway / edge.config.cloud: the example files, defaults, errors, env secrets."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from edge.config import load_config
from edge.config.cloud import CloudConfig, load_cloud_config
from edge.config.gateway import GatewayConfig, load_gateway_config
from edge.errors import ConfigError
from edge.payload.decode import Limits

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
SECRET = "0123456789abcdef-secret"
GW_ENV = {"FIELDLINK_UPLINK__GATEWAY_SECRET": SECRET}


def _load_sim(path: pathlib.Path) -> Any:
    from edge.config.sim import SimConfig

    return load_config(path, SimConfig, environ={})


def _load_rules(path: pathlib.Path) -> Any:
    from edge.rules import load_rules

    return load_rules(path)


LOADERS = {
    "gateway.yaml": lambda p: load_gateway_config(p, environ={}),
    "cloud.yaml": lambda p: load_cloud_config(p, environ={}),
    "sim.yaml": _load_sim,
    "rules.yaml": _load_rules,
}


def write(tmp_path: pathlib.Path, text: str, name: str = "c.yaml") -> pathlib.Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(exc.value.problems)


# --------------------------------------------------------------------------- example files


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_file_loads(path: pathlib.Path) -> None:
    loader = LOADERS.get(path.name)
    if loader is None:  # a file this test has no model for must at least be valid YAML
        yaml.safe_load(path.read_text())
    else:
        assert loader(path) is not None


def test_demo_files_authenticate_against_each_other() -> None:
    gw = load_gateway_config(CONFIG / "gateway.yaml", environ={})
    cloud = load_cloud_config(CONFIG / "cloud.yaml", environ={})
    assert gw.gateway.id == "gw-demo-1"
    assert gw.uplink.url == f"http://{cloud.ingest.host}:{cloud.ingest.port}" == \
        "http://127.0.0.1:8700"
    assert gw.uplink.gateway_secret is not None
    assert cloud.ingest.secret_for("gw-demo-1") == \
        gw.uplink.gateway_secret.get_secret_value().encode()
    for host in (gw.mqtt.host, gw.coap.host, gw.http.host, cloud.web.host, cloud.http.host):
        assert host == "127.0.0.1"


def test_demo_paths_are_relative_to_the_file_not_the_cwd(tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gw = load_gateway_config(CONFIG / "gateway.yaml", environ={})
    assert gw.gateway.data_dir == ROOT / "var" / "gateway"
    assert gw.buffer.path == ROOT / "var" / "gateway" / "buffer.sqlite3"
    assert gw.alerts.rules_file == CONFIG / "rules.yaml"
    cloud = load_cloud_config(CONFIG / "cloud.yaml", environ={})
    assert cloud.archive.path == str(ROOT / "var" / "cloud" / "archive")


def test_every_gateway_key_of_the_model_appears_in_the_example() -> None:
    text = (CONFIG / "gateway.yaml").read_text()
    _assert_keys_documented(GatewayConfig, text)


def test_every_cloud_key_of_the_model_appears_in_the_example() -> None:
    text = (CONFIG / "cloud.yaml").read_text()
    _assert_keys_documented(CloudConfig, text)


def _assert_keys_documented(model: Any, text: str) -> None:
    import pydantic

    missing = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if f"{key}:" not in text:
            missing.append(key)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            for sub, sub_info in annotation.model_fields.items():
                if f"{sub_info.alias or sub}:" not in text:
                    missing.append(f"{key}.{sub}")
    assert not missing


# --------------------------------------------------------------------------- defaults


def test_empty_gateway_file_is_a_working_gateway(tmp_path: pathlib.Path) -> None:
    cfg = load_gateway_config(write(tmp_path, ""), environ=GW_ENV)
    assert cfg.mqtt.port == 1883 and not cfg.mqtt.allow_anonymous
    assert cfg.buffer.commit_interval_ms == 5 and cfg.buffer.commit_max_readings == 1000
    assert cfg.uplink.live_share == 0.3 and cfg.uplink.url == "http://127.0.0.1:8700"
    assert cfg.alerts.rules_file == tmp_path / "rules.yaml"
    assert cfg.mqtt.credentials_file == tmp_path / "mqtt-credentials.json"
    assert cfg.buffer.path == pathlib.Path("/var/lib/fieldlink/gateway/buffer.sqlite3")
    assert cfg.mqtt.acl.operator_only == ("alerts/#",)


def test_empty_gateway_file_without_secret_names_the_env_variable(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(write(tmp_path, ""), environ={})
    assert "FIELDLINK_UPLINK__GATEWAY_SECRET" in problems_of(info)["uplink.gateway_secret"]
    cfg = load_gateway_config(write(tmp_path, "uplink: {enabled: false}\n"), environ={})
    assert cfg.uplink.gateway_secret is None


def test_empty_cloud_file(tmp_path: pathlib.Path) -> None:
    cfg = load_cloud_config(write(tmp_path, "{}"), environ={})
    assert cfg.ingest.port == 8700 and cfg.ingest.gateways == {}
    assert cfg.kafka.embedded and cfg.kafka.bootstrap() == [] and cfg.kafka.acks == "all"
    assert cfg.influxdb.retention == "7d" and cfg.influxdb.batch_size == 5000
    assert cfg.archive.path == "/var/lib/fieldlink/cloud/archive"


def test_values_are_converted(tmp_path: pathlib.Path) -> None:
    cfg = load_gateway_config(write(tmp_path, """
mqtt: {max_payload_bytes: 1MiB, max_packet_bytes: "2 MB",
       acl: {device_publish: ["devices/{device}/data"]}}
buffer: {max_bytes: 1.5GiB, synchronous: normal, path: buf/b.db}
devices: {registry: {s1: {line: 7}, s2: {line: L2}}}
validation: {clock_skew_tolerance_s: 2.5, max_readings_per_payload: 10}
logging: {level: DEBUG, json: false}
serial: {ports: [{path: /dev/ttyUSB0, format: csv, device_id: s9}]}
"""), environ=GW_ENV)
    assert cfg.mqtt.max_payload_bytes == 1 << 20 and cfg.mqtt.max_packet_bytes == 2_000_000
    assert cfg.mqtt.acl.device_publish == ("devices/{username}/data",)
    assert cfg.buffer.max_bytes == 3 << 29 and cfg.buffer.synchronous == "NORMAL"
    assert cfg.buffer.path == tmp_path / "buf" / "b.db"
    assert cfg.devices.registry["s1"].line == "7" and cfg.devices.registry["s2"].line == "L2"
    assert cfg.logging.level == "debug" and cfg.logging.json_lines is False
    assert cfg.serial.ports[0].device_id == "s9"
    assert cfg.validation.limits(4096) == Limits(max_payload_bytes=4096, max_readings=10,
                                                 clock_skew_tolerance_ms=2500)


def test_archive_url_is_not_made_a_path(tmp_path: pathlib.Path) -> None:
    cfg = load_cloud_config(write(tmp_path, "archive: {path: s3://bucket/fieldlink}\n"),
                            environ={})
    assert cfg.archive.path == "s3://bucket/fieldlink"
    cfg = load_cloud_config(write(tmp_path, "archive: {path: arch}\n"), environ={})
    assert cfg.archive.path == str(tmp_path / "arch")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text,key,reason", [
    ("mqtt: {port: 70000}", "mqtt.port", "not a port number"),
    ("mqtt: {prot: 1}", "mqtt.prot", "unknown key"),
    ("mqttt: {}", "mqttt", "unknown key"),
    ("mqtt: {port: many}", "mqtt.port", "valid integer"),
    ("mqtt: {max_payload_bytes: 12 parsecs}", "mqtt.max_payload_bytes", "not a size"),
    ("mqtt: {max_payload_bytes: 0}", "mqtt.max_payload_bytes", "positive"),
    ("mqtt: {acl: {operator_only: ['alerts/#/x']}}", "mqtt.acl.operator_only[0]",
     "'#' must be the whole last level"),
    ("mqtt: {acl: {device_publish: ['a/x{username}']}}", "mqtt.acl.device_publish[0]",
     "whole topic level"),
    ("mqtt: {max_payload_bytes: 1MiB}", "mqtt.max_packet_bytes", "smaller than"),
    ("mqtt: {tls: {enabled: true}}", "mqtt.tls.certfile", "required when tls.enabled"),
    ("mqtt: {tls: {enabled: true, certfile: c, keyfile: k, require_client_cert: true}}",
     "mqtt.tls.cafile", "require_client_cert"),
    ("mqtt: {websocket: {enabled: true, port: 9100}}", "http.port",
     "already used by mqtt.websocket.port"),
    ("http: {port: 1883, host: 0.0.0.0}", "http.port", "already used by mqtt.port"),
    ("gateway: {id: 'gw 1'}", "gateway.id", "not a valid id"),
    ("coap: {empty_ack_delay_s: 1}", "coap.empty_ack_delay_s", "larger than ingest_timeout"),
    ("serial: {ports: [{path: /dev/a}, {path: /dev/a}]}", "serial.ports[1].path",
     "listed twice"),
    ("serial: {ports: [{path: /dev/a, format: xml}]}", "serial.ports[0].format", "'json'"),
    ("serial: {ports: [{path: /dev/a, backoff_base_s: 9, backoff_cap_s: 1}]}",
     "serial.ports[0].backoff_base_s", "backoff_cap_s"),
    ("devices: {registry: {'a/b': {}}}", "devices.registry", "not a valid id"),
    ("devices: {unknown_devices: maybe}", "devices.unknown_devices", "'accept'"),
    ("buffer: {max_bytes: 1000}", "buffer.max_bytes", "262144"),
    ("buffer: {synchronous: OFF}", "buffer.synchronous", "'FULL'"),
    ("buffer: {low_water_mark: 1.5}", "buffer.low_water_mark", "less than 1"),
    ("uplink: {url: 'ftp://host'}", "uplink.url", "http:// or https://"),
    ("uplink: {live_share: -0.1}", "uplink.live_share", "greater than or equal to 0"),
    ("uplink: {gateway_secret: short}", "uplink.gateway_secret", "at least 16"),
    ("alerts: {mqtt_topic_prefix: 'alerts/#/'}", "alerts.mqtt_topic_prefix", "wildcard"),
    ("alerts: {webhooks: [{url: 'https://x.example/e', kind: pagerduty}]}",
     "alerts.webhooks[0].routing_key", "FIELDLINK_ALERTS__PAGERDUTY_ROUTING_KEY"),
    ("alerts: {webhooks: [{kind: generic}]}", "alerts.webhooks[0].url", "required"),
    ("logging: {level: loud}", "logging.level", "'debug'"),
    ("logging: {json_lines: true}", "logging.json_lines", "unknown key"),
    ("[1, 2]", "", "mapping"),
])
def test_gateway_errors_name_key_and_reason(tmp_path: pathlib.Path, text: str, key: str,
                                            reason: str) -> None:
    f = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(f, environ={} if "gateway_secret" in text else GW_ENV)
    problems = problems_of(info)
    assert key in problems, problems
    assert reason in problems[key]
    assert info.value.file == str(f) and str(f) in str(info.value)


@pytest.mark.parametrize("text,key,reason", [
    ("ingest: {port: -1}", "ingest.port", "not a port number"),
    ("ingest: {gateways: {gw-1: short}}", "ingest.gateways", "too short"),
    ("ingest: {gateways: {'a b': 0123456789abcdefXX}}", "ingest.gateways", "gateway id"),
    ("ingest: {tls: {enabled: true, certfile: c}}", "ingest.tls.keyfile", "required"),
    ("kafka: {acks: 1}", "kafka.acks", "fixed to 'all'"),
    ("kafka: {bootstrap_servers: 'a:1,b'}", "kafka.bootstrap_servers", "host:port"),
    ("kafka: {compression: brotli}", "kafka.compression", "'zstd'"),
    ("kafka: {key: random}", "kafka.key", "'facility_line'"),
    ("kafka: {topics: {alerts: {name: fieldlink.readings}}}", "kafka.topics.alerts.name",
     "already the readings topic"),
    ("kafka: {topics: {readings: {name: 'a b'}}}", "kafka.topics.readings.name",
     "Kafka topic name"),
    ("kafka: {topics: {readings: {name: r, partitions: 0}}}",
     "kafka.topics.readings.partitions", "greater than or equal to 1"),
    ("influxdb: {api: v2}", "influxdb.org", "required with api v2"),
    ("influxdb: {api: v3}", "influxdb.api", "'v1'"),
    ("influxdb: {retention: a week}", "influxdb.retention", "InfluxDB duration"),
    ("influxdb: {url: 'localhost:8086'}", "influxdb.url", "http:// or https://"),
    ("archive: {compact_after_days: 5, expire_after_days: 2}", "archive.expire_after_days",
     "later than compact_after_days"),
    ("archive: {roll_bytes: -5}", "archive.roll_bytes", "positive"),
    ("web: {port: 8700}", "web.port", "already used by ingest.port"),
    ("web: {sesion_ttl_s: 5}", "web.sesion_ttl_s", "unknown key"),
])
def test_cloud_errors_name_key_and_reason(tmp_path: pathlib.Path, text: str, key: str,
                                          reason: str) -> None:
    f = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_cloud_config(f, environ={})
    problems = problems_of(info)
    assert key in problems, problems
    assert reason in problems[key]
    assert str(f) in str(info.value)


def test_all_problems_are_reported_together(tmp_path: pathlib.Path) -> None:
    f = write(tmp_path, "mqtt: {port: 0.5, prot: 1}\nbuffer: {eviction: random}\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(f, environ=GW_ENV)
    assert set(problems_of(info)) == {"mqtt.port", "mqtt.prot", "buffer.eviction"}


def test_bad_yaml_names_the_line(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(write(tmp_path, "mqtt:\n  port: [1883\n"), environ=GW_ENV)
    assert "invalid YAML at line" in str(info.value)


# --------------------------------------------------------------------------- secrets


def test_env_overrides_the_uplink_secret(tmp_path: pathlib.Path) -> None:
    f = write(tmp_path, "uplink: {gateway_secret: from-the-file-0123456789}\n")
    cfg = load_gateway_config(f, environ={**GW_ENV, "FIELDLINK_MQTT__PORT": "1"})
    assert cfg.uplink.gateway_secret is not None
    assert cfg.uplink.gateway_secret.get_secret_value() == SECRET
    assert cfg.mqtt.port == 1883  # only secrets come from the environment
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())


def test_env_pagerduty_routing_key(tmp_path: pathlib.Path) -> None:
    f = write(tmp_path, "alerts: {webhooks: [{url: 'https://x.example/e', kind: pagerduty}]}\n")
    cfg = load_gateway_config(f, environ={**GW_ENV,
                                          "FIELDLINK_ALERTS__PAGERDUTY_ROUTING_KEY": "rk-1"})
    assert cfg.alerts.routing_key(cfg.alerts.webhooks[0]) == "rk-1"


@pytest.mark.parametrize("value", [
    "gw-1=0123456789abcdef1, gw-2=0123456789abcdef2",
    '{"gw-1": "0123456789abcdef1", "gw-2": "0123456789abcdef2"}',
])
def test_env_replaces_the_cloud_gateway_map(tmp_path: pathlib.Path, value: str) -> None:
    f = write(tmp_path, "ingest: {gateways: {gw-old: from-the-file-0123456789}}\n")
    cfg = load_cloud_config(f, environ={"FIELDLINK_INGEST__GATEWAYS": value,
                                        "FIELDLINK_INFLUXDB__TOKEN": "user:pass"})
    assert sorted(cfg.ingest.gateways) == ["gw-1", "gw-2"]
    assert cfg.ingest.secret_for("gw-2") == b"0123456789abcdef2"
    assert cfg.ingest.secret_for("gw-old") is None
    assert cfg.influxdb.token is not None and cfg.influxdb.token.get_secret_value() == "user:pass"


def test_bad_env_gateway_map_does_not_echo_the_secret(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_cloud_config(write(tmp_path, ""),
                          environ={"FIELDLINK_INGEST__GATEWAYS": "gw-1:supersecretvalue123"})
    assert "ingest.gateways" in problems_of(info)
    assert "supersecretvalue123" not in str(info.value)
