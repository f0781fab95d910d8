"""Loading rules.yaml: the shipped file, and a clear error for every kind of mistake."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from edge.errors import ConfigError
from edge.rules import Template, load_rules, parse_condition, parse_rules
from edge.windows import AGGREGATES

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_shipped_rules_file_loads() -> None:
    rs = load_rules(ROOT / "config" / "rules.yaml")
    assert set(rs.windows) == {"w10s", "w1m-sliding"}
    assert rs.windows["w10s"].size_ms == 10_000 and rs.windows["w10s"].kind == "tumbling"
    kinds = {r.id: r.kind for r in rs.rules}
    assert kinds == {"overheat": "threshold", "hot-p95": "threshold",
                     "temp-rate": "rate_of_change", "sensor-stale": "stale",
                     "low-battery": "low_battery", "buffer-high": "buffer_fill",
                     "uplink-down": "uplink_down"}
    overheat = rs.rule("overheat")
    assert overheat is not None
    assert (str(overheat.fire), str(overheat.clear)) == ("max > 90", "max < 85")
    assert overheat.severity == "critical" and overheat.window == "w10s"
    p95 = rs.rule("hot-p95")
    assert p95 is not None and p95.fire is not None and p95.fire.windows == 3
    stale = rs.rule("sensor-stale")
    assert stale is not None and stale.after_ms == 30_000
    uplink = rs.rule("uplink-down")
    assert uplink is not None and uplink.after_ms == 300_000


def rules(*items: dict[str, Any], windows: list[dict[str, Any]] | None = None) -> dict:
    data: dict[str, Any] = {"rules": list(items)}
    if windows is not None:
        data["windows"] = windows
    return data


HOT = {"id": "hot", "match": {"measurement": "temperature"}, "condition": "max > 90"}


def problems(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_rules(data, file="rules.yaml")
    assert info.value.file == "rules.yaml"
    return info.value.problems


def test_minimal_rule_gets_defaults() -> None:
    rs = parse_rules(rules(HOT))
    (rule,) = rs.rules
    assert rs.windows["default"].size_ms == 10_000  # one 10 s tumbling window by default
    assert rule.kind == "threshold" and rule.window == "default"
    assert str(rule.clear) == "max <= 90"  # no clear: resolves when the condition is false
    assert rule.severity == "warning" and rule.cooldown_ms == 0


def test_unknown_aggregate_names_path_and_alternatives() -> None:
    data = rules(HOT, {**HOT, "id": "b"}, {**HOT, "id": "c", "condition": "p96 > 85"})
    assert problems(data) == [("rules[2].condition", "unknown aggregate 'p96' (expected one of "
                               + ", ".join(AGGREGATES) + ")")]
    assert "rules[2].condition: unknown aggregate 'p96'" in str(ConfigError("f", problems(data)))


@pytest.mark.parametrize("rule, path, fragment", [
    ({**HOT, "id": "hot"}, "rules[1].id", "duplicate id 'hot' (first used by rules[0])"),
    ({k: v for k, v in HOT.items() if k != "id"}, "rules[1].id", "Field required"),
    ({**HOT, "id": "two words"}, "rules[1].id", "must be 1-64"),
    ({**HOT, "id": "x", "kind": "magic"}, "rules[1].kind", "unknown kind 'magic'"),
    ({**HOT, "id": "x", "window": "w5"}, "rules[1].window", "unknown window 'w5'"),
    ({**HOT, "id": "x", "condition": "max >> 90"}, "rules[1].condition", "expected a number"),
    ({**HOT, "id": "x", "condition": "max => 90"}, "rules[1].condition", "expected an operator"),
    ({**HOT, "id": "x", "condition": "max > ninety"}, "rules[1].condition", "expected a number"),
    ({**HOT, "id": "x", "condition": "max > 90 for 0 windows"}, "rules[1].condition", "N >= 1"),
    ({**HOT, "id": "x", "condition": "max > 90 for ever"}, "rules[1].condition", "for N windows"),
    ({**HOT, "id": "x", "clear": "max < 95"}, "rules[1].clear", "overlaps the condition"),
    ({**HOT, "id": "x", "clear": "mx < 80"}, "rules[1].clear", "unknown aggregate 'mx'"),
    ({**HOT, "id": "x", "message": "{device} hot"}, "rules[1].message",
     "unknown placeholder '{device}'"),
    ({**HOT, "id": "x", "message": "{max.__class__}"}, "rules[1].message",
     "attribute or index access"),
    ({**HOT, "id": "x", "message": "{max[0]}"}, "rules[1].message", "attribute or index access"),
    ({**HOT, "id": "x", "message": "{} hot"}, "rules[1].message", "positional placeholder"),
    ({**HOT, "id": "x", "message": "{max:.1q}"}, "rules[1].message", "invalid format spec"),
    ({**HOT, "id": "x", "message": "{device_id:.1f}"}, "rules[1].message",
     "invalid format spec"),
    ({**HOT, "id": "x", "message": "{max:{w}}"}, "rules[1].message", "nest"),
    ({**HOT, "id": "x", "message": "max } 90"}, "rules[1].message", "invalid template"),
    ({**HOT, "id": "x", "severity": "urgent"}, "rules[1].severity", "'critical'"),
    ({**HOT, "id": "x", "cooldown": "soon"}, "rules[1].cooldown", "expected a duration"),
    ({**HOT, "id": "x", "treshold": 3}, "rules[1].treshold", "unknown key"),
    ({"id": "x", "condition": "max > 1", "match": {}}, "rules[1].match.measurement",
     "required for threshold rules"),
    ({"id": "x", "kind": "stale"}, "rules[1].after", "Field required"),
    ({"id": "x", "kind": "low_battery", "below": 3.3, "clear_above": 3.0},
     "rules[1].clear_above", "must be >= below"),
    ({"id": "x", "kind": "buffer_fill", "above_percent": 120}, "rules[1].above_percent",
     "less than or equal to 100"),
    ({"id": "x", "kind": "rate_of_change", "match": {"measurement": "t"}, "limit": 1,
      "clear_below": 2}, "rules[1].clear_below", "must be <= limit"),
    ({"id": "x", "kind": "uplink_down", "after": "5m", "match": {}}, "rules[1].match",
     "unknown key"),
    ("just text", "rules[1]", "expected a mapping"),
])
def test_rule_mistakes_are_reported_with_key_path(rule: Any, path: str, fragment: str) -> None:
    found = problems(rules(HOT, rule))
    assert any(p == path and fragment in why for p, why in found), found


@pytest.mark.parametrize("window, path, fragment", [
    ({"id": "w", "kind": "sliding", "size": "1m"}, "windows[0].slide", "required"),
    ({"id": "w", "kind": "sliding", "size": "1m", "slide": "25s"}, "windows[0].size",
     "whole multiple"),
    ({"id": "w", "size": "10s", "slide": "5s"}, "windows[0].slide", "tumbling window has no"),
    ({"id": "w", "size": "ten"}, "windows[0].size", "expected a duration"),
    ({"id": "w", "size": "10s", "key_by": ["colour"]}, "windows[0].key_by", "unknown field"),
    ({"id": "w", "size": "10s", "lateness": "-1s"}, "windows[0].lateness", "duration"),
    ({"size": "10s"}, "windows[0].id", "Field required"),
])
def test_window_mistakes_are_reported_with_key_path(window: dict, path: str,
                                                    fragment: str) -> None:
    found = problems(rules(windows=[window]))
    assert any(p == path and fragment in why for p, why in found), found


def test_window_references_and_measurement_filters_are_checked() -> None:
    two: list[dict[str, Any]] = [{"id": "a", "size": "10s"},
                                 {"id": "b", "size": "1m", "measurements": ["humidity"]}]
    found = problems(rules(HOT, {**HOT, "id": "y", "window": "b"}, windows=two))
    assert ("rules[0].window", "required when more than one window is defined "
                               "(defined: a, b)") in found
    assert any(p == "rules[1].match.measurement" and "does not aggregate" in why
               for p, why in found)
    dup = problems(rules(windows=[{"id": "a", "size": "10s"}, {"id": "a", "size": "5s"}]))
    assert dup == [("windows[1].id", "duplicate window id 'a'")]


def test_every_problem_is_reported_at_once() -> None:
    data = rules({**HOT, "condition": "p96 > 1"}, {**HOT, "id": "b", "message": "{nope}"},
                 {"id": "c", "kind": "stale", "after": "x"})
    assert [p for p, _ in problems(data)] == ["rules[0].condition", "rules[1].message",
                                              "rules[2].after"]


def test_file_errors(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_rules(f)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_rules(tmp_path / "missing.yaml")
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_rules(f)
    f.write_text(yaml.safe_dump(rules(HOT, {**HOT, "id": "b", "condition": "p96 > 2"})))
    with pytest.raises(ConfigError) as info:
        load_rules(f)
    assert str(info.value).startswith(f"{f}: rules[1].condition: unknown aggregate 'p96'")


@pytest.mark.parametrize("text, expect", [
    ("max > 90", ("max", ">", 90.0, 1)),
    ("  p95>=85.5   for 3 windows ", ("p95", ">=", 85.5, 3)),
    ("min < -4e1", ("min", "<", -40.0, 1)),
    ("count == 0 for 1 window", ("count", "==", 0.0, 1)),
    ("rate != .5", ("rate", "!=", 0.5, 1)),
    ("stddev <= 2", ("stddev", "<=", 2.0, 1)),
])
def test_conditions_parse(text: str, expect: tuple) -> None:
    c = parse_condition(text, AGGREGATES)
    assert (c.name, c.op, c.threshold, c.windows) == expect


@pytest.mark.parametrize("text", ["", "max", "max >", "> 90", "max > 90 windows", "max ~ 3",
                                  "max > 1e999", "__import__('os') > 1", "max > 9 for -1 windows"])
def test_bad_conditions_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_condition(text, AGGREGATES)


def test_condition_semantics() -> None:
    c = parse_condition("max > 90", AGGREGATES)
    assert c.test(90.5) is True and c.test(90.0) is False and c.test(None) is None


def test_template_renders_missing_values_as_na() -> None:
    t = Template("{device_id} rate {rate:+.2f} max {max:.1f}",
                 {"device_id": str, "rate": float, "max": float})
    assert t.render({"device_id": "d", "rate": None, "max": 91.26}) == "d rate n/a max 91.3"
    assert t.render({"device_id": "d"}) == "d rate n/a max n/a"
    assert t.render({"device_id": "d", "rate": "oops", "max": 1.0}).startswith("{device_id}")
