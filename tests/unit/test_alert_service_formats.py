"""Alert wire formats: MQTT state topic and body, PagerDuty Events v2, generic webhook."""

from __future__ import annotations

import json
from typing import Any

from gateway.alerts.formats import (
    generic_event,
    log_fields,
    mqtt_state,
    pagerduty_event,
    state_topic,
    topic_level,
)

FIRED = 1_705_322_452_100


def rec(transition: str = "firing", **over: Any) -> dict[str, Any]:
    state = {"firing": "firing", "renotify": "firing", "acknowledged": "acknowledged",
             "resolved": "resolved"}[transition]
    base = {"transition": transition, "at_ms": FIRED + 5000, "dedup_key": "overheat:oven-3",
            "incarnation": 2, "rule_id": "overheat", "kind": "threshold",
            "device_id": "oven-3", "severity": "critical",
            "message": "oven-3 max 92.4 °C > 90", "state": state,
            "values": {"max": 92.4, "measurement": "temperature", "window": "w10s"},
            "fired_at_ms": FIRED, "notifications": 0, "acked_by": None,
            "acked_at_ms": None, "resolved_at_ms": None, "reason": None}
    base.update(over)
    return base


def test_pagerduty_event_shape_per_transition() -> None:
    actions = {}
    for transition in ("firing", "renotify", "acknowledged", "resolved"):
        ev = pagerduty_event(rec(transition), "R0UTINGKEY", "gw-7")
        assert set(ev) == {"routing_key", "event_action", "dedup_key", "payload"}
        assert ev["routing_key"] == "R0UTINGKEY" and ev["dedup_key"] == "overheat:oven-3"
        p = ev["payload"]
        assert set(p) == {"summary", "source", "severity", "timestamp", "component", "group",
                          "class", "custom_details"}
        assert p["summary"] == "oven-3 max 92.4 °C > 90"
        assert (p["source"], p["group"], p["class"], p["component"]) == (
            "oven-3", "gw-7", "overheat", "temperature")
        assert p["severity"] == "critical"
        assert p["timestamp"] == "2024-01-15T12:40:57.100Z"
        assert p["custom_details"]["values"]["max"] == 92.4
        assert p["custom_details"]["incarnation"] == 2
        json.dumps(ev)
        actions[transition] = ev["event_action"]
    assert actions == {"firing": "trigger", "renotify": "trigger",
                       "acknowledged": "acknowledge", "resolved": "resolve"}


def test_pagerduty_severity_and_limits() -> None:
    assert {s: pagerduty_event(rec(severity=s), "k", "g")["payload"]["severity"]
            for s in ("info", "warning", "critical")} == {
        "info": "info", "warning": "warning", "critical": "critical"}
    long = pagerduty_event(rec(message="x" * 5000, dedup_key="k" * 400), "k", "g")
    assert len(long["payload"]["summary"]) == 1024 and long["payload"]["summary"][-1] == "…"
    assert len(long["dedup_key"]) == 255
    gateway_rule = pagerduty_event(rec(kind="uplink_down", values={"down_s": 400.0}), "k", "g")
    assert gateway_rule["payload"]["component"] == "uplink_down"


def test_generic_event_is_the_record_plus_gateway() -> None:
    r = rec("acknowledged", acked_by="ops", acked_at_ms=FIRED + 9000)
    assert generic_event(r, "gw-7") == {**r, "gateway_id": "gw-7"}


def test_mqtt_state_topic_and_body() -> None:
    r = rec("resolved", resolved_at_ms=FIRED + 60_000, reason="cleared", acked_by="ops",
            acked_at_ms=FIRED + 1000)
    assert state_topic("alerts/", r) == "alerts/critical/overheat/oven-3"
    assert state_topic("plant1/alerts/", rec(device_id="a/b+c#d")) == \
        "plant1/alerts/critical/overheat/a_b_c_d"
    assert topic_level("") == "_"
    body = mqtt_state(r, "gw-7")
    assert {k: body[k] for k in ("dedup_key", "state", "rule", "device", "severity",
                                 "message", "fired_at", "acked_by", "resolved_at")} == {
        "dedup_key": "overheat:oven-3", "state": "resolved", "rule": "overheat",
        "device": "oven-3", "severity": "critical", "message": "oven-3 max 92.4 °C > 90",
        "fired_at": "2024-01-15T12:40:52.100Z", "acked_by": "ops",
        "resolved_at": "2024-01-15T12:41:52.100Z"}
    assert body["values"]["max"] == 92.4 and body["gateway"] == "gw-7"
    assert body["at_ms"] == FIRED + 5000
    json.dumps(body)


def test_log_fields() -> None:
    f = log_fields(rec())
    assert f["event"] == "alert" and f["dedup_key"] == "overheat:oven-3"
    assert f["at"] == "2024-01-15T12:40:57.100Z"
