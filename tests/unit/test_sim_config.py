"""The fleet model (edge.config.sim) and `fieldlink sim run`'s flags on top of it."""

from __future__ import annotations

import pathlib

import pytest

from edge.config import load_config, parse_config
from edge.config.sim import FAULT_KINDS, FaultsConfig, SimConfig, SimProtocol
from edge.errors import ConfigError
from firmware_sim.device import expand_fleet
from firmware_sim.run import _split, apply_overrides, build_parser, main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_example_config_is_the_documented_default_fleet() -> None:
    cfg = load_config(ROOT / "config" / "sim.yaml", SimConfig, environ={})
    specs = expand_fleet(cfg)
    assert len(specs) == 100
    assert {s.kind.value for s in specs} == {"temperature", "pressure"}
    assert {s.line for s in specs} == {"1", "2", "3"}
    assert {s.facility for s in specs} == {"factory_a"}
    assert {(s.protocol, s.port, s.qos, s.period_ms) for s in specs} == \
           {(SimProtocol.MQTT, 1883, 1, 1000.0)}
    assert cfg.target.host == "127.0.0.1"
    assert all(s.topic == f"factory/line{s.line}/{s.kind.value}/{s.device_id}" for s in specs)
    assert cfg.faults.rates() == {k: 0.0 for k in FAULT_KINDS}


def test_kind_defaults_fill_the_signal() -> None:
    cfg = parse_config({"fleet": [{"kind": "pressure", "signal": {"noise": 0.3}}]}, SimConfig,
                       environ={})
    sig = cfg.fleet[0].signal
    assert sig.set_point == 1013.2 and sig.noise == 0.3 and sig.resolution == 0.1


@pytest.mark.parametrize("data,where,why", [
    ({"fleet": [{"count": 2, "id_template": "same"}]}, "", "appears in groups"),
    ({"fleet": [{"count": 1, "id_template": "a/{n}"}]}, "", "without whitespace"),
    ({"fleet": [{"id_template": "x_{nope}"}]}, "fleet[0].id_template", "unknown placeholder"),
    ({"target": {"topic_template": "f/{devce_id}"}}, "target.topic_template", "unknown"),
    ({"fleet": [{"kind": "gps", "protocol": "serial", "serial_format": "csv"}]}, "",
     "gps over serial"),
    ({"faults": {"spike": {"rate": 1.5}}}, "faults.spike.rate", "less than or equal"),
    ({"faults": {"spkie": {"rate": 0.1}}}, "faults.spkie", "unknown key"),
    ({"fleet": [{"qos": 2}]}, "fleet[0].qos", ""),
    ({"fleet": [{"rate_hz": 0}]}, "fleet[0].rate_hz", "greater than 0"),
])
def test_invalid_fleets_are_refused_with_the_key(data: dict, where: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SimConfig, file="sim.yaml", environ={})
    text = str(info.value)
    assert where in text and why in text


def test_password_comes_from_the_environment() -> None:
    cfg = parse_config({"target": {"username": "dev"}}, SimConfig,
                       environ={"FIELDLINK_TARGET__PASSWORD": "s3cret"})
    assert cfg.target.password == "s3cret"


def test_ports_per_protocol() -> None:
    cfg = parse_config({"target": {"port": 11883},
                        "fleet": [{"count": 1, "id_template": "a{n}"},
                                  {"count": 1, "id_template": "b{n}", "protocol": "coap"},
                                  {"count": 1, "id_template": "c{n}", "protocol": "coap",
                                   "port": 15683}]}, SimConfig, environ={})
    assert [s.port for s in expand_fleet(cfg)] == [11883, 5683, 15683]
    tls = parse_config({"target": {"tls": {"enabled": True}}}, SimConfig, environ={})
    assert tls.target.port_for(SimProtocol.MQTT) == 8883


def test_with_rates() -> None:
    f = FaultsConfig().with_rates({"late": 0.2})
    assert f.late.rate == 0.2 and f.late.delay_s == 30.0
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultsConfig().with_rates({"lat": 0.2})


def test_split_is_proportional_and_exact() -> None:
    assert _split(10_000, [50, 50]) == [5000, 5000]
    assert _split(7, [1, 1, 1]) == [3, 2, 2]
    assert sum(_split(1001, [3, 7, 11])) == 1001
    assert _split(5, [0, 0]) == [3, 2]


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_flags_override_the_file() -> None:
    base = load_config(ROOT / "config" / "sim.yaml", SimConfig, environ={})
    cfg = apply_overrides(base, _args(
        "--devices", "1000", "--rate", "2", "--protocol", "coap", "--duration", "5",
        "--seed", "9", "--target", "10.0.0.1:15683", "--qos", "0", "--fault", "spike=0.01",
        "--fault", "malformed=0.5", "--ledger", "/tmp/l.db", "--username", "u",
        "--connect-rate", "0"))
    specs = expand_fleet(cfg)
    assert len(specs) == 1000
    assert {(s.protocol, s.port, s.qos, s.period_ms) for s in specs} == \
           {(SimProtocol.COAP, 15683, 0, 500.0)}
    assert (cfg.seed, cfg.duration_s, cfg.ledger, cfg.connect_rate) == (9, 5.0, "/tmp/l.db", 0)
    assert cfg.target.host == "10.0.0.1" and cfg.target.username == "u"
    assert cfg.faults.spike.rate == 0.01 and cfg.faults.malformed.rate == 0.5
    assert apply_overrides(base, _args("--duration", "0")).duration_s is None


@pytest.mark.parametrize("argv,why", [
    (["--target", "nohost"], "HOST:PORT"),
    (["--fault", "spike"], "KIND=RATE"),
    (["--fault", "spik=0.1"], "unknown fault kind"),
    (["--fault", "spike=lots"], "not a number"),
    (["--fault", "spike=2"], "less than or equal"),
    (["--devices", "-1"], "greater than or equal"),
])
def test_bad_flags_exit_2_naming_the_problem(argv: list[str], why: str, capsys) -> None:
    assert main(argv + ["--quiet"]) == 2
    assert why in capsys.readouterr().err


def test_bad_config_file_exits_2(tmp_path, capsys) -> None:
    f = tmp_path / "sim.yaml"
    f.write_text("fleet:\n  - count: many\n")
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "fleet[0].count" in err
