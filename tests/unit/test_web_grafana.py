"""deploy/grafana: valid JSON/YAML, and every query names measurements, tags and fields the
InfluxDB sink really writes (the schema is taken from the sink's own line builder), and every
variable a query uses is defined.  tests/integration/test_dashboard_browser.py also runs the
queries against a real influxd."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from cloud.sinks.influx.lineproto import LineBuilder
from cloud.web.fleet import DEADLETTERS_PREFIX, DROPS_PREFIX
from edge.model import Event, Reading
from edge.rules.alerts import AlertBook
from edge.windows.result import WindowResult

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = ROOT / "dashboards" / "fieldlink-fleet.json"
NOW = 1_705_322_445_000
BUILTIN_VARS = {"timeFilter", "__interval", "__interval_ms", "col", "tag_gateway",
                "tag_device_id", "tag_severity"}


def _parse_line(line: str) -> tuple[str, set[str], set[str]]:
    """(measurement, tag keys, field keys) of a line without escaped separators."""
    head, fields, _ = line.rsplit(" ", 2) if line.count(" ") >= 2 else (line, "", "")
    measurement, *tags = head.split(",")
    field_keys = set(re.findall(r'(?:^|,)([A-Za-z_][A-Za-z0-9_]*)=', fields))
    return measurement, {t.split("=")[0] for t in tags}, field_keys


def sink_schema() -> dict[str, tuple[set[str], set[str]]]:
    """kind -> (tags, fields), from the sink's LineBuilder on representative items."""
    b = LineBuilder()
    reading = Reading("s-1", NOW, 21.5, "temperature", "C", "plant", "l1", "z1",
                      battery_voltage=3.6, seq=7, flags=1)
    window = WindowResult("w10s", "tumbling", 10_000, 10_000, "fp", "s-1", "temperature",
                          NOW, NOW + 10_000, {"count": 3, "min": 1.0, "max": 2.0,
                                              "mean": 1.5, "p50": 1.5, "p95": 2.0,
                                              "p99": 2.0, "stddev": 0.5, "first": 1.0,
                                              "last": 2.0, "rate": 0.1},
                          unit="C", tags={"facility": "plant", "line": "l1", "zone": "z1"},
                          battery_min=3.5).to_event()
    book = AlertBook()
    fired = book.fire(rule_id="hot", kind="threshold", subject="s-1", severity="critical",
                      message="hot", values={}, now_ms=NOW, cooldown_ms=0)
    acked = book.acknowledge("hot:s-1", "ops", NOW + 1)
    assert acked is not None
    resolved = book.resolve("hot:s-1", NOW + 2, "cleared")
    assert resolved is not None
    out: dict[str, tuple[set[str], set[str]]] = {}
    for kind, line in [("reading", b.reading(reading, "gw-1")),
                       ("window", b.event(window, "gw-1")),
                       *[("alerts", b.event(t.to_event(), "gw-1"))
                         for t in (fired, acked, resolved)]]:
        name, tags, fields = _parse_line(line)
        assert kind != "window" or name == "window_temperature"
        assert kind != "alerts" or name == "alerts"
        old = out.get(kind, (set(), set()))
        out[kind] = (old[0] | tags, old[1] | fields)
    # gateway_status: written by the sink's own builder, counters by reason as prefix + "*"
    status = Event("gateway_status", b"s" * 16, 1_705_322_400_000, "gw-1", {
        "backlog_rows": 1, "backlog_bytes": 2, "backlog_age_ms": 3, "firmware_version": "f",
        "config_version": "c", "uplink_state": "up", "drops": {"evicted": 1},
        "deadletters": {"bad_json": 1}})
    name, tags, fields = _parse_line(b.event(status, "gw-1"))
    assert name == "gateway_status"
    fields = {next((p + "*" for p in (DROPS_PREFIX, DEADLETTERS_PREFIX) if f.startswith(p)), f)
              for f in fields}
    # what the dashboard reads (cloud.web.fleet.status_record) must all be written
    assert {"backlog_rows", "backlog_age_ms", "backlog_bytes", "firmware_version",
            "config_version", "uplink_state", DROPS_PREFIX + "*",
            DEADLETTERS_PREFIX + "*"} <= fields
    out["status"] = (tags, fields)
    return out


