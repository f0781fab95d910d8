"""Sensor credentials preloaded onto a gateway: read, generate, and write both forms.

Input (`--sensors FILE`):

* CSV with a header naming `username` and `password` columns (`device_id` is a synonym of
  `username`); other columns are ignored;
* YAML: a map ``username: password``, or a list of ``{username: ..., password: ...}``.

`--generate-sensors N` makes N accounts named by a pattern (`--sensor-pattern`, a Python
format string with `{n}` — the 1-based number — and `{gateway_id}`, default
``{gateway_id}-s{n:03d}``), each with a random password from `gateway.auth.passwords`.

Output, per gateway:

* the gateway's MQTT credentials file (`credentials_file_bytes`): the JSON format of
  `gateway.auth.credentials` — argon2id hashes only, role `device`;
* the plain list for whoever configures the sensors (`write_plain_csv`): a CSV with the
  passwords, written with mode 0600 next to the outputs, never onto the card.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.credentials import Account, save_accounts, username_problem
from gateway.auth.passwords import generate_password, hash_password
from gateway.errors import ProvisionError
from gateway.provision.files import atomic_write
from gateway.provision.params import SensorCredential

__all__ = ["DEFAULT_PATTERN", "credentials_file_bytes", "generate_sensors", "load_sensor_file",
           "write_plain_csv"]

DEFAULT_PATTERN = "{gateway_id}-s{n:03d}"
MAX_GENERATED = 10_000


def _check(creds: list[SensorCredential], source: str) -> tuple[SensorCredential, ...]:
    problems = []
    for cred in creds:
        why = username_problem(cred.username)
        if why:
            problems.append(f"{source}: sensor username {cred.username!r} {why}")
        if not cred.password:
            problems.append(f"{source}: sensor {cred.username!r} has an empty password")
    if problems:
        raise ProvisionError(problems)
    return tuple(creds)


def _from_yaml(data: Any, source: str) -> list[SensorCredential]:
    if isinstance(data, dict):
        return [SensorCredential(str(k), str(v) if v is not None else "")
                for k, v in data.items()]
    if isinstance(data, list):
        out = []
        for i, item in enumerate(data):
            if not (isinstance(item, dict) and "username" in item and "password" in item):
                raise ProvisionError(f"{source}: item {i + 1} needs username and password")
            out.append(SensorCredential(str(item["username"]), str(item["password"])))
        return out
    raise ProvisionError(f"{source}: expected a map of username: password or a list of "
                         "{username, password}")


def _from_csv(text: str, source: str) -> list[SensorCredential]:
    reader = csv.DictReader(io.StringIO(text))
    fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
    user_col = fields.get("username") or fields.get("device_id")
    pw_col = fields.get("password")
    if user_col is None or pw_col is None:
        raise ProvisionError(f"{source}: the CSV header must name the columns username (or "
                             "device_id) and password")
    out = []
    for row in reader:
        username = (row.get(user_col) or "").strip()
        if not username and not any((v or "").strip() for v in row.values()):
            continue  # blank line
        out.append(SensorCredential(username, (row.get(pw_col) or "").strip()))
    return out


def load_sensor_file(path: str | Path) -> tuple[SensorCredential, ...]:
    """Sensor credentials from a CSV or YAML file (by extension; .csv is CSV)."""
    source = f"--sensors {path}"
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{source}: cannot read: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    if str(path).lower().endswith(".csv"):
        creds = _from_csv(text, source)
    else:
        try:
            creds = _from_yaml(yaml.safe_load(text), source)
        except yaml.YAMLError as exc:
            raise ProvisionError(f"{source}: invalid YAML: {exc}") from None
    return _check(creds, source)


def generate_sensors(count: int, gateway_id: str,
                     pattern: str = DEFAULT_PATTERN) -> tuple[SensorCredential, ...]:
    """`count` accounts named by `pattern`, each with a fresh random password."""
    if not 0 <= count <= MAX_GENERATED:
        raise ProvisionError(f"--generate-sensors must be 0..{MAX_GENERATED}, got {count}")
    try:
        names = [pattern.format(n=n, gateway_id=gateway_id) for n in range(1, count + 1)]
    except (KeyError, IndexError, ValueError) as exc:
        raise ProvisionError(f"--sensor-pattern {pattern!r} is not a valid pattern "
                             f"({exc!r}); use {{n}} and {{gateway_id}}, e.g. "
                             f"{DEFAULT_PATTERN}") from None
    if len(set(names)) != len(names):
        raise ProvisionError(f"--sensor-pattern {pattern!r} gives the same name twice: "
                             "include {n}")
    return _check([SensorCredential(name, generate_password()) for name in names],
                  "--generate-sensors")


def credentials_file_bytes(creds: tuple[SensorCredential, ...], workdir: Path) -> bytes:
    """The gateway's credentials file (argon2id hashes) for `creds`.

    Written through `gateway.auth.credentials.save_accounts` into `workdir`, so the format
    is exactly the one the gateway reads.  Hashing is deliberately slow (~0.05-0.1 s each).
    """
    now = time.time_ns() // 1_000_000
    accounts = {c.username: Account(c.username, "device", hash_password(c.password), now)
                for c in creds}
    path = workdir / "mqtt-credentials.json"
    save_accounts(path, accounts)
    data = path.read_bytes()
    path.unlink()
    return data


def write_plain_csv(path: Path, gateway_id: str, creds: tuple[SensorCredential, ...]) -> None:
    """The passwords in clear for configuring the sensors: CSV, mode 0600, atomic."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["gateway_id", "username", "password"])
    for cred in creds:
        writer.writerow([gateway_id, cred.username, cred.password])
    atomic_write(path, buf.getvalue().encode(), 0o600)
