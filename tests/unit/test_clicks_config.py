"""secondary.yaml: the demo file loads, secrets come from the environment, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.cdc.connector import ConnectorSettings
from cloud.cdc.sink import SinkSettings
from cloud.clicks.collector import CollectorSettings
from cloud.clicks.job import JobSettings
from edge.config import parse_config
from edge.config.secondary import SecondaryConfig, load_secondary_config
from edge.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "config" / "secondary.yaml"


def test_the_demo_file_loads_and_derives_paths() -> None:
    cfg = load_secondary_config(DEMO, environ={})
    base = DEMO.parent.parent / "var" / "cloud"
    assert cfg.data_dir == base
    assert cfg.archive_path == str(base / "archive")
    assert cfg.cdc_state_file == base / "cdc" / "fieldlink_cdc.sqlite3"
    assert cfg.cdc_duckdb_path == base / "cdc" / "warehouse.duckdb"
    assert cfg.connectors_state_file == base / "connectors" / "state.sqlite3"
    collector = CollectorSettings.from_config(cfg)
    assert collector.source_for("wk_demo_site_0123456789") == "demo_site"
    assert collector.source_for("wk_demo_site_012345678") is None
    assert collector.topic == "web_events" and collector.ids_path == base / "clicks" / \
        "event-ids.sqlite3"
    job = JobSettings.from_config(cfg)
    assert (job.size_ms, job.grace_ms) == (60_000, 900_000)
    assert cfg.cloud_config().kafka.bootstrap_servers == ("127.0.0.1:19092",)


def test_secrets_from_the_environment() -> None:
    cfg = parse_config({"cdc": {"enabled": True, "tables": ["orders", "sales.items"]}},
                       SecondaryConfig, environ={
                           "FIELDLINK_CLICKS__WRITE_KEYS": "shop=wk_shop_12345678,app=wk_app_1234",
                           "FIELDLINK_CDC__PASSWORD": "s3cret",
                           "FIELDLINK_CONNECTORS__GITHUB__TOKEN": "ghp_x"})
    assert {k: v.get_secret_value() for k, v in cfg.clicks.write_keys.items()} == {
        "shop": "wk_shop_12345678", "app": "wk_app_1234"}
    assert "password=s3cret" in cfg.cdc.dsn()
    assert cfg.connectors.github.token is not None
    assert cfg.cdc.tables == ("public.orders", "sales.items")
    assert ConnectorSettings.from_config(cfg).tables == ("public.orders", "sales.items")
    assert SinkSettings.from_config(cfg).topics == ("cdc.fieldlink.public.orders",
                                                    "cdc.fieldlink.sales.items")
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize(("data", "where"), [
    ({"clicks": {"write_keys": {"shop": "short"}}}, "clicks.write_keys"),
    ({"clicks": {"write_keys": {"bad name": "wk_0123456789"}}}, "clicks.write_keys"),
    ({"clicks": {"grace_s": -1}}, "clicks.grace_s"),
    ({"clicks": {"topic": {"name": "no spaces"}}}, "clicks.topic.name"),
    ({"cdc": {"tables": ["a.b.c"]}}, "cdc.tables[0]"),
    ({"cdc": {"slot": "Bad-Slot"}}, "cdc.slot"),
    ({"connectors": {"github": {"repos": ["nope"]}}}, "connectors.github.repos"),
    ({"clicks": {"unknown": 1}}, "clicks.unknown"),
])
def test_bad_values_name_the_key(data: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SecondaryConfig, environ={})
    assert where in str(info.value)


@pytest.mark.parametrize(("data", "where"), [
    ({"cdc": {"enabled": True}}, "cdc.tables"),
    ({"cdc": {"enabled": True, "tables": ["t"], "sink": "postgres"}}, "cdc.postgres_dsn"),
    ({"connectors": {"stripe": {"enabled": True}}}, "connectors.stripe.signing_secret"),
    ({"clicks": {"port": 9000}, "connectors": {"port": 9000}}, "connectors.port"),
])
def test_cross_key_problems(tmp_path: Path, data: dict[str, object], where: str) -> None:
    import yaml

    path = tmp_path / "secondary.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_secondary_config(path, environ={})
    assert where in str(info.value)
