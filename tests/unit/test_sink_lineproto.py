"""cloud.sinks.influx.lineproto: escaping, the schema of each kind, and what is refused."""

from __future__ import annotations

import math

import pytest

from cloud.errors import PointRejected
from cloud.sinks.influx.lineproto import (
    LineBuilder,
    escape_measurement,
    escape_string,
    escape_tag,
)
from edge.model import FLAG_CLOCK_SKEW, Event, Reading
from edge.rules.alerts import Alert, AlertTransition
from edge.windows.result import WindowResult

T = 1_705_322_400_123


def _r(**kw: object) -> Reading:
    base: dict[str, object] = {"device_id": "sensor-7", "ts_ms": T, "value": 21.5,
                               "measurement": "temperature", "unit": "C",
                               "facility": "factory_a", "line": "3", "zone": "z1"}
    base.update(kw)
    return Reading(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain", "plain"),
    ("a,b", "a\\,b"),
    ("a b", "a\\ b"),
    ("a=b", "a\\=b"),
    ("a, =b", "a\\,\\ \\=b"),
    ("x\\y", "x\\y"),            # a backslash before an ordinary character is literal
    ("x\\\\y", "x\\\\y"),
    ("ünï ☃", "ünï\\ ☃"),
])
def test_tag_escaping(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize("raw", ["ends\\", "a\\,b", "a\\ b", "a\\=b", 'a\\"b', "two\nlines",
                                 "cr\r"])
def test_tags_that_line_protocol_cannot_carry_are_refused(raw: str) -> None:
    with pytest.raises(PointRejected) as exc:
        escape_tag(raw)
    assert exc.value.reason == "unrepresentable"


def test_measurement_escaping() -> None:
    assert escape_measurement("temp,c") == "temp\\,c"
    assert escape_measurement("air quality") == "air\\ quality"
    assert escape_measurement("a=b") == "a=b"  # equals signs need no escape in a measurement
    for bad in ("", "#comment", "x\\", "a\\ b", "new\nline"):
        with pytest.raises(PointRejected):
            escape_measurement(bad)


def test_string_field_escaping() -> None:
    assert escape_string('say "hi"') == '"say \\"hi\\""'
    assert escape_string("back\\slash") == '"back\\\\slash"'
    assert escape_string("two\nlines") == '"two\nlines"'  # legal inside a quoted string


def test_reading_line_has_the_documented_schema() -> None:
    line = LineBuilder().reading(_r(battery_voltage=3.61, seq=42), "gw-1")
    assert line == ('temperature,device_id=sensor-7,facility=factory_a,gateway=gw-1,line=3,'
                    'unit=C,zone=z1 value=21.5,quality="good",battery=3.61,seq=42i '
                    f'{T}')


def test_unset_and_empty_tags_are_left_out_and_flags_kept() -> None:
    line = LineBuilder().reading(_r(facility=None, line="", zone=None, unit="",
                                    flags=FLAG_CLOCK_SKEW), "gw-1")
    assert line.startswith("temperature,device_id=sensor-7,gateway=gw-1 value=21.5,")
    assert line.endswith(f",flags={FLAG_CLOCK_SKEW}i {T}")


def test_awkward_strings_are_escaped_in_every_position() -> None:
    line = LineBuilder().reading(_r(measurement="air quality,idx", facility="plant a,b",
                                    line="x=y", quality='so "so"'), "gw 1")
    assert line.startswith("air\\ quality\\,idx,device_id=sensor-7,facility=plant\\ a\\,b,"
                           "gateway=gw\\ 1,line=x\\=y,unit=C,zone=z1 ")
    assert 'quality="so \\"so\\""' in line


@pytest.mark.parametrize("value", [1e16, 1e-07, -0.0, 0.1 + 0.2, 123456789.125])
def test_floats_round_trip_through_their_text(value: float) -> None:
    line = LineBuilder().reading(_r(value=value), "gw")
    text = line.split(" value=")[1].split(",")[0]
    assert float(text) == value and math.copysign(1, float(text)) == math.copysign(1, value)


@pytest.mark.parametrize("field", ["value", "battery_voltage"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(field: str, bad: float) -> None:
    with pytest.raises(PointRejected) as exc:
        LineBuilder().reading(_r(**{field: bad}), "gw")
    assert exc.value.reason == "unrepresentable"


def test_a_redelivered_reading_gives_the_same_line() -> None:
    b = LineBuilder()
    assert b.reading(_r(seq=1), "gw") == LineBuilder().reading(_r(seq=1), "gw")
    assert b.reading(_r(seq=1), "gw") == b.reading(_r(seq=1), "gw")  # cached prefix


def test_prefix_cache_is_bounded() -> None:
    b = LineBuilder(max_series=10)
    for i in range(25):
        b.reading(_r(device_id=f"d{i}"), "gw")
    assert len(b._prefixes) <= 10


def _window_event(**aggregates: object) -> Event:
    result = WindowResult(
        window="w10s", kind="tumbling", size_ms=10_000, slide_ms=10_000, fingerprint="f",
        key="sensor-7", measurement="temperature", start_ms=T, end_ms=T + 10_000,
        aggregates={"count": 10, "min": 20.0, "max": 22.5, "mean": 21.25, "p95": 22.4,
                    "stddev": math.nan, **aggregates},
        unit="C", tags={"facility": "factory_a", "line": "3"}, battery_min=3.6)
    return result.to_event()


def test_aggregate_line() -> None:
    line = LineBuilder().event(_window_event(), "gw-1")
    assert line == ('window_temperature,device_id=sensor-7,facility=factory_a,gateway=gw-1,'
                    'line=3,unit=C,window=w10s count=10i,max=22.5,mean=21.25,min=20.0,'
                    'p95=22.4,late=0i,size_ms=10000i,closed_by="watermark",battery_min=3.6 '
                    f'{T}')  # stddev NaN (one value) is left out, not refused


def test_malformed_events_are_refused() -> None:
    b = LineBuilder()
    with pytest.raises(PointRejected) as exc:
        b.event(Event("aggregate", b"k" * 16, T, "d", {"aggregates": {}}), "gw")
    assert exc.value.reason == "malformed_event"
    with pytest.raises(PointRejected):
        b.event(Event("aggregate", b"k" * 16, T, "d",
                      {"measurement": "m", "aggregates": {"bad name": 1.0}}), "gw")
    with pytest.raises(PointRejected):
        b.event(Event("alert", b"k" * 16, T, "d", {"state": "firing"}), "gw")
    with pytest.raises(PointRejected) as exc:
        b.event(Event("other", b"k" * 16, T, "d", {}), "gw")
    assert exc.value.reason == "unknown_event_kind"


def test_alert_line() -> None:
    alert = Alert(rule_id="overheat", kind="threshold", subject="sensor-7", incarnation=2,
                  severity="critical", message='temp "high" 81.5', values={"value": 81.5},
                  fired_at_ms=T - 5000)
    event = AlertTransition("firing", T, alert.body()).to_event()
    line = LineBuilder().event(event, "gw-1")
    assert line.startswith("alerts,device_id=sensor-7,gateway=gw-1,rule_id=overheat,"
                           "severity=critical,transition=firing ")
    assert 'message="temp \\"high\\" 81.5"' in line
    assert "incarnation=2i" in line and f"fired_at_ms={T - 5000}i" in line
    assert 'values="{\\"value\\": 81.5}"' in line
    assert line.endswith(f" {T}")


def _status(**body: object) -> Event:
    base: dict[str, object] = {
        "gateway": "gw-body", "firmware_version": "0.1.0", "config_version": "0123abcd4567",
        "uplink_state": "circuit_open", "uplink_down_since_ms": T - 60_000,
        "backlog_rows": 1200, "backlog_bytes": 64_000, "backlog_age_ms": 61_000,
        "drops": {"evicted": 7, "expired": 0}, "deadletters": {"bad_json": 3}}
    base.update(body)
    return Event("gateway_status", b"s" * 16, T, "gw-1", base)


def test_gateway_status_point() -> None:
    line = LineBuilder().event(_status(), "gw-1")
    assert line == (
        'gateway_status,gateway=gw-1 backlog_age_ms=61000i,backlog_bytes=64000i,'
        'backlog_rows=1200i,config_version="0123abcd4567",deadletters_bad_json=3i,'
        'drops_evicted=7i,drops_expired=0i,firmware_version="0.1.0",'
        f'uplink_down_since_ms={T - 60_000}i,uplink_state="circuit_open" {T}')


def test_gateway_status_tag_is_the_batch_gateway_and_unknown_is_left_out() -> None:
    line = LineBuilder().event(_status(backlog_rows=None, backlog_bytes=None,
                                       backlog_age_ms=None, uplink_down_since_ms=None,
                                       drops={}, deadletters={}), "gw 2")
    assert line == ('gateway_status,gateway=gw\\ 2 config_version="0123abcd4567",'
                    f'firmware_version="0.1.0",uplink_state="circuit_open" {T}')
    assert "backlog" not in line and "gw-body" not in line


@pytest.mark.parametrize("body", [
    {"backlog_rows": 1.5},
    {"backlog_rows": "many"},
    {"drops": [1, 2]},
    {"drops": {"bad reason": 1}},
    {"deadletters": {"x": "y"}},
])
def test_gateway_status_malformed_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(PointRejected) as exc:
        LineBuilder().event(_status(**body), "gw-1")
    assert exc.value.reason in ("malformed_event", "unrepresentable")


def test_gateway_status_without_fields_is_refused() -> None:
    with pytest.raises(PointRejected) as exc:
        LineBuilder().event(Event("gateway_status", b"s" * 16, T, "gw-1", {}), "gw-1")
    assert exc.value.reason == "malformed_event"
