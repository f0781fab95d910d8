"""The gateway status record end to end without servers: the gateway's event, the InfluxDB
sink's line, the row InfluxDB answers for it, and the fleet page's summary of that row.

The contract between `gateway.statusreport`, `cloud.sinks.influx.lineproto` and
`cloud.web.fleet.status_record`: every column the fleet page shows is filled from what the
gateway sends, and nothing it does not know is shown as 0.
"""

from __future__ import annotations

import re
from typing import Any

from cloud.sinks.influx.lineproto import LineBuilder
from cloud.web.fleet import status_record, summarize
from edge.model import Event

NOW = 1_705_322_400_000


def _row(line: str) -> dict[str, Any]:
    """What InfluxQL `SELECT *` answers for one point (time in ms), from its line."""
    head, fields, ts = line.rsplit(" ", 2)
    row: dict[str, Any] = {"time": int(ts)}
    for tag in head.split(",")[1:]:
        k, v = tag.split("=", 1)
        row[k] = v
    for m in re.finditer(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|[^,]+)', fields):
        k, v = m.groups()
        row[k] = v[1:-1] if v.startswith('"') else int(v[:-1]) if v.endswith("i") else float(v)
    return row


def _status_event(ts_ms: int, **body: Any) -> Event:
    # the body gateway.statusreport.build_status_event writes
    base: dict[str, Any] = {
        "gateway": "gw-1", "firmware_version": "0.1.0", "config_version": "9f2c01ab33de",
        "uplink_state": "backoff", "uplink_down_since_ms": ts_ms - 90_000,
        "backlog_rows": 5400, "backlog_bytes": 270_000, "backlog_age_ms": 95_000,
        "drops": {"evicted": 12}, "deadletters": {"bad_json": 4, "too_large": 1}}
    base.update(body)
    return Event("gateway_status", b"k" * 16, ts_ms, "gw-1", base)


def test_fleet_shows_the_reported_status() -> None:
    line = LineBuilder().event(_status_event(NOW - 30_000), "gw-1")
    st = status_record(_row(line))
    assert st is not None
    [summary] = summarize(NOW, offline_after_ms=300_000, known=["gw-1"], last_seen={},
                          devices={}, statuses={"gw-1": st}, alerts_firing={})
    shown = summary.as_json()
    assert shown["online"] is True and shown["last_seen_ms"] == NOW - 30_000
    assert (shown["backlog_rows"], shown["backlog_bytes"], shown["backlog_age_ms"]) == \
        (5400, 270_000, 95_000)
    assert shown["drops"] == {"evicted": 12}
    assert shown["deadletters"] == {"bad_json": 4, "too_large": 1}
    assert (shown["firmware_version"], shown["config_version"], shown["uplink_state"]) == \
        ("0.1.0", "9f2c01ab33de", "backoff")


def test_unknown_backlog_stays_not_reported() -> None:
    line = LineBuilder().event(_status_event(NOW, backlog_rows=None, backlog_bytes=None,
                                             backlog_age_ms=None), "gw-1")
    st = status_record(_row(line))
    assert st is not None
    [summary] = summarize(NOW, offline_after_ms=300_000, known=[], last_seen={}, devices={},
                          statuses={"gw-1": st}, alerts_firing={})
    shown = summary.as_json()
    assert shown["backlog_rows"] is None and shown["backlog_age_ms"] is None
    assert shown["firmware_version"] == "0.1.0"


def test_without_a_status_the_columns_are_not_reported() -> None:
    [summary] = summarize(NOW, offline_after_ms=300_000, known=["gw-1"], last_seen={},
                          devices={}, statuses={}, alerts_firing={})
    shown = summary.as_json()
    assert shown["drops"] is None and shown["backlog_rows"] is None
    assert shown["firmware_version"] is None
