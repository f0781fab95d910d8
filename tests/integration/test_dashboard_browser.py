"""The cloud dashboard in headless Chromium against a real influxd, a real Parquet archive and
the embedded bus.

Known data is written first — readings through the InfluxDB sink's own line builder into a
fresh database (retention 7 d), older readings of the same device as archive Parquet files,
a gateway status point, an alert on the bus — and then read back through the pages: the
fleet table, the device chart (the points it was fed are in `#chart[data-points]`), a 30-day
zoom that straddles the retention boundary (archive + InfluxDB), acknowledging an alert, and
an alert produced while the page is open appearing without a reload.  Without a session
every data route answers 401.  Screenshots: tests/artifacts/dashboard-*.png.

The Grafana dashboard's queries (deploy/grafana) run against the same influxd.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pytest
from browser import open_browser, require_chromium, screenshot

from cloud.archive.layout import part_name, partition_dir
from cloud.archive.rows import parquet_bytes, partition_groups, readings_batch, sort_rows
from cloud.archive.store import ArchiveStore
from cloud.bus import open_bus, topic_specs
from cloud.sinks.influx.client import InfluxClient, InfluxTarget
from cloud.sinks.influx.lineproto import LineBuilder
from cloud.sinks.influx.writer import gzip_lines
from cloud.web.influx import InfluxReader
from cloud.web.service import WebService, WebSettings
from cloud.web.users import User, hash_password, save_users
from edge.codec import Batch, encode_batch
from edge.config.cloud import load_cloud_config
from edge.model import Reading
from edge.rules.alerts import AlertBook

USER, PASSWORD = "operator", "plant-floor-password"
MIN = 60_000
DAY = 86_400_000
GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


@dataclass
class Stack:
    url: str
    service: WebService
    bus: Any
    alerts_topic: str
    now_ms: int
    hot: list[Reading]
    cold: list[Reading]
    influx: InfluxReader


def _readings(now: int) -> tuple[list[Reading], list[Reading]]:
    """(hot: the last 50 minutes, one a minute, in InfluxDB; cold: 10..8 days ago, hourly, in
    the archive) of sensor-101, plus a few of sensor-202 on another gateway and facility."""
    base = now - now % MIN
    hot = [Reading("sensor-101", base - i * MIN, round(20 + i * 0.25, 2), "temperature", "C",
                   "plant-a", "line-1", "zone-1", battery_voltage=3.7 - i * 0.001, seq=1000 - i)
           for i in range(1, 51)]
    cold = [Reading("sensor-101", base - 10 * DAY + i * 3_600_000, float(5 + i % 7),
                    "temperature", "C", "plant-a", "line-1", "zone-1", seq=i)
            for i in range(48)]
    return hot, cold


def _other(now: int) -> list[Reading]:
    base = now - now % MIN
    return [Reading("sensor-202", base - i * MIN, 40.0 + i, "humidity", "%", "plant-b",
                    "line-2", "zone-9", battery_voltage=3.1, quality="uncertain", seq=i)
            for i in range(1, 6)]


def alert_record(gateway: str, seq: int, transition: Any) -> tuple[bytes, bytes, list[Any]]:
    frame = encode_batch(Batch(gateway, seq, transition.at_ms, [], [transition.to_event()]),
                         "none")
    return (str(transition.body["device_id"]).encode(), frame,
            [("fl-gateway", gateway.encode())])


async def _write_influx(target: InfluxTarget, lines: list[str]) -> None:
    async with InfluxClient(target) as client:
        await client.ensure_retention()
        resp = await client.write(gzip_lines(lines))
        assert resp.ok, resp


def _write_archive(root: Path, readings: list[Reading], gateway: str) -> None:
    store = ArchiveStore(str(root))
    table = pa.Table.from_batches([readings_batch(readings, gateway)])
    for offset, (day, facility, part) in enumerate(partition_groups(table)):
        name = part_name("fieldlink.readings", 0, offset * 1000, offset * 1000 + part.num_rows)
        store.write_atomic(f"{partition_dir(day, facility)}/{name}",
                           parquet_bytes(sort_rows(part)))


@pytest.fixture
async def stack(tmp_path: Path, influxdb: Any) -> AsyncIterator[Stack]:
    database = f"fieldlink_web_{secrets.token_hex(4)}"
    (tmp_path / "cloud.yaml").write_text(f"""
