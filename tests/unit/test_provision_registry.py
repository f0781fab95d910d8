"""Ledger and cloud registry: duplicates refused, secrets merged atomically with mode 0600;
gateway.yaml generation; sensor credentials files."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from edge.config import parse_config
from edge.config.cloud import IngestSection
from edge.config.gateway import load_gateway_config
from gateway.auth.credentials import load_accounts
from gateway.auth.passwords import verify_password
from gateway.errors import ProvisionError
from gateway.provision.gatewayconf import (
    CREDENTIALS_PATH,
    DATA_DIR,
    render_gateway_yaml,
    set_scalar,
)
from gateway.provision.registry import Registry, fingerprint
from gateway.provision.sensors import (
    credentials_file_bytes,
    generate_sensors,
    load_sensor_file,
    write_plain_csv,
)

REPO = Path(__file__).resolve().parents[2]
SECRET_A = "A" * 43
SECRET_B = "B" * 43


def registry(tmp_path: Path) -> Registry:
    return Registry(ledger_path=tmp_path / "provisioned.jsonl",
                    cloud_path=tmp_path / "cloud-gateways.yaml")


def record(reg: Registry, gid: str, secret: str, *, reprovision: bool = False) -> None:
    with reg.transaction():
        reg.record({"gateway_id": gid, "hostname": gid}, secret, reprovision=reprovision)


def test_record_merges_secrets_and_appends_the_ledger(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    record(reg, "gw-1", SECRET_A)
    record(reg, "gw-2", SECRET_B)
    assert reg.cloud_secrets() == {"gw-1": SECRET_A, "gw-2": SECRET_B}
    assert stat.S_IMODE(os.stat(reg.cloud_path).st_mode) == 0o600
    # the file is JSON and YAML at once, and the cloud's ingest model accepts it
    text = reg.cloud_path.read_text()
    assert json.loads(text) == yaml.safe_load(text)
    ingest = parse_config({"gateways": text}, IngestSection, environ={})
    assert ingest.secret_for("gw-2") == SECRET_B.encode()
    lines = [json.loads(line) for line in reg.ledger_path.read_text().splitlines()]
    assert [e["gateway_id"] for e in lines] == ["gw-1", "gw-2"]
    assert lines[0]["secret"] == fingerprint(SECRET_A)
    assert SECRET_A not in reg.ledger_path.read_text()


def test_duplicate_gateway_is_refused(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    record(reg, "gw-1", SECRET_A)
    with pytest.raises(ProvisionError) as err:
        record(reg, "gw-1", SECRET_B)
    assert "gateway 'gw-1' is already provisioned" in str(err.value)
    assert "--reprovision" in str(err.value)
    assert reg.cloud_secrets() == {"gw-1": SECRET_A}
    assert len(reg.ledger_path.read_text().splitlines()) == 1


def test_duplicate_found_in_either_file(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    reg.cloud_path.write_text("gw-hand: " + SECRET_A + "\n")  # a hand-written block map
    reg.ledger_path.write_text(json.dumps({"gateway_id": "gw-old"}) + "\n")
    msgs = reg.duplicates(["gw-hand", "gw-old", "gw-new"])
    assert len(msgs) == 2
    assert "registry" in msgs[0] and "ledger" in msgs[1]


def test_reprovision_rotates_the_secret(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    record(reg, "gw-1", SECRET_A)
    record(reg, "gw-1", SECRET_B, reprovision=True)
    assert reg.cloud_secrets() == {"gw-1": SECRET_B}
    assert reg.ledger()["gw-1"]["secret"] == fingerprint(SECRET_B)


def test_corrupt_files_are_reported(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    reg.ledger_path.write_text("not json\n")
    with pytest.raises(ProvisionError, match="line 1 is not a ledger entry"):
        reg.ledger()
    reg.cloud_path.write_text("- a list\n")
    with pytest.raises(ProvisionError, match="expected a map"):
        reg.cloud_secrets()


# --------------------------------------------------------------------------- gateway.yaml


def test_gateway_yaml_from_the_example(tmp_path: Path) -> None:
    text = render_gateway_yaml((REPO / "config" / "gateway.yaml").read_text(),
                               gateway_id="gw-7", uplink_url="https://ingest.example.com:8700",
                               secret="s" * 32)
    assert "s" * 32 not in text
    assert "# this gateway's identity" in text  # the documentation stays
    (tmp_path / "gateway.yaml").write_text(text)
    (tmp_path / "rules.yaml").write_text((REPO / "config" / "rules.yaml").read_text())
    cfg = load_gateway_config(tmp_path / "gateway.yaml",
                              environ={"FIELDLINK_UPLINK__GATEWAY_SECRET": "s" * 32})
    assert cfg.gateway.id == "gw-7"
    assert str(cfg.gateway.data_dir) == DATA_DIR
    assert str(cfg.mqtt.credentials_file) == CREDENTIALS_PATH
    assert cfg.mqtt.host == cfg.coap.host == "0.0.0.0"
    assert cfg.uplink.url == "https://ingest.example.com:8700"
    assert cfg.devices.registry == {}
    assert cfg.uplink.gateway_secret is not None


def test_gateway_yaml_needs_the_secret_from_the_environment(tmp_path: Path) -> None:
    text = render_gateway_yaml((REPO / "config" / "gateway.yaml").read_text(),
                               gateway_id="gw-7", uplink_url="http://10.0.0.5:8700",
                               secret="s" * 32)
    data = yaml.safe_load(text)
    assert data["uplink"]["gateway_secret"] is None


def test_set_scalar_keeps_comments_and_drops_nested_values() -> None:
    text = ("a:\n  b: 1          # the b\n  c:\n    d: 2\n    e: {x: 1,\n        y: 2}\n"
            "    # about c\n  f: 3\n")
    out = set_scalar(set_scalar(text, "a.b", "two"), "a.c", {})
    assert out == ('a:\n  b: "two"      # the b\n  c: {}\n    # about c\n  f: 3\n')
    assert yaml.safe_load(out) == {"a": {"b": "two", "c": {}, "f": 3}}
    with pytest.raises(ProvisionError, match="has no key a.zz"):
        set_scalar(text, "a.zz", 1)
    with pytest.raises(ProvisionError, match="has no key d"):
        set_scalar(text, "d", 1)  # only a top-level d counts


# --------------------------------------------------------------------------- sensors


def test_sensor_files_csv_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("device_id,password,notes\ns1,pw-one-1234,x\n\ns2,pw-2,\n")
    assert [(c.username, c.password) for c in load_sensor_file(tmp_path / "s.csv")] == [
        ("s1", "pw-one-1234"), ("s2", "pw-2")]
    (tmp_path / "s.yaml").write_text("s1: pw1\ns2: pw2\n")
    assert [c.username for c in load_sensor_file(tmp_path / "s.yaml")] == ["s1", "s2"]
    (tmp_path / "l.yaml").write_text("- {username: s3, password: pw3}\n")
    assert [c.username for c in load_sensor_file(tmp_path / "l.yaml")] == ["s3"]


def test_sensor_file_refusals(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("name,secret\na,b\n")
    with pytest.raises(ProvisionError, match="must name the columns username"):
        load_sensor_file(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("username,password\nfactory/x,pw\ns2,\n")
    with pytest.raises(ProvisionError) as err:
        load_sensor_file(tmp_path / "bad2.csv")
    assert len(err.value.problems) == 2
    with pytest.raises(ProvisionError, match="cannot read"):
        load_sensor_file(tmp_path / "missing.csv")


def test_generated_sensors_and_their_files(tmp_path: Path) -> None:
    creds = generate_sensors(3, "gw-7")
    assert [c.username for c in creds] == ["gw-7-s001", "gw-7-s002", "gw-7-s003"]
    assert len({c.password for c in creds}) == 3
    with pytest.raises(ProvisionError, match="gives the same name twice"):
        generate_sensors(2, "gw-7", "sensor")
    with pytest.raises(ProvisionError, match="not a valid pattern"):
        generate_sensors(2, "gw-7", "{nope}")
    path = tmp_path / "creds.json"
    path.write_bytes(credentials_file_bytes(creds, tmp_path))
    accounts = load_accounts(path)
    assert set(accounts) == {c.username for c in creds}
    assert all(a.role == "device" for a in accounts.values())
    assert verify_password(accounts["gw-7-s002"].password_hash, creds[1].password)
    write_plain_csv(tmp_path / "gw-7.sensors.csv", "gw-7", creds)
    assert stat.S_IMODE(os.stat(tmp_path / "gw-7.sensors.csv").st_mode) == 0o600
    rows = list(csv.DictReader((tmp_path / "gw-7.sensors.csv").open()))
    assert rows[0] == {"gateway_id": "gw-7", "username": "gw-7-s001",
                       "password": creds[0].password}
