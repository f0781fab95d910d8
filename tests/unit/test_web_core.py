"""The dashboard's pure parts: sessions, throttle, alert board, InfluxQL, fleet, history plan."""

from __future__ import annotations

import pytest

from cloud.web.board import AckRecord, AlertBoard, alert_id
from cloud.web.fleet import status_record, summarize
from cloud.web.history import History, merge, plan
from cloud.web.queries import (
    Series,
    aggregate_query,
    attach_sparklines,
    device_rows,
    devices_query,
    ident,
    is_reading_measurement,
    last_seen_by_gateway,
    parse_results,
    pick_bucket_ms,
)
from cloud.web.sessions import LoginThrottle, new_session, safe_next, token_hash, tokens_match

DAY = 86_400_000
NOW = 1_705_322_445_000


# -- sessions ------------------------------------------------------------------------------


def test_session_token_is_stored_only_as_its_hash() -> None:
    token, s = new_session("alice", NOW, 1000)
    assert s.token_hash == token_hash(token) != token
    assert len(token) >= 40 and s.csrf and s.csrf != token
    assert not s.expired(NOW + 999) and s.expired(NOW + 1000)
    assert new_session("alice", NOW, 1000)[0] != token


@pytest.mark.parametrize("target,expected", [
    ("/devices/x?measurement=t", "/devices/x?measurement=t"), ("/", "/"), (None, "/"),
    ("", "/"), ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("evil", "/"),
    ("/\\evil.example", "/"), ("/a\nb", "/")])
