"""Provisioning parameters: validation and the refusal messages an operator sees."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from gateway.errors import ProvisionError
from gateway.provision.params import (
    SensorCredential,
    build_params,
    check_ssh_public_keys,
    default_hostname,
)


def ssh_key(kind: str = "ssh-ed25519", comment: str = "ops@plant") -> str:
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", 32) + bytes(32)
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


KEY = ssh_key()


def params(**over: Any) -> Any:
    base: dict[str, Any] = dict(gateway_id="gw-berlin-01", uplink_url="https://ingest.example.com",
                                ssh_key_text=KEY + "\n")
    base.update(over)
    return build_params(**base)


def problems(**over: Any) -> list[str]:
    with pytest.raises(ProvisionError) as err:
        params(**over)
    return err.value.problems


def test_valid_parameters_and_defaults() -> None:
    p = params(wifi_ssid="plant-net", wifi_password="correct horse", wifi_country="de",
               timezone="Europe/Berlin")
    assert p.hostname == "gw-berlin-01"
    assert p.wifi_country == "DE"
    assert p.ssh_keys == (KEY,)
    assert p.secret_generated and len(p.secret) >= 40
    assert params().secret != params().secret  # each gateway gets its own


def test_given_secret_is_kept() -> None:
    p = params(secret="s" * 20)
    assert p.secret == "s" * 20 and not p.secret_generated


def test_missing_parameters_are_named_together() -> None:
    msgs = problems(gateway_id=None, uplink_url="  ", ssh_key_text=None)
    assert msgs[0].startswith("missing parameters: --gateway-id, --uplink-url, --ssh-key")


def test_no_ssh_allows_leaving_the_key_out() -> None:
    assert params(ssh_key_text=None, allow_no_ssh=True).ssh_keys == ()


@pytest.mark.parametrize("gateway_id", ["-gw", "gw/1", "gw 1", "g" * 65, "gw#1", "..."])
def test_invalid_gateway_id(gateway_id: str) -> None:
    assert any(f"invalid gateway id {gateway_id!r}" in m
               for m in problems(gateway_id=gateway_id, hostname="gw"))


@pytest.mark.parametrize("hostname", ["-gw", "gw-", "gw_1", "gw.local", "h" * 64, "1234"])
def test_invalid_hostname(hostname: str) -> None:
    assert any(f"invalid hostname {hostname!r}" in m for m in problems(hostname=hostname))


def test_hostname_derived_from_the_gateway_id() -> None:
    assert default_hostname("GW_Berlin.01") == "gw-berlin-01"
    assert params(gateway_id="Plant_7.gw").hostname == "plant-7-gw"


@pytest.mark.parametrize("country", ["DEU", "D", "1A", "de-DE"])
def test_wifi_country_must_be_two_letters(country: str) -> None:
    msgs = problems(wifi_ssid="net", wifi_password="12345678", wifi_country=country)
    assert msgs == [f"Wi-Fi country {country!r} is not a 2-letter ISO 3166 code "
                    "(e.g. DE, GB, US)"]


def test_wifi_needs_password_and_country() -> None:
    msgs = problems(wifi_ssid="net")
    assert any("--wifi-password" in m and "'net'" in m for m in msgs)
    assert any("--wifi-country is missing" in m for m in msgs)


@pytest.mark.parametrize("password", ["short", "x" * 64, "ä" * 10])
def test_wifi_passphrase_rules(password: str) -> None:
    assert any("8-63 printable ASCII" in m for m in
               problems(wifi_ssid="net", wifi_password=password, wifi_country="DE"))


def test_hex_psk_is_accepted() -> None:
    p = params(wifi_ssid="net", wifi_password="ab" * 32, wifi_country="GB")
    assert p.wifi_password == "ab" * 32


def test_bad_url_timezone_secret_admin() -> None:
    msgs = problems(uplink_url="ftp://x", timezone="Mars/Olympus", secret="short",
                    admin_user="root")
    text = "\n".join(msgs)
    assert "invalid uplink URL 'ftp://x'" in text
    assert "timezone 'Mars/Olympus'" in text
    assert "gateway secret must be 16-512" in text
    assert "invalid admin user 'root'" in text


def test_private_key_file_is_refused() -> None:
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    assert problems(ssh_key_text=text, ssh_key_source="--ssh-key id_ed25519") == [
        "--ssh-key id_ed25519 is a private key: give the public key (the .pub file)"]


def test_public_key_checks() -> None:
    keys, errs = check_ssh_public_keys(f"# ops\n{KEY}\n\n{ssh_key('ssh-rsa', 'b')}\n", "f")
    assert len(keys) == 2 and errs == []
    _, errs = check_ssh_public_keys("hello world\n", "f")
    assert errs and "line 1 is not an OpenSSH public key" in errs[0]
    _, errs = check_ssh_public_keys("ssh-ed25519 !!notbase64!!\n", "f")
    assert errs == ["f line 1: the key data is not valid base64 of an SSH key"]
    lying = KEY.replace("ssh-ed25519", "ssh-rsa", 1)
    _, errs = check_ssh_public_keys(lying, "f")
    assert errs == ["f line 1: the key data is a 'ssh-ed25519' key, the line says 'ssh-rsa'"]
    _, errs = check_ssh_public_keys("# only a comment\n", "f")
    assert errs == ["f holds no public key"]


def test_duplicate_sensor_usernames() -> None:
    creds = (SensorCredential("s1", "pw-aaaaaaaa"), SensorCredential("s1", "pw-bbbbbbbb"))
    assert problems(sensors=creds) == ["sensor 's1' is listed twice"]