cloud: {{data_dir: {tmp_path / 'data'}}}
ingest:
  gateways: {{gw-1: "0123456789abcdef-gw1", gw-2: "0123456789abcdef-gw2", gw-9: "0123456789abcdef-gw9"}}
influxdb: {{url: "{influxdb.url}", database: {database}, retention: 7d,
            token: "{influxdb.token}"}}
archive: {{path: {tmp_path / 'archive'}}}
web: {{users_file: users.json, session_ttl_s: 3600}}
""")
    cfg = load_cloud_config(tmp_path / "cloud.yaml")
    save_users(cfg.web.users_file, {USER: User(USER, hash_password(PASSWORD))})
    now = int(time.time() * 1000)
    hot, cold = _readings(now)
    b = LineBuilder()
    book = AlertBook()
    history = book.fire(rule_id="overheat", kind="threshold", subject="sensor-101",
                        severity="critical", message="sensor-101 max 95.0 C > 90",
                        values={"max": 95.0}, now_ms=now - 5 * MIN, cooldown_ms=0)
    lines = [b.reading(r, "gw-1") for r in hot] + [b.reading(r, "gw-2") for r in _other(now)]
    lines.append(b.event(history.to_event(), "gw-1"))
    lines.append(f"gateway_status,gateway=gw-1 backlog_rows=42i,backlog_age_ms=5000i,"
                 f'drops_evicted=3i,drops_purged=0i,firmware_version="1.2.3",'
                 f'config_version="cfg-7" {now - MIN}')
    target = InfluxTarget.from_config(cfg.influxdb)
    await _write_influx(target, lines)
    _write_archive(Path(cfg.archive_path), cold, "gw-1")
    settings = WebSettings.from_config(cfg, port=0, offline_after_s=600)
    try:
        async with open_bus(cfg) as bus:
            await bus.ensure_topics(topic_specs(cfg.kafka))
            topic = cfg.kafka.topics.alerts.name
            await bus.producer().send_batch(topic, [alert_record("gw-1", 1, history)])
            async with WebService(settings, bus) as service, \
                    InfluxReader(target) as reader:
                yield Stack(service.url, service, bus, topic, now, hot, cold, reader)
    finally:
        async with InfluxClient(target) as client:
            await client.influxql(f'DROP DATABASE "{database}"')


async def _login(page: Any, url: str) -> None:
    await page.goto(url + "/")
    assert await page.locator("#login-form").count() == 1  # 401: the login form
    await screenshot(page, "dashboard-login")
    await page.fill("#username", USER)
    await page.fill("#password", "wrong password")
    await page.click("#login")
    await page.wait_for_selector("text=Wrong user name or password")
    await page.fill("#username", USER)
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await page.wait_for_selector("#main[data-loaded]", timeout=20_000)


async def wait_js(page: Any, expression: str, within_s: float = 15.0) -> None:
    """Poll `expression` until true.  (`page.wait_for_function` evaluates a string inside the
    page, which the dashboard's Content-Security-Policy rightly refuses; `evaluate` runs it
    through the debugging protocol instead.)"""
    for _ in range(int(within_s / 0.1)):
        if await page.evaluate(expression):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {within_s} s: {expression}")


def _points(raw: str | None) -> list[list[Any]]:
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


async def test_dashboard_in_a_real_browser(stack: Stack) -> None:
    require_chromium()
    async with open_browser() as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # a 401 answer (the login form) is logged as a failed load: not a page error
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and
                not m.text.startswith("Failed to load resource") else None)
        await _login(page, stack.url)

        # -- fleet -------------------------------------------------------------------------
        gw1 = page.locator('#gateways tr[data-gateway="gw-1"]')
        await gw1.wait_for()
        assert await gw1.get_attribute("data-online") == "true"
        cells = await gw1.locator("td").all_inner_texts()
        assert cells[3] == "1" and cells[4] == "42" and cells[5] == "5 s"
        assert "evicted: 3" in cells[6] and cells[7] == "1.2.3" and cells[8] == "cfg-7"
        assert cells[9] == "1"  # the alert on the bus, firing
        gw9 = page.locator('#gateways tr[data-gateway="gw-9"]')  # configured, never sent
        assert await gw9.get_attribute("data-online") == "false"
        row = page.locator('#devices tr[data-device="sensor-101"]')
        newest = stack.hot[0]
        assert float(await row.get_attribute("data-value") or "nan") == newest.value
        texts = await row.locator("td").all_inner_texts()
        assert texts[1] == "temperature" and texts[2] == "plant-a" and texts[5] == \
            f"{newest.value:.2f} C"
        assert texts[7] == f"{newest.battery_voltage:.2f} V" and texts[8] == "good"
        assert int(await row.locator("svg.spark").get_attribute("data-count") or 0) >= 10
        await screenshot(page, "dashboard-fleet")

        await page.select_option("#filters select[name=facility]", "plant-b")
        await page.wait_for_selector('#devices tr[data-device="sensor-101"]', state="detached")
        assert "facility=plant-b" in page.url
        assert await page.locator('#devices tr[data-device="sensor-202"]').count() == 1
        await screenshot(page, "dashboard-fleet-filtered")
        await page.goto(stack.url + "/")
        await page.wait_for_selector('#devices tr[data-device="sensor-101"]')

        # -- device chart: the hour InfluxDB holds -------------------------------------------
        await page.click('#devices tr[data-device="sensor-101"] a')
        await page.wait_for_selector('#chart[data-state="loaded"]')
        chart = page.locator("#chart")
        assert await chart.get_attribute("data-sources") == "influxdb"
        points = _points(await chart.get_attribute("data-points"))
        bucket = int(await chart.get_attribute("data-bucket-ms") or 0)
        assert bucket == 10_000
        start = int(await chart.get_attribute("data-start-ms") or 0)
        expected = {r.ts_ms - r.ts_ms % bucket: r.value for r in stack.hot
                    if r.ts_ms >= start - start % bucket}
        assert len(expected) >= 45
        # each written reading is one bucket: min = max = mean = p95 = the value
        assert {p[0]: p[3] for p in points} == expected
        assert all(p[1] == p[2] == p[3] == p[4] and p[5] == 1 for p in points)
        assert await page.locator("#chart canvas").count() >= 1  # uPlot drew
        await screenshot(page, "dashboard-device")

        # -- zoom out to 30 days: the archive before the boundary, InfluxDB after -----------
        await page.click('button[data-range="2592000000"]')
        await page.wait_for_selector('#chart[data-sources="archive,influxdb"]'
                                     '[data-state="loaded"]')
        points = _points(await chart.get_attribute("data-points"))
        bucket = int(await chart.get_attribute("data-bucket-ms") or 0)
        assert sum(p[5] for p in points) == len(stack.cold) + len(stack.hot)
        cold_buckets: dict[int, list[float]] = {}
        for r in stack.cold:
            cold_buckets.setdefault(r.ts_ms - r.ts_ms % bucket, []).append(r.value)
        by_t = {p[0]: p for p in points}
        for t, values in cold_buckets.items():
            assert by_t[t][1] == min(values) and by_t[t][2] == max(values)
            assert by_t[t][3] == pytest.approx(sum(values) / len(values))
        hot_sum = sum(r.value for r in stack.hot)
        chart_hot = sum(p[3] * p[5] for t, p in by_t.items() if t not in cold_buckets)
        assert chart_hot == pytest.approx(hot_sum)
        await screenshot(page, "dashboard-device-30d")

        # drag across the chart: zoom in to a finer bucket
        box = await page.locator("#chart .u-over").bounding_box()
        assert box is not None
        await page.mouse.move(box["x"] + box["width"] * 0.97, box["y"] + 40)
        await page.mouse.down()
        await page.mouse.move(box["x"] + box["width"] - 2, box["y"] + 40, steps=5)
        await page.mouse.up()
        await wait_js(page, f"Number(document.querySelector('#chart').dataset.bucketMs) < "
                            f"{bucket} && document.querySelector('#chart').dataset.state === "
                            "'loaded'")

        # -- alerts: acknowledge, then a new one arrives live --------------------------------
        await page.click("nav a[data-nav=alerts]")
        row = page.locator('#active-alerts tr[data-alert-id="gw-1/overheat:sensor-101"]')
        await row.wait_for()
        assert await row.get_attribute("data-state") == "firing"
        assert await page.locator("#alert-count").inner_text() == "1"
        await screenshot(page, "dashboard-alerts")
        await row.locator("button.ack").click()
        await page.wait_for_selector(
            '#active-alerts tr[data-alert-id="gw-1/overheat:sensor-101"]'
            '[data-state="acknowledged"]')
        assert f"acknowledged by {USER} (dashboard)" in await row.inner_text()
        assert stack.service.store.acks()[0].by == USER  # recorded cloud-side

        book = AlertBook()
        fresh = book.fire(rule_id="low_battery", kind="threshold", subject="sensor-202",
                          severity="warning", message="sensor-202 battery 3.10 V",
                          values={}, now_ms=int(time.time() * 1000), cooldown_ms=0)
        loaded_at = await page.evaluate("performance.timeOrigin")
        await stack.bus.producer().send_batch(stack.alerts_topic,
                                              [alert_record("gw-2", 5, fresh)])
        live = page.locator('#active-alerts tr[data-alert-id="gw-2/low_battery:sensor-202"]')
        await live.wait_for(timeout=15_000)
        assert await page.evaluate("performance.timeOrigin") == loaded_at  # no reload
        assert await live.get_attribute("data-state") == "firing"
        assert await page.locator("#alert-count").inner_text() == "1"  # one unacknowledged
        recent = page.locator('#recent-alerts tr[data-alert-id="gw-2/low_battery:sensor-202"]')
        assert await recent.count() == 1
        await screenshot(page, "dashboard-alerts-live")

        # -- logout: the data is gone with the session --------------------------------------
        await page.click("#logout")
        await page.wait_for_selector("#login-form")
        status = await page.evaluate("fetch('/api/fleet').then(r => r.status)")
        assert status == 401
        assert not errors, errors


async def test_without_a_session_every_data_route_is_401(stack: Stack) -> None:
    assert stack.service.http is not None
    routes = []
    for route in stack.service.http.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD" or path in (
                "/login", "/logout", "/healthz", "/metrics"):
            continue
        routes.append((route.method, path.replace("{device_id}", "sensor-101")))
    assert len(routes) >= 11
    async with aiohttp.ClientSession() as client:
        for method, path in routes:
            async with client.request(method, stack.url + path, allow_redirects=False,
                                      json={"id": "gw-1/overheat:sensor-101"}
                                      if method == "POST" else None) as resp:
                assert resp.status == 401, (method, path)
                assert "sensor-101 max" not in await resp.text()
    assert stack.service.store.acks() == []


def _grafana_queries() -> list[tuple[str, str]]:
    dash = json.loads((GRAFANA / "fieldlink-fleet.json").read_text())
    out = [(p["title"], t["query"]) for p in dash["panels"] for t in p.get("targets", [])]
    out += [(a["name"], a["query"]) for a in dash["annotations"]["list"] if "query" in a]
    out += [(v["name"], v["query"]) for v in dash["templating"]["list"]]
    return out


def _substitute(q: str) -> str:
    values = {"measurement": "(temperature|humidity)", "facility": ".*", "line": ".*",
              "device": "(sensor-101|sensor-202)", "timeFilter": "time > now() - 1d",
              "__interval": "1m"}
    return re.sub(r"\$(\w+)", lambda m: values.get(m[1], m[0]), q)


async def test_grafana_queries_run_against_influxd(stack: Stack) -> None:
    results = {}
    for title, q in _grafana_queries():
        [series] = await stack.influx.query(_substitute(q))  # raises on an InfluxQL error
        results[title] = series
    seen = {s.tags.get("gateway") for s in results["Gateways: last reading"]}
    assert seen == {"gw-1", "gw-2"}
    assert results["Gateway status (backlog, drops, versions)"][0].values[0][1] == 42
    assert any(s.values for s in results["$device: value"])
    assert results["fieldlink alerts"][0].values[0][1] == "sensor-101 max 95.0 C > 90"
    assert {v[1] for s in results["device"] for v in s.values} >= {"sensor-101"}
    assert results["measurement"][0].values  # SHOW MEASUREMENTS lists them