def test_safe_next_allows_local_paths_only(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_tokens_match() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("", "")


def test_throttle_locks_after_failures_then_releases() -> None:
    t = LoginThrottle(max_failures=3, window_s=60, lockout_s=30)
    keys = ("user:a", "ip:1")
    for i in range(2):
        t.failed(keys, NOW + i)
        assert t.wait_s(keys, NOW + i) == 0
    t.failed(keys, NOW + 2)
    assert t.wait_s(keys, NOW + 3) == pytest.approx(29.999)
    assert t.wait_s(("user:b", "ip:1"), NOW + 3) > 0  # the address is locked too
    assert t.wait_s(("user:b", "ip:2"), NOW + 3) == 0
    assert t.wait_s(keys, NOW + 30_002) == 0


def test_throttle_forgets_failures_outside_the_window() -> None:
    t = LoginThrottle(max_failures=3, window_s=10, lockout_s=30)
    keys = ("user:a",)
    t.failed(keys, NOW)
    t.failed(keys, NOW + 1)
    t.failed(keys, NOW + 20_000)
    assert t.wait_s(keys, NOW + 20_001) == 0
    t.succeeded(keys)
    t.failed(keys, NOW + 20_002)
    assert t.wait_s(keys, NOW + 20_003) == 0


# -- alert board ---------------------------------------------------------------------------


def _body(transition: str, state: str, *, key: str = "overheat:s-1", incarnation: int = 1,
          severity: str = "critical", acked_by: str | None = None) -> dict[str, object]:
    return {"transition": transition, "dedup_key": key, "incarnation": incarnation,
            "rule_id": key.split(":")[0], "kind": "threshold", "device_id": key.split(":")[1],
            "severity": severity, "message": f"{key} {transition}", "values": {"v": 1.0},
            "state": state, "fired_at_ms": NOW, "notifications": 0, "acked_by": acked_by,
            "acked_at_ms": None, "resolved_at_ms": None, "reason": None}


def test_board_lifecycle_duplicates_and_recent() -> None:
    b = AlertBoard(recent_max=3)
    u = b.apply("gw-1", b"k1", NOW, _body("firing", "firing"))
    assert u is not None and u.alert is not None and u.alert_id == "gw-1/overheat:s-1"
    assert [a["id"] for a in b.active()] == ["gw-1/overheat:s-1"]
    assert b.apply("gw-1", b"k1", NOW, _body("firing", "firing")) is None  # duplicate
    assert b.duplicates == 1
    # the same dedup key on another gateway is another alert
    b.apply("gw-2", b"k2", NOW, _body("firing", "firing"))
    assert b.firing_by_gateway() == {"gw-1": 1, "gw-2": 1}
    u = b.apply("gw-1", b"k3", NOW + 5, _body("resolved", "resolved"))
    assert u is not None and u.alert is None and u.transition is not None
    assert u.transition["state"] == "resolved"
    assert [a["id"] for a in b.active()] == ["gw-2/overheat:s-1"]
    assert [r["transition"] for r in b.recent()] == ["resolved", "firing", "firing"]
    b.apply("gw-3", b"k4", NOW, _body("firing", "firing"))
    assert len(b.recent()) == 3  # bounded


def test_board_ignores_transitions_of_an_older_incarnation_for_state() -> None:
    b = AlertBoard()
    b.apply("gw", b"a", NOW, _body("firing", "firing", incarnation=2))
    u = b.apply("gw", b"b", NOW, _body("resolved", "resolved", incarnation=1))
    assert u is not None and u.alert is not None  # still firing (incarnation 2)
    assert len(b) == 1 and len(b.recent()) == 2


def test_board_refuses_bodies_without_identity() -> None:
    b = AlertBoard()
    assert b.apply("gw", b"x", NOW, {"state": "firing"}) is None
    assert b.apply("gw", b"y", NOW, {"dedup_key": "k", "incarnation": True}) is None
    assert b.malformed == 2 and len(b) == 0


def test_board_cloud_ack_per_incarnation() -> None:
    b = AlertBoard()
    aid = alert_id("gw", "overheat:s-1")
    assert b.ack(aid, "alice", NOW) == ("missing", None)
    b.apply("gw", b"1", NOW, _body("firing", "firing"))
    outcome, record = b.ack(aid, "alice", NOW + 1)
    assert outcome == "ok" and record == AckRecord(aid, 1, "alice", NOW + 1)
    update = b.commit_ack(record)
    assert update.kind == "ack" and update.alert is not None
    assert update.alert["cloud_ack"] == {"by": "alice", "at_ms": NOW + 1}
    assert update.alert["acknowledged"] and update.alert["state"] == "firing"
    assert b.ack(aid, "bob", NOW + 2)[0] == "already"
    assert b.firing_by_gateway() == {}
    # a new incarnation starts unacknowledged
    b.apply("gw", b"2", NOW + 3, _body("resolved", "resolved"))
    b.apply("gw", b"3", NOW + 4, _body("firing", "firing", incarnation=2))
    assert b.get(aid)["cloud_ack"] is None  # type: ignore[index]
    assert b.ack(aid, "bob", NOW + 5)[0] == "ok"


def test_board_gateway_ack_counts_as_acknowledged() -> None:
    b = AlertBoard()
    b.apply("gw", b"1", NOW, _body("firing", "firing"))
    b.apply("gw", b"2", NOW, _body("acknowledged", "acknowledged", acked_by="ops"))
    [a] = b.active()
    assert a["acknowledged"] and a["cloud_ack"] is None
    assert b.ack(a["id"], "alice", NOW)[0] == "already"


def test_board_restores_acks() -> None:
    b = AlertBoard()
    b.load_acks([AckRecord("gw/overheat:s-1", 1, "alice", NOW)])
    b.apply("gw", b"1", NOW, _body("firing", "firing"))
    assert b.active()[0]["cloud_ack"]["by"] == "alice"


def test_board_orders_unacknowledged_then_severity() -> None:
    b = AlertBoard()
    b.apply("gw", b"1", NOW, _body("firing", "firing", key="a:s-1", severity="warning"))
    b.apply("gw", b"2", NOW, _body("firing", "firing", key="b:s-2", severity="critical"))
    b.apply("gw", b"3", NOW, _body("firing", "firing", key="c:s-3", severity="critical"))
    _, rec = b.ack("gw/c:s-3", "x", NOW)
    assert rec is not None
    b.commit_ack(rec)
    assert [a["dedup_key"] for a in b.active()] == ["b:s-2", "a:s-1", "c:s-3"]


# -- InfluxQL ------------------------------------------------------------------------------


def test_user_input_is_bound_never_spliced() -> None:
    evil = "x' OR 1=1; DROP DATABASE fieldlink --"
    q, params = aggregate_query("temperature", evil, NOW - 1000, NOW, 1000)
    assert evil not in q and params["device_id"] == evil
    assert params["start"] == (NOW - 1000) * 1_000_000
    q, params = devices_query(["temperature", 'we"ird'], NOW - DAY, {"facility": evil})
    assert evil not in q and params["facility"] == evil
    assert '"we\\"ird"' in q and q.count("SELECT") == 3
    assert ident('a\\b"c') == '"a\\\\b\\"c"'


def test_reading_measurements_exclude_aggregates_alerts_status() -> None:
    assert [m for m in ("temperature", "window_temperature", "alerts", "gateway_status",
                        "humidity") if is_reading_measurement(m)] == ["temperature",
                                                                      "humidity"]


def test_parse_results_and_errors() -> None:
    body = {"results": [{"statement_id": 0, "series": [
        {"name": "t", "tags": {"device_id": "d", "zone": ""}, "columns": ["time", "value"],
         "values": [[1, 2.0]]}]}, {"statement_id": 1}]}
    [[s], []] = parse_results(body)
    assert s.tags == {"device_id": "d"} and s.rows() == [{"time": 1, "value": 2.0}]
    with pytest.raises(ValueError, match="boom"):
        parse_results({"results": [{"error": "boom"}]})
    with pytest.raises(ValueError, match="bad"):
        parse_results({"error": "bad"})


def _series(name: str, device: str, gw: str, col: str, t: int, v: object,
            **tags: str) -> Series:
    return Series(name, {"device_id": device, "gateway": gw, **tags}, ["time", col], [[t, v]])


def test_device_rows_merge_statements_and_newest_series_wins() -> None:
    values = [_series("temperature", "d1", "gw-1", "value", NOW - 10, 21.5, facility="f",
                      line="l1", unit="C"),
              _series("temperature", "d1", "gw-0", "value", NOW - 99, 20.0),  # moved away
              _series("humidity", "d2", "gw-2", "value", NOW - 5, 40)]
    battery = [_series("temperature", "d1", "gw-1", "battery", NOW - 10, 3.6)]
    quality = [_series("temperature", "d1", "gw-1", "quality", NOW - 10, "good"),
               _series("humidity", "d2", "gw-2", "quality", NOW - 5, "uncertain")]
    rows = device_rows([values, battery, quality])
    assert [(r.device_id, r.measurement, r.gateway) for r in rows] == [
        ("d2", "humidity", "gw-2"), ("d1", "temperature", "gw-1")]
    d1 = rows[1]
    assert (d1.value, d1.battery, d1.quality, d1.unit, d1.facility) == \
        (21.5, 3.6, "good", "C", "f")
    assert rows[0].battery is None and rows[0].quality == "uncertain"
    assert last_seen_by_gateway(rows) == {"gw-2": NOW - 5, "gw-1": NOW - 10}
    attach_sparklines(rows, [Series("temperature", {"device_id": "d1"}, ["time", "v"],
                                    [[2, 1.0], [1, 0.5], [3, None]])])
    assert rows[1].sparkline == [(1, 0.5), (2, 1.0)] and rows[0].sparkline == []


@pytest.mark.parametrize("span,bucket", [(60_000, 1000), (900_000, 2000),
                                         (3_600_000, 10_000), (DAY, 300_000),
                                         (30 * DAY, 7_200_000), (365 * DAY, 86_400_000),
                                         (5 * 365 * DAY, 604_800_000)])
def test_pick_bucket(span: int, bucket: int) -> None:
    assert pick_bucket_ms(NOW - span, NOW) == bucket
    assert span / bucket <= 600 or bucket == 604_800_000


# -- fleet ---------------------------------------------------------------------------------


def test_status_record_reads_counters_by_reason() -> None:
    st = status_record({"time": NOW, "backlog_rows": 12.0, "backlog_age_ms": 3000,
                        "drops_evicted": 4, "drops_purged": 0, "deadletters_bad_json": 2,
                        "firmware_version": "1.4.2", "config_version": "", "other": "x"})
    assert st is not None
    assert (st.backlog_rows, st.backlog_age_ms, st.drops, st.deadletters) == \
        (12, 3000, {"evicted": 4, "purged": 0}, {"bad_json": 2})
    assert st.firmware_version == "1.4.2" and st.config_version is None
    assert status_record({"backlog_rows": 1}) is None


def test_summarize_online_offline_and_sources() -> None:
    st = status_record({"time": NOW - 10_000, "backlog_rows": 5})
    assert st is not None
    out = summarize(NOW, offline_after_ms=60_000, known=["gw-never", "gw-up"],
                    last_seen={"gw-up": NOW - 1000, "gw-old": NOW - 120_000},
                    devices={"gw-up": 3}, statuses={"gw-quiet": st},
                    alerts_firing={"gw-up": 2})
    by = {s.gateway: s for s in out}
    assert [s.gateway for s in out] == ["gw-never", "gw-old", "gw-quiet", "gw-up"]
    assert not by["gw-never"].online and by["gw-never"].last_seen_ms is None
    assert not by["gw-old"].online
    assert by["gw-quiet"].online and by["gw-quiet"].as_json()["backlog_rows"] == 5
    assert by["gw-up"].online and by["gw-up"].devices == 3 and by["gw-up"].alerts_firing == 2
    assert by["gw-up"].as_json()["drops"] is None  # not reported, not zero


# -- history -------------------------------------------------------------------------------


def test_plan_hot_cold_and_straddling_ranges() -> None:
    week = 7 * DAY
    hot = plan(NOW - 3_600_000, NOW, NOW, week)
    assert hot.archive is None and hot.influx is not None
    cold = plan(NOW - 60 * DAY, NOW - 30 * DAY, NOW, week)
    assert cold.influx is None and cold.archive is not None
    both = plan(NOW - 30 * DAY, NOW, NOW, week)
    assert both.archive is not None and both.influx is not None and both.boundary_ms
    assert both.archive[1] == both.influx[0] == both.boundary_ms
    assert both.boundary_ms % both.bucket_ms == 0
    assert NOW - week + 3_600_000 <= both.boundary_ms < NOW - week + 3_600_000 + both.bucket_ms
    assert plan(NOW - 60 * DAY, NOW, NOW, None).archive is None  # INF retention
    assert plan(NOW - 60 * DAY, NOW, NOW, week, archive=False).archive is None


def test_merge_takes_each_store_on_its_side() -> None:
    cold = [[0, 1, 1, 1, 1, 1], [10, 2, 2, 2, 2, 1], [20, 9, 9, 9, 9, 1]]
    hot = [[10, 7, 7, 7, 7, 1], [20, 3, 3, 3, 3, 1]]
    assert merge(cold, hot, 10) == [cold[0], hot[0], hot[1]]
    assert merge(cold, [], None) == cold
    assert merge([], hot, None) == hot


class _FakeInflux:
    def __init__(self, points: list[list[object]]) -> None:
        self.points = points
        self.asked: list[dict[str, object]] = []

    async def query(self, q: str, params: dict[str, object] | None = None) -> object:
        assert params is not None
        self.asked.append(params)
        return [[Series("temperature", {}, ["time", "min", "max", "mean", "p95", "count"],
                        self.points)]]


class _FakeArchive:
    def __init__(self, points: list[list[object]]) -> None:
        self.points = points
        self.asked: list[tuple[int, int, int]] = []

    async def aggregate(self, device_id: str, measurement: str, start_ms: int, end_ms: int,
                        bucket_ms: int) -> list[list[object]]:
        self.asked.append((start_ms, end_ms, bucket_ms))
        return self.points


async def test_history_straddling_the_boundary_asks_both_and_merges() -> None:
    week = 7 * DAY
    p = plan(NOW - 30 * DAY, NOW, NOW, week)
    assert p.boundary_ms is not None
    b = p.boundary_ms
    influx = _FakeInflux([[b, 5.0, 6.0, 5.5, 5.9, 10], [b + p.bucket_ms, 1.0, 1.0, 1.0, 1.0, 0]])
    archive = _FakeArchive([[b - p.bucket_ms, 1.0, 2.0, 1.5, 1.9, 4],
                            [b, 9.0, 9.0, 9.0, 9.0, 1]])  # the hot store owns this bucket
    h = History(influx, archive, retention_ms=week)
    chart = await h.series("d1", "temperature", NOW - 30 * DAY, NOW, NOW)
    assert chart["sources"] == ["archive", "influxdb"]
    assert chart["points"] == [[b - p.bucket_ms, 1.0, 2.0, 1.5, 1.9, 4],
                               [b, 5.0, 6.0, 5.5, 5.9, 10]]  # empty bucket left out
    assert archive.asked == [(p.archive[0], b, p.bucket_ms)]  # type: ignore[index]
    assert influx.asked[0]["start"] == b * 1_000_000


async def test_history_recent_range_reads_influx_only() -> None:
    influx = _FakeInflux([[NOW - 60_000, 1.0, 2.0, 1.5, 2.0, 3]])
    archive = _FakeArchive([])
    chart = await History(influx, archive, retention_ms=7 * DAY).series(
        "d1", "temperature", NOW - 3_600_000, NOW, NOW)
    assert chart["sources"] == ["influxdb"] and archive.asked == []
    assert chart["points"] == [[NOW - 60_000, 1.0, 2.0, 1.5, 2.0, 3]]