def _kind(source: str) -> str:
    return {'/^$measurement$/': "reading", '/^window_$measurement$/': "window",
            '"alerts"': "alerts", '"gateway_status"': "status"}[source]


def _queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r}", t["query"]))
    for a in dash["annotations"]["list"]:
        if "query" in a:
            out.append((f"annotation {a['name']!r}", a["query"]))
    for v in dash["templating"]["list"]:
        out.append((f"variable {v['name']!r}", v["query"]))
    return out


def test_dashboard_queries_match_the_sink_schema() -> None:
    dash = json.loads(DASHBOARD.read_text())
    schema = sink_schema()
    assert {"device_id", "gateway", "facility", "line", "zone", "unit"} <= schema["reading"][0]
    assert {"value", "quality", "battery"} <= schema["reading"][1]
    checked = 0
    for where, q in _queries(dash):
        m = re.search(r"\bFROM (/\^[^ ]*\$/|\"[a-z_]+\")", q)
        if q == "SHOW MEASUREMENTS":
            continue
        assert m, f"{where}: no FROM clause in {q}"
        tags, fields = schema[_kind(m[1])]
        select, _, rest = q.partition(" FROM ")
        # everything quoted after FROM (WHERE, GROUP BY, WITH KEY) must be a tag or field
        # the WHERE compares (fields like quality/transition appear there too)
        for name in re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', rest.split(" ", 1)[1]
                               if " " in rest else ""):
            assert name in tags or name in fields or name == "time", \
                f"{where}: {name!r} is not a tag or field of {m[1]}"
        for name in re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', select):
            if re.search(rf'AS "{name}"', select):
                continue  # an alias
            ok = name in tags or name in fields or any(
                f.endswith("*") and name.startswith(f[:-1]) for f in fields)
            assert ok, f"{where}: {name!r} is not a tag or field of {m[1]}"
        for var in re.findall(r"\$(\w+)", q):
            assert var in BUILTIN_VARS or var in {v["name"] for v in
                                                 dash["templating"]["list"]}, \
                f"{where}: ${var} is not defined"
        checked += 1
    assert checked >= 15


def test_dashboard_variables_panels_and_annotations() -> None:
    dash = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    assert {"facility", "line", "device", "measurement"} <= set(names)
    assert names.index("facility") < names.index("line") < names.index("device")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"])
    assert "Gateways" in titles and "$device" in titles and "window aggregates" in titles
    [alerts] = [a for a in dash["annotations"]["list"] if a["name"] == "fieldlink alerts"]
    assert '"alerts"' in alerts["query"] and alerts["enable"]
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "fieldlink-influxdb", p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + \
            p["gridPos"]["w"] <= 24


def test_measurement_variable_regex_keeps_reading_measurements_only() -> None:
    dash = json.loads(DASHBOARD.read_text())
    [v] = [v for v in dash["templating"]["list"] if v["name"] == "measurement"]
    # Grafana applies it as a JavaScript regex; Python's re agrees on this one
    pattern = re.compile(v["regex"].strip("/"))
    names = ["temperature", "window_temperature", "alerts", "gateway_status", "alerts_x"]
    assert [n for n in names if pattern.match(n)] == ["temperature", "alerts_x"]


def test_provisioning_files() -> None:
    ds = yaml.safe_load((ROOT / "provisioning" / "datasources" /
                         "fieldlink-influxdb.yaml").read_text())
    [source] = ds["datasources"]
    assert source["uid"] == "fieldlink-influxdb" and source["type"] == "influxdb"
    assert source["jsonData"]["httpMode"] == "POST" and "password" in source["secureJsonData"]
    prov = yaml.safe_load((ROOT / "provisioning" / "dashboards" / "fieldlink.yaml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert json.loads(DASHBOARD.read_text())["uid"] == "fieldlink-fleet"


def test_sink_schema_probe_is_not_vacuous() -> None:
    _, tags, fields = _parse_line('m,device_id=a,gateway=g value=1.0,quality="good" 1')
    assert tags == {"device_id", "gateway"} and fields == {"value", "quality"}
