"""Dashboard accounts: the users file, hashing, the `fieldlink cloud web users` command."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from cloud.errors import ConfigError
from cloud.web.app import users_main
from cloud.web.users import (
    User,
    UserBook,
    hash_password,
    load_users,
    save_users,
    username_problem,
    verify_password,
)


def test_hash_and_verify() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct" not in h
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "correct horse batterz")
    assert not verify_password("not a hash", "x")
    with pytest.raises(ValueError, match="at least"):
        hash_password("short")


@pytest.mark.parametrize("name,ok", [("alice", True), ("ops.team-1@site", True), ("", False),
                                     ("a b", False), ("a/b", False), ("x" * 65, False)])
def test_username_rules(name: str, ok: bool) -> None:
    assert (username_problem(name) is None) is ok


def test_save_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "users.json"
    users = {"alice": User("alice", hash_password("0123456789"), 5)}
    old = os.umask(0)
    try:
        save_users(path, users)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_users(path) == users
    assert load_users(tmp_path / "missing.json") == {}


@pytest.mark.parametrize("content,where", [
    ("{", ""), ('{"format": 2, "users": {}}', "format"), ('{"format": 1}', "users"),
    ('{"format": 1, "users": {"a b": {"hash": "$argon2id$x"}}}', "users.a b"),
    ('{"format": 1, "users": {"bob": {"hash": "plain"}}}', "users.bob.hash")])
def test_invalid_files_name_the_problem(tmp_path: Path, content: str, where: str) -> None:
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_users(path)
    assert str(path) in str(info.value)
    assert any(key == where for key, _ in info.value.problems)


def test_userbook_rereads_a_changed_file_and_keeps_old_users_on_error(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    book = UserBook(path)
    assert len(book) == 0 and not book.verify("alice", "0123456789")
    save_users(path, {"alice": User("alice", hash_password("0123456789"))})
    book.refresh()
    assert book.exists("alice") and book.verify("alice", "0123456789")
    assert not book.verify("alice", "wrong-password") and not book.verify("bob", "x")
    path.write_text("{ broken")
    with pytest.raises(ConfigError):
        book.refresh()
    assert book.exists("alice")
    path.unlink()
    book.refresh()
    assert not book.exists("alice")


def test_cli_add_list_replace_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.json"
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-password\n"))
    assert users_main(["add", "alice", "--file", str(path), "--password-stdin"]) == 0
    assert UserBook(path).verify("alice", "s3cret-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("other-password\n"))
    assert users_main(["add", "alice", "--file", str(path), "--password-stdin"]) == 1
    assert "exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("other-password\n"))
    assert users_main(["add", "alice", "--file", str(path), "--password-stdin",
                       "--replace"]) == 0
    assert UserBook(path).verify("alice", "other-password")
    capsys.readouterr()
    assert users_main(["add", "bob", "--file", str(path), "--generate"]) == 0
    generated = capsys.readouterr().out.strip()
    assert len(generated) >= 20 and UserBook(path).verify("bob", generated)
    assert users_main(["list", "--file", str(path), "--json"]) == 0
    assert [u["name"] for u in json.loads(capsys.readouterr().out)] == ["alice", "bob"]
    assert users_main(["remove", "alice", "--file", str(path)]) == 0
    assert users_main(["remove", "alice", "--file", str(path)]) == 1
    assert users_main(["add", "a b", "--file", str(path), "--generate"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert users_main(["add", "carol", "--file", str(path), "--password-stdin"]) == 2
    assert sorted(load_users(path)) == ["bob"]


def test_cli_takes_the_file_from_the_config(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("web:\n  users_file: accounts/web.json\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("0123456789ab\n"))
    assert users_main(["add", "alice", "-c", str(cfg), "--password-stdin"]) == 0
    assert UserBook(tmp_path / "accounts" / "web.json").exists("alice")
