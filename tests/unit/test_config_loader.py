from __future__ import annotations

import pytest

from edge.config import SecretField, StrictModel, load_config
from edge.errors import ConfigError


class Inner(StrictModel):
    port: int = 1883
    password: str | None = SecretField(None)


class Root(StrictModel):
    name: str = "gw"
    inner: Inner = Inner()


def test_loads_and_validates(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("name: a\ninner:\n  port: 1999\n")
    cfg = load_config(f, Root, environ={})
    assert cfg.name == "a" and cfg.inner.port == 1999


def test_error_names_file_key_and_reason(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  port: notanumber\n  prot: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, Root, environ={})
    text = str(info.value)
    assert str(f) in text
    assert "inner.port" in text and "integer" in text
    assert "inner.prot" in text and "unknown key" in text


def test_bad_yaml_and_missing_file(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(f, Root, environ={})
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml", Root, environ={})


def test_env_overrides_secrets_only(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("name: a\n")
    cfg = load_config(f, Root, environ={"FIELDLINK_INNER__PASSWORD": "s3cret",
                                        "FIELDLINK_NAME": "ignored"})
    assert cfg.inner.password == "s3cret"
    assert cfg.name == "a"
