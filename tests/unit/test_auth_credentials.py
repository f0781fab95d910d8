"""The credentials file and `fieldlink gateway devices add|remove|list`."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from edge.cli import main as fieldlink
from gateway.auth.credentials import Account, load_accounts, save_accounts, username_problem
from gateway.auth.passwords import hash_password, verify_password
from gateway.errors import ConfigError


def test_hash_verifies_and_is_argon2id() -> None:
    h = hash_password("s3cret")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "s3cret")
    assert verify_password(h, b"s3cret")
    assert not verify_password(h, "wrong")
    assert not verify_password("not-a-hash", "s3cret")


def test_save_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "creds.json"
    os.umask(0o022)
    accounts = {"d1": Account("d1", "device", "$argon2id$x", 5)}
    save_accounts(path, accounts)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_accounts(path) == accounts
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_accounts(tmp_path / "none.json") == {}


@pytest.mark.parametrize("text,where", [
    ("{not json", ""),
    ('{"format": 2, "accounts": {}}', "format"),
    ('{"format": 1, "accounts": []}', "accounts"),
    ('{"format": 1, "accounts": {"d/1": {"role": "device", "hash": "$argon2id$"}}}',
     "accounts.d/1"),
    ('{"format": 1, "accounts": {"d1": {"role": "admin", "hash": "$argon2id$"}}}',
     "accounts.d1.role"),
    ('{"format": 1, "accounts": {"d1": {"role": "device", "hash": "plain"}}}',
     "accounts.d1.hash"),
])
def test_bad_file_names_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_accounts(path)
    assert err.value.file == str(path)
    assert err.value.problems[0][0] == where


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "#", "$sys", "a b", "x" * 129, "tab\t"])
def test_bad_usernames(name: str) -> None:
    assert username_problem(name)


def test_good_username() -> None:
    assert username_problem("sensor_001_line1") is None


def test_cli_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "creds.json")
    assert fieldlink(["gateway", "devices", "--file", path, "add", "sensor_1"]) == 0
    out = capsys.readouterr()
    password = out.out.strip()
    assert len(password) >= 20  # generated, printed once
    assert "shown once" in out.err
    account = load_accounts(path)["sensor_1"]
    assert account.role == "device"
    assert verify_password(account.password_hash, password)
    assert password not in Path(path).read_text()

    monkeypatch.setattr("sys.stdin", io.StringIO("opspass\n"))
    assert fieldlink(["gateway", "devices", "--file", path, "add", "ops", "--role", "operator",
                      "--password-stdin"]) == 0
    assert capsys.readouterr().out == ""  # a given password is never echoed
    assert verify_password(load_accounts(path)["ops"].password_hash, "opspass")

    # adding an existing account needs --replace
    assert fieldlink(["gateway", "devices", "--file", path, "add", "sensor_1"]) == 1
    capsys.readouterr()

    assert fieldlink(["gateway", "devices", "--file", path, "list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["username"], a["role"]) for a in listed] == [("sensor_1", "device"),
                                                            ("ops", "operator")]
    assert all("hash" not in a for a in listed)

    assert fieldlink(["gateway", "devices", "remove", "sensor_1", "--file", path]) == 0
    assert fieldlink(["gateway", "devices", "--file", path, "remove", "sensor_1"]) == 1
    assert set(load_accounts(path)) == {"ops"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_cli_rejects_bad_username_and_bad_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "creds.json"
    assert fieldlink(["gateway", "devices", "--file", str(path), "add", "bad/name"]) == 2
    assert "invalid username" in capsys.readouterr().err
    path.write_text("garbage")
    assert fieldlink(["gateway", "devices", "--file", str(path), "list"]) == 2
    assert str(path) in capsys.readouterr().err


def test_cli_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "env.json"
    monkeypatch.setenv("FIELDLINK_CREDENTIALS_FILE", str(path))
    assert fieldlink(["gateway", "devices", "add", "d9"]) == 0
    assert "d9" in load_accounts(path)
