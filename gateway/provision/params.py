"""One gateway's provisioning parameters, and their validation.

`GatewayParams` is what every generator (cloud-init, firstrun.sh, gateway.yaml) reads; it
is built by `build_params(...)`, which checks every value and raises one `ProvisionError`
listing *all* problems (missing parameters by option name, invalid gateway id or hostname,
a Wi-Fi country that is not a two-letter code, an SSH key file that is not a public key...)
so an operator fixes a CSV row in one go.

Rules, stricter than the gateway's config model where a value also becomes a file name, a
hostname or a shell word:

* gateway id: 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit (a
  subset of the device-id rule the cloud checks; it names the output image);
* hostname: one RFC 1123 label, 1-63 letters, digits and '-', not starting or ending with
  '-'; by default derived from the gateway id (lower-cased, '.' and '_' become '-');
* gateway secret: at least 16 of ``A-Z a-z 0-9 . _ ~ + / = -`` (safe in a systemd
  EnvironmentFile); generated with `secrets.token_urlsafe(32)` when not given;
* Wi-Fi: SSID of 1-32 bytes, passphrase of 8-63 printable ASCII characters or 64 hex
  digits, country an ISO 3166 alpha-2 code (upper-cased);
* SSH public keys: OpenSSH one-line format whose base64 blob names the same key type.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import struct
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import pydantic

from edge.config.gateway import HttpUrl
from gateway.errors import ProvisionError

__all__ = ["GatewayParams", "SensorCredential", "build_params", "check_ssh_public_keys",
           "default_hostname", "generate_secret", "read_key_file",
           "read_text_file"]

_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SECRET = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com")
_URL = pydantic.TypeAdapter(HttpUrl)


@dataclass(frozen=True, slots=True)
class SensorCredential:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class GatewayParams:
    gateway_id: str
    hostname: str
    uplink_url: str
    secret: str = field(repr=False)
    #: True when `secret` was generated here (so it is shown/registered, never asked again)
    secret_generated: bool
    ssh_keys: tuple[str, ...]
    admin_user: str = "fieldadmin"
    timezone: str | None = None
    wifi_ssid: str | None = None
    wifi_password: str | None = field(default=None, repr=False)
    wifi_country: str | None = None
    sensors: tuple[SensorCredential, ...] = ()


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def default_hostname(gateway_id: str) -> str:
    return re.sub(r"[._]+", "-", gateway_id.lower()).strip("-")[:63].rstrip("-")


def check_ssh_public_keys(text: str, source: str) -> tuple[list[str], list[str]]:
    """(keys, problems) for the contents of an SSH public key (or authorized_keys) file."""
    if "PRIVATE KEY" in text:
        return [], [f"{source} is a private key: give the public key (the .pub file)"]
    if "\ufffd" in text or "\0" in text:
        return [], [f"{source} is not an OpenSSH public key: it holds binary data"]
    keys, problems = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source} line {n}"
        if len(parts) < 2 or parts[0] not in _KEY_TYPES:
            problems.append(f"{where} is not an OpenSSH public key (expected "
                            f"'ssh-ed25519 AAAA... comment' or another of {', '.join(_KEY_TYPES)})")
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True)
            (length,) = struct.unpack_from(">I", blob)
            named = blob[4: 4 + length].decode()
        except (binascii.Error, struct.error, UnicodeDecodeError):
            problems.append(f"{where}: the key data is not valid base64 of an SSH key")
            continue
        if named != parts[0]:
            problems.append(f"{where}: the key data is a {named!r} key, the line says "
                            f"{parts[0]!r}")
            continue
        keys.append(" ".join(parts))
    if not keys and not problems:
        problems.append(f"{source} holds no public key")
    return keys, problems


def _timezone_problem(tz: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", tz):
        return f"timezone {tz!r} is not a tz database name such as Europe/Berlin or UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except zoneinfo.ZoneInfoNotFoundError:
        if zoneinfo.available_timezones():  # only a host with a tz database can tell
            return f"timezone {tz!r} is not in the tz database (e.g. Europe/Berlin, UTC)"
    return None


def _wifi_problems(ssid: str | None, password: str | None, country: str | None) -> list[str]:
    out = []
    if country is not None and not _COUNTRY.fullmatch(country):
        out.append(f"Wi-Fi country {country!r} is not a 2-letter ISO 3166 code "
                   "(e.g. DE, GB, US)")
    if ssid is None:
        if password is not None:
            out.append("--wifi-password given without --wifi-ssid")
        return out
    if not ssid.isprintable():
        out.append(f"Wi-Fi SSID {ssid!r} holds control characters")
    if not 1 <= len(ssid.encode()) <= 32:
        out.append(f"Wi-Fi SSID {ssid!r} must be 1-32 bytes")
    if password is None:
        out.append("--wifi-password (or --wifi-password-file) is missing for the Wi-Fi "
                   f"network {ssid!r}")
    elif not (re.fullmatch(r"[0-9a-fA-F]{64}", password)
              or (8 <= len(password) <= 63 and password.isascii() and password.isprintable())):
        out.append("the Wi-Fi passphrase must be 8-63 printable ASCII characters "
                   "(or a 64-hex-digit PSK)")
    if country is None:
        out.append("--wifi-country is missing: Wi-Fi stays blocked on a Raspberry Pi until "
                   "its regulatory country is set (e.g. DE, GB, US)")
    return out


def build_params(*, gateway_id: str | None, uplink_url: str | None, hostname: str | None = None,
                 secret: str | None = None, ssh_key_text: str | None = None,
                 ssh_key_source: str = "--ssh-key", allow_no_ssh: bool = False,
                 admin_user: str = "fieldadmin", timezone: str | None = None,
                 wifi_ssid: str | None = None, wifi_password: str | None = None,
                 wifi_country: str | None = None,
                 sensors: tuple[SensorCredential, ...] = ()) -> GatewayParams:
    """Validate everything and return the parameters, or raise `ProvisionError` with all
    problems.  Empty strings count as missing (a blank CSV cell)."""
    def given(v: str | None) -> str | None:
        return v.strip() if v is not None and v.strip() else None

    gateway_id, uplink_url, hostname = given(gateway_id), given(uplink_url), given(hostname)
    secret, timezone, wifi_ssid = given(secret), given(timezone), given(wifi_ssid)
    wifi_country = given(wifi_country)
    wifi_password = wifi_password if wifi_password else None
    missing = [opt for opt, value in (("--gateway-id", gateway_id), ("--uplink-url", uplink_url))
               if value is None]
    if ssh_key_text is None and not allow_no_ssh:
        missing.append("--ssh-key (or --no-ssh for a gateway without remote login)")
    problems = [f"missing parameter{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
                ] if missing else []
    if gateway_id is not None and not _GATEWAY_ID.fullmatch(gateway_id):
        problems.append(f"invalid gateway id {gateway_id!r}: use 1-64 letters, digits, '.', "
                        "'_', '-', starting with a letter or digit")
    if hostname is None and gateway_id is not None:
        hostname = default_hostname(gateway_id)
    if hostname is not None and (not _HOSTNAME.fullmatch(hostname) or hostname.isdigit()):
        problems.append(f"invalid hostname {hostname!r}: one label of 1-63 letters, digits "
                        "and '-', not starting or ending with '-' (give --hostname)")
    if uplink_url is not None:
        try:
            _URL.validate_python(uplink_url)
        except pydantic.ValidationError:
            problems.append(f"invalid uplink URL {uplink_url!r}: an http:// or https:// URL "
                            "of the cloud ingest service")
    generated = secret is None
    if secret is None:
        secret = generate_secret()
    elif not _SECRET.fullmatch(secret):
        problems.append("the gateway secret must be 16-512 characters of A-Z a-z 0-9 . _ ~ + "
                        "/ = - (leave it out to generate one)")
    keys: list[str] = []
    if ssh_key_text is not None:
        keys, key_problems = check_ssh_public_keys(ssh_key_text, ssh_key_source)
        problems += key_problems
    if not _USER.fullmatch(admin_user) or admin_user in ("root", "fieldlink"):
        problems.append(f"invalid admin user {admin_user!r}: a lower-case login name other "
                        "than root and fieldlink")
    if timezone is not None and (why := _timezone_problem(timezone)):
        problems.append(why)
    problems += _wifi_problems(wifi_ssid, wifi_password, wifi_country)
    seen: set[str] = set()
    for cred in sensors:
        if cred.username in seen:
            problems.append(f"sensor {cred.username!r} is listed twice")
        seen.add(cred.username)
    if problems:
        raise ProvisionError(problems)
    assert gateway_id is not None and uplink_url is not None and hostname is not None
    return GatewayParams(
        gateway_id=gateway_id, hostname=hostname, uplink_url=uplink_url, secret=secret,
        secret_generated=generated, ssh_keys=tuple(keys), admin_user=admin_user,
        timezone=timezone, wifi_ssid=wifi_ssid, wifi_password=wifi_password,
        wifi_country=wifi_country.upper() if wifi_country else None, sensors=sensors)


def read_text_file(path: str | Path, what: str) -> str:
    """A small text file's contents, or `ProvisionError` naming the option it came from."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ProvisionError(f"{what} {path}: cannot read: {why}") from None


def read_key_file(path: str | Path, what: str) -> str:
    """An SSH key file's text; undecodable bytes are kept as U+FFFD so the key check, not
    the reader, says what is wrong with a binary file."""
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ProvisionError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
