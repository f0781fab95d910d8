"""The dashboard service over real HTTP on 127.0.0.1: login, sessions, CSRF, the 401 rule for
every data route, the API, acknowledgements and the live stream.

InfluxDB is replaced by a fake at the reader seam (`WebService(influx=...)`); the bus is the
real embedded bus (SQLite) in a temporary directory.  tests/integration/test_dashboard_browser
runs the same service against a real influxd, in a real browser.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud.bus.base import TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.errors import SinkUnavailable
from cloud.web.queries import Series
from cloud.web.service import CSP, WebService, WebSettings
from cloud.web.users import User, hash_password, save_users
from edge.codec import Batch, encode_batch
from edge.rules.alerts import AlertBook
from edge.testing import FakeClock

ALERTS = "fieldlink.alerts"
PASSWORD = "correct-horse-battery"
NOW = FakeClock().now_ms()


class FakeInflux:
    """The InfluxReader interface with canned answers (one device, one gateway)."""

    def __init__(self) -> None:
        self.down = False
        self.queries: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise SinkUnavailable("InfluxDB at http://127.0.0.1:1 is unreachable")

    async def measurements(self) -> list[str]:
        self._check()
        return ["temperature", "window_temperature", "alerts"]

    async def reading_measurements(self) -> list[str]:
        return [m for m in await self.measurements() if m == "temperature"]

    async def tag_values(self, key: str, measurements: list[str]) -> list[str]:
        return ["gw-1", "gw-old"]

    async def healthy(self) -> tuple[bool, str]:
        return (not self.down, "fake")

    async def query(self, q: str, params: dict[str, Any] | None = None) -> list[list[Series]]:
        self._check()
        self.queries.append(q)
        tags = {"device_id": "sensor-1", "gateway": "gw-1", "facility": "plant-a",
                "line": "l1", "zone": "z1", "unit": "C"}
        other = {**tags, "device_id": "sensor-2", "facility": "plant-b", "line": "l2"}
        if 'last("value")' in q:
            return [[Series("temperature", tags, ["time", "value"], [[NOW - 1000, 21.5]]),
                     Series("temperature", other, ["time", "value"], [[NOW - 2000, 19.0]])],
                    [Series("temperature", tags, ["time", "battery"], [[NOW - 1000, 3.61]])],
                    [Series("temperature", tags, ["time", "quality"], [[NOW - 1000, "good"]])]]
        if 'AS "v"' in q:
            return [[Series("temperature", {"device_id": "sensor-1"}, ["time", "v"],
                            [[NOW - 120_000, 21.0], [NOW - 60_000, 21.5]])]]
        if "percentile" in q:
            assert params is not None and params["device_id"] == "sensor-1"
            return [[Series("temperature", {}, ["time", "min", "max", "mean", "p95", "count"],
                            [[NOW - 60_000, 20.0, 23.0, 21.5, 22.9, 6]])]]
        raise AssertionError(f"unexpected query {q}")


def alert_frame(gateway: str, seq: int, transitions: list[Any]) -> bytes:
    return encode_batch(Batch(gateway, seq, NOW, [], [t.to_event() for t in transitions]),
                        "none")


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    async with EmbeddedBus(tmp_path / "bus.sqlite3") as b:
        await b.ensure_topics([TopicSpec(ALERTS, 2)])
        yield b


def make_settings(tmp_path: Path, **kw: Any) -> WebSettings:
    users = tmp_path / "users.json"
    if not users.exists():
        save_users(users, {"alice": User("alice", hash_password(PASSWORD)),
                           "bob": User("bob", hash_password(PASSWORD))})
    base: dict[str, Any] = dict(host="127.0.0.1", port=0, session_ttl_s=3600,
                                users_file=users, store_path=tmp_path / "web.sqlite3",
                                alerts_topic=ALERTS, known_gateways=("gw-1", "gw-new"),
                                retention_ms=7 * 86_400_000, archive_root=None,
                                offline_after_s=60, housekeeping_s=3600)
    base.update(kw)
    return WebSettings(**base)


class Env:
    def __init__(self, service: WebService, clock: FakeClock, influx: FakeInflux) -> None:
        self.service = service
        self.clock = clock
        self.influx = influx
        self.url = service.url


@pytest.fixture
async def env(tmp_path: Path, bus: EmbeddedBus) -> AsyncIterator[Env]:
    clock = FakeClock()
    influx = FakeInflux()
    async with WebService(make_settings(tmp_path), bus, clock=clock, influx=influx) as svc:
        yield Env(svc, clock, influx)


def _client() -> aiohttp.ClientSession:
    # a jar that keeps cookies of 127.0.0.1 (aiohttp ignores IP hosts by default)
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(client: aiohttp.ClientSession, url: str, user: str = "alice",
                password: str = PASSWORD, next_path: str = "/") -> aiohttp.ClientResponse:
    async with client.get(f"{url}/login") as resp:
        text = await resp.text()
    token = re.search(r'name="csrf" value="([^"]+)"', text)
    assert token is not None
    return await client.post(f"{url}/login", data={
        "username": user, "password": password, "csrf": token[1], "next": next_path},
        allow_redirects=False)


async def csrf_of(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(f"{url}/api/session") as resp:
        assert resp.status == 200
        return str((await resp.json())["csrf"])


# -- the 401 rule --------------------------------------------------------------------------

PUBLIC = {"/login", "/logout", "/healthz", "/metrics"}


def data_routes(service: WebService) -> list[tuple[str, str]]:
    """(method, path) of every route but login/logout, health, metrics and static files."""
    out = []
    assert service.http is not None
    for route in service.http.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or path in PUBLIC or route.method == "HEAD":
            continue  # static resources have a "prefix", not a path
        out.append((route.method, path.replace("{device_id}", "sensor-1")))
    return out


async def test_every_data_route_answers_401_without_a_session(env: Env) -> None:
    routes = data_routes(env.service)
    paths = {p for _, p in routes}
    # the list is the app's own: a route added later is checked without editing this test
    assert {"/", "/alerts", "/devices/sensor-1", "/api/fleet", "/api/devices",
            "/api/devices/sensor-1", "/api/devices/sensor-1/series", "/api/alerts",
            "/api/alerts/ack", "/api/alerts/stream", "/api/session"} <= paths
    async with _client() as client:
        for cookie in (None, "forged-token"):
            if cookie:
                client.cookie_jar.update_cookies({"fieldlink_session": cookie})
            for method, path in routes:
                async with client.request(method, env.url + path, json={} if method == "POST"
                                          else None, allow_redirects=False) as resp:
                    body = await resp.text()
                    assert resp.status == 401, (method, path, resp.status)
                    assert "21.5" not in body and "sensor-1" not in body.replace(
                        "/devices/sensor-1", "")
                    if path.startswith("/api/"):
                        assert (await resp.json()) == {"error": "login required"}
                    else:
                        assert 'action="/login"' in body  # the login form, not data
    assert env.influx.queries == []  # nothing was read for anyone


async def test_static_health_and_metrics_need_no_login(env: Env) -> None:
    async with _client() as client:
        for path in ("/static/app.js", "/static/vendor/uPlot.iife.min.js", "/healthz",
                     "/metrics", "/login"):
            async with client.get(env.url + path) as resp:
                assert resp.status == 200, path
        async with client.get(env.url + "/static/../users.json") as resp:
            assert resp.status in (403, 404)


# -- login, sessions, CSRF -----------------------------------------------------------------


async def test_login_sets_a_strict_httponly_cookie_and_redirects(env: Env) -> None:
    async with _client() as client:
        resp = await login(client, env.url, next_path="/alerts")
        assert resp.status == 303 and resp.headers["Location"] == "/alerts"
        cookie = [h for h in resp.headers.getall("Set-Cookie")
                  if h.startswith("fieldlink_session=")][0]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Max-Age=3600" in cookie and "Secure" not in cookie  # plain HTTP here
        async with client.get(env.url + "/api/session") as r:
            assert (await r.json())["user"] == "alice"
        async with client.get(env.url + "/alerts") as r:
            page = await r.text()
            assert r.status == 200 and 'name="csrf-token"' in page
            assert r.headers["Content-Security-Policy"] == CSP


async def test_login_refuses_bad_password_missing_token_and_foreign_next(env: Env) -> None:
    async with _client() as client:
        resp = await login(client, env.url, password="wrong-password")
        assert resp.status == 401 and "Wrong user name or password" in await resp.text()
        resp = await login(client, env.url, user="mallory")
        assert resp.status == 401
        resp = await client.post(env.url + "/login", data={"username": "alice",
                                                          "password": PASSWORD,
                                                          "csrf": "guessed"},
                                 allow_redirects=False)
        assert resp.status == 403
        resp = await login(client, env.url, next_path="//evil.example/")
        assert resp.status == 303 and resp.headers["Location"] == "/"


async def test_failed_logins_are_throttled(env: Env) -> None:
    async with _client() as client:
        for _ in range(5):
            assert (await login(client, env.url, password="nope-nope")).status == 401
        resp = await login(client, env.url)  # even the right password, for a while
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        env.clock.advance(301)
        assert (await login(client, env.url)).status == 303


async def test_session_expires_after_ttl(env: Env) -> None:
    async with _client() as client:
        await login(client, env.url)
        async with client.get(env.url + "/api/fleet") as r:
            assert r.status == 200
        env.clock.advance(3601)
        async with client.get(env.url + "/api/fleet") as r:
            assert r.status == 401


async def test_posts_need_the_csrf_token_and_our_origin(env: Env) -> None:
    async with _client() as client:
        await login(client, env.url)
        token = await csrf_of(client, env.url)
        body = {"id": "gw-1/nothing:here"}
        async with client.post(env.url + "/api/alerts/ack", json=body) as r:
            assert r.status == 403
        async with client.post(env.url + "/api/alerts/ack", json=body,
                               headers={"X-CSRF-Token": "wrong"}) as r:
            assert r.status == 403
        async with client.post(env.url + "/api/alerts/ack", json=body, headers={
                "X-CSRF-Token": token, "Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with client.post(env.url + "/api/alerts/ack", json=body, headers={
                "X-CSRF-Token": token, "Origin": env.url}) as r:
            assert r.status == 404  # past the guard: there is no such alert


async def test_logout_ends_the_session_and_needs_csrf(env: Env) -> None:
    async with _client() as client:
        await login(client, env.url)
        token = await csrf_of(client, env.url)
        async with client.post(env.url + "/logout", data={}, allow_redirects=False) as r:
            assert r.status == 403
        async with client.post(env.url + "/logout", data={"csrf": token},
                               allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with client.get(env.url + "/api/session") as r:
            assert r.status == 401
    assert env.service.store.session_count() == 0


async def test_removed_user_loses_the_session(env: Env, tmp_path: Path) -> None:
    async with _client() as client:
        await login(client, env.url, user="bob")
        save_users(tmp_path / "users.json", {"alice": User("alice", hash_password(PASSWORD))})
        assert env.service.users is not None
        env.service.users.refresh()
        async with client.get(env.url + "/api/session") as r:
            assert r.status == 401


async def test_secure_flag_when_configured(tmp_path: Path, bus: EmbeddedBus) -> None:
    settings = make_settings(tmp_path, secure_cookies=True)
    async with WebService(settings, bus, influx=FakeInflux()) as svc, _client() as client:
        async with client.get(f"{svc.url}/login") as resp:
            assert "Secure" in resp.headers["Set-Cookie"]
            token = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert token is not None
        # a client honouring Secure would not send it over plain HTTP: send it by hand
        resp = await client.post(f"{svc.url}/login", data={
            "username": "alice", "password": PASSWORD, "csrf": token[1]},
            headers={"Cookie": f"fieldlink_login={token[1]}"}, allow_redirects=False)
        assert resp.status == 303
        cookie = [h for h in resp.headers.getall("Set-Cookie")
                  if h.startswith("fieldlink_session=")][0]
        assert "Secure" in cookie and "HttpOnly" in cookie


async def test_sessions_survive_a_restart(tmp_path: Path, bus: EmbeddedBus) -> None:
    settings = make_settings(tmp_path)
    async with _client() as client:
        async with WebService(settings, bus, influx=FakeInflux()) as svc:
            await login(client, svc.url)
            port = svc.http.port  # type: ignore[union-attr]
        async with WebService(WebSettings(**{**settings.__dict__, "port": port}), bus,
                              influx=FakeInflux()) as svc:
            async with client.get(svc.url + "/api/session") as r:
                assert r.status == 200


# -- data ----------------------------------------------------------------------------------


async def test_fleet_and_device_table(env: Env) -> None:
    async with _client() as client:
        await login(client, env.url)
        async with client.get(env.url + "/api/fleet") as r:
            fleet = await r.json()
            assert r.headers["Cache-Control"] == "no-store"
        by = {g["gateway"]: g for g in fleet["gateways"]}
        assert set(by) == {"gw-1", "gw-new", "gw-old"}
        assert by["gw-1"]["online"] and by["gw-1"]["devices"] == 2
        assert by["gw-1"]["last_seen_ms"] == NOW - 1000
        assert not by["gw-new"]["online"] and by["gw-new"]["last_seen_ms"] is None
        assert by["gw-1"]["backlog_rows"] is None  # no status record: not reported
        async with client.get(env.url + "/api/devices") as r:
            table = await r.json()
        assert [d["device_id"] for d in table["devices"]] == ["sensor-1", "sensor-2"]
        d1 = table["devices"][0]
        assert (d1["value"], d1["unit"], d1["battery"], d1["quality"]) == \
            (21.5, "C", 3.61, "good")
        assert d1["sparkline"] == [[NOW - 120_000, 21.0], [NOW - 60_000, 21.5]]
        assert table["options"]["facility"] == ["plant-a", "plant-b"]
        async with client.get(env.url + "/api/devices?facility=plant-b") as r:
            table = await r.json()
        assert [d["device_id"] for d in table["devices"]] == ["sensor-2"]
        async with client.get(env.url + "/api/devices/sensor-1/series?start_ms="
                              f"{NOW - 3_600_000}&end_ms={NOW}") as r:
            chart = await r.json()
        assert chart["measurement"] == "temperature" and chart["sources"] == ["influxdb"]
        assert chart["points"] == [[NOW - 60_000, 20.0, 23.0, 21.5, 22.9, 6]]
        for bad in ("start_ms=x", f"start_ms={NOW}&end_ms={NOW - 1}"):
            async with client.get(env.url + "/api/devices/sensor-1/series?" + bad) as r:
                assert r.status == 400
        async with client.get(env.url + "/api/devices/unknown/series") as r:
            assert r.status == 404


async def test_store_down_is_503_with_the_store_named(env: Env) -> None:
    async with _client() as client:
        await login(client, env.url)
        env.influx.down = True
        env.service.api.fleet._cached = None  # type: ignore[union-attr]
        async with client.get(env.url + "/api/fleet") as r:
            assert r.status == 503 and (await r.json())["store"] == "influxdb"
        async with client.get(env.url + "/healthz") as r:
            assert r.status == 503


# -- alerts --------------------------------------------------------------------------------


async def _wait_for(predicate: Any, within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {within_s} s")


async def test_alerts_from_the_bus_ack_and_restart(tmp_path: Path, bus: EmbeddedBus) -> None:
    book = AlertBook()
    fired = book.fire(rule_id="overheat", kind="threshold", subject="sensor-1",
                      severity="critical", message="sensor-1 above 80 C", values={"v": 85.0},
                      now_ms=NOW, cooldown_ms=0)
    await bus.producer().send_batch(ALERTS, [(b"sensor-1", alert_frame("gw-1", 1, [fired]),
                                              [("fl-gateway", b"gw-1")])])
    await bus.producer().send_batch(ALERTS, [(b"x", b"not a frame", [])])
    settings = make_settings(tmp_path)
    async with _client() as client:
        async with WebService(settings, bus, influx=FakeInflux()) as svc:
            assert svc.feed is not None
            await _wait_for(lambda: svc.feed.caught_up.is_set())
            assert svc.feed.malformed_records == 1
            await login(client, svc.url)
            async with client.get(svc.url + "/api/alerts") as r:
                body = await r.json()
            assert body["live"] and [a["id"] for a in body["active"]] == \
                ["gw-1/overheat:sensor-1"]
            token = await csrf_of(client, svc.url)
            headers = {"X-CSRF-Token": token}
            async with client.post(svc.url + "/api/alerts/ack",
                                   json={"id": "gw-1/overheat:sensor-1"},
                                   headers=headers) as r:
                assert r.status == 200
                acked = (await r.json())["acknowledged"]
            assert acked["cloud_ack"]["by"] == "alice" and acked["acknowledged"]
            async with client.post(svc.url + "/api/alerts/ack",
                                   json={"id": "gw-1/overheat:sensor-1"},
                                   headers=headers) as r:
                assert r.status == 409
            async with client.post(svc.url + "/api/alerts/ack", json=["x"],
                                   headers=headers) as r:
                assert r.status == 400
            async with client.get(svc.url + "/api/fleet") as r:
                fleet = {g["gateway"]: g for g in (await r.json())["gateways"]}
            assert fleet["gw-1"]["alerts_firing"] == 0
            port = svc.http.port  # type: ignore[union-attr]
        # a new process rebuilds the board from the topic and keeps the cloud ack
        async with WebService(WebSettings(**{**settings.__dict__, "port": port}), bus,
                              influx=FakeInflux()) as svc:
            assert svc.feed is not None
            await _wait_for(lambda: len(svc.board) == 1)
            async with client.get(svc.url + "/api/alerts") as r:
                [alert] = (await r.json())["active"]
            assert alert["cloud_ack"]["by"] == "alice"


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    event = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event is not None:
            yield event, json.loads(line[6:])
            event = None


async def test_live_stream_sends_snapshot_then_new_alerts(env: Env, bus: EmbeddedBus) -> None:
    assert env.service.feed is not None
    await _wait_for(lambda: env.service.feed.caught_up.is_set())  # type: ignore[union-attr]
    book = AlertBook()
    async with _client() as client:
        await login(client, env.url)
        async with client.get(env.url + "/api/alerts/stream") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = _events(resp)
            kind, snapshot = await anext(events)
            assert kind == "snapshot" and snapshot["active"] == []
            fired = book.fire(rule_id="low_battery", kind="threshold", subject="sensor-9",
                              severity="warning", message="battery low", values={},
                              now_ms=NOW, cooldown_ms=0)
            await bus.producer().send_batch(ALERTS, [(b"sensor-9",
                                                      alert_frame("gw-2", 7, [fired]), [])])
            async with asyncio.timeout(10):
                kind, update = await anext(events)
            assert kind == "update" and update["id"] == "gw-2/low_battery:sensor-9"
            assert update["alert"]["state"] == "firing"
            assert update["transition"]["transition"] == "firing"
            resolved = book.resolve("low_battery:sensor-9", NOW + 1, "cleared")
            await bus.producer().send_batch(ALERTS, [(b"sensor-9",
                                                      alert_frame("gw-2", 8, [resolved]), [])])
            async with asyncio.timeout(10):
                kind, update = await anext(events)
            assert update["alert"] is None and update["transition"]["transition"] == "resolved"


# -- the command -----------------------------------------------------------------------------


async def test_command_serves_and_stops_on_sigterm_with_a_stream_open(tmp_path: Path) -> None:
    import signal
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    save_users(tmp_path / "users.json", {"alice": User("alice", hash_password(PASSWORD))})
    (tmp_path / "cloud.yaml").write_text(f"""
cloud: {{data_dir: {tmp_path / 'data'}}}
influxdb: {{url: "http://127.0.0.1:9"}}
web: {{port: {port}, users_file: users.json}}
logging: {{level: warning}}
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "cloud", "web", "-c", str(tmp_path / "cloud.yaml"),
        stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with _client() as client:
            for _ in range(200):
                try:
                    async with client.get(url + "/login") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the dashboard did not come up")
            assert (await login(client, url)).status == 303
            async with client.get(url + "/api/fleet") as r:
                assert r.status == 503  # InfluxDB is down: said so, not a crash
            async with client.get(url + "/api/alerts/stream") as stream:
                assert (await anext(_events(stream)))[0] == "snapshot"
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(15):
                    rc = await proc.wait()
                    rest = await stream.content.read()  # the stream ended with the process
            assert rc == 0 and rest.strip() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
