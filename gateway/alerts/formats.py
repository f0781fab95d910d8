"""What an alert transition looks like on each channel — pure functions, no I/O.

Input everywhere is an alert *record*: the transition's event body, i.e.
``{"transition": ..., **AlertTransition.body}`` plus ``"at_ms"`` (when the transition was
produced).  Outputs:

* `state_topic(prefix, record)` — ``<prefix><severity>/<rule_id>/<device_id>``; each level has
  the MQTT wildcard and separator characters (``/ + #``) and NUL replaced by ``_``.
* `mqtt_state(record, gateway_id)` — the retained JSON state of the alert on that topic.
* `pagerduty_event(record, routing_key, gateway_id)` — a PagerDuty Events API v2 event.
* `generic_event(record, gateway_id)` — the JSON body of a generic webhook.
* `log_fields(record)` — the fields of the structured log line.
* `parse_ack(...)` — an operator's MQTT acknowledgement: topic ``<prefix>ack/<dedup_key>``,
  payload empty or JSON ``{"by": "name"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge.rules import iso_ms

#: transition -> PagerDuty event_action.  A renotify re-triggers: PagerDuty folds a trigger
#: with the dedup_key of an open incident into that incident.
PD_ACTIONS = {"firing": "trigger", "renotify": "trigger", "acknowledged": "acknowledge",
              "resolved": "resolve"}
#: our severity -> PagerDuty's (critical, error, warning, info); nothing maps to "error"
PD_SEVERITIES = {"critical": "critical", "warning": "warning", "info": "info"}
PD_SUMMARY_MAX = 1024
PD_DEDUP_MAX = 255

_BAD_LEVEL = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def topic_level(text: str) -> str:
    """`text` as one MQTT topic level (never empty, never a wildcard)."""
    return str(text).translate(_BAD_LEVEL) or "_"


def state_topic(prefix: str, record: dict[str, Any]) -> str:
    return (f"{prefix}{topic_level(record['severity'])}/{topic_level(record['rule_id'])}/"
            f"{topic_level(record['device_id'])}")


def _iso(ms: Any) -> str | None:
    return iso_ms(int(ms)) if isinstance(ms, int) else None


def mqtt_state(record: dict[str, Any], gateway_id: str) -> dict[str, Any]:
    """The retained state message: what a technician's phone shows."""
    return {
        "dedup_key": record["dedup_key"], "state": record["state"],
        "transition": record["transition"], "rule": record["rule_id"],
        "kind": record.get("kind"), "device": record["device_id"],
        "severity": record["severity"], "message": record.get("message", ""),
        "values": record.get("values", {}), "incarnation": record.get("incarnation"),
        "fired_at": _iso(record.get("fired_at_ms")), "fired_at_ms": record.get("fired_at_ms"),
        "acked_by": record.get("acked_by"), "acked_at": _iso(record.get("acked_at_ms")),
        "resolved_at": _iso(record.get("resolved_at_ms")),
        "resolved_at_ms": record.get("resolved_at_ms"), "reason": record.get("reason"),
        "notifications": record.get("notifications", 0), "at_ms": record.get("at_ms"),
        "gateway": gateway_id,
    }


def pagerduty_event(record: dict[str, Any], routing_key: str, gateway_id: str
                    ) -> dict[str, Any]:
    """PagerDuty Events API v2 body.  `source` is the device (the affected system), `group`
    the gateway, `class` the rule; `component` the measurement when the rule has one."""
    values = record.get("values") or {}
    summary = str(record.get("message") or record["dedup_key"])
    if len(summary) > PD_SUMMARY_MAX:
        summary = summary[:PD_SUMMARY_MAX - 1] + "…"
    return {
        "routing_key": routing_key,
        "event_action": PD_ACTIONS[record["transition"]],
        "dedup_key": str(record["dedup_key"])[:PD_DEDUP_MAX],
        "payload": {
            "summary": summary,
            "source": str(record["device_id"]),
            "severity": PD_SEVERITIES.get(record["severity"], "warning"),
            "timestamp": _iso(record.get("at_ms", record.get("fired_at_ms"))),
            "component": str(values.get("measurement") or record.get("kind") or ""),
            "group": gateway_id,
            "class": str(record["rule_id"]),
            "custom_details": {
                "transition": record["transition"], "state": record["state"],
                "incarnation": record.get("incarnation"),
                "fired_at": _iso(record.get("fired_at_ms")),
                "acked_by": record.get("acked_by"), "reason": record.get("reason"),
                "values": values,
            },
        },
    }


def generic_event(record: dict[str, Any], gateway_id: str) -> dict[str, Any]:
    """The alert record itself, plus the gateway id."""
    return {**record, "gateway_id": gateway_id}


def log_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {"event": "alert", "transition": record["transition"],
            "dedup_key": record["dedup_key"], "incarnation": record.get("incarnation"),
            "rule_id": record["rule_id"], "device_id": record["device_id"],
            "severity": record["severity"], "state": record["state"],
            "alert_message": record.get("message", ""), "acked_by": record.get("acked_by"),
            "reason": record.get("reason"), "at": _iso(record.get("at_ms"))}


@dataclass(frozen=True, slots=True)
class Ack:
    dedup_key: str
    by: str
    #: False when the payload was neither empty nor a JSON object (acknowledged anyway)
    payload_ok: bool = True


def parse_ack(topic: str, payload: bytes, prefix: str, username: str | None = None) -> Ack:
    """`by` is the payload's ``"by"`` (at most 128 characters), else the MQTT username when
    the broker passes it, else ``"mqtt-operator"``."""
    by = username or "mqtt-operator"
    ok = True
    if payload:
        try:
            body = json.loads(payload)
            ok = isinstance(body, dict)
        except (ValueError, UnicodeDecodeError):
            body, ok = None, False
        if isinstance(body, dict) and isinstance(body.get("by"), str) and body["by"]:
            by = body["by"][:128]
    return Ack(topic[len(f"{prefix}ack/"):], by, ok)
