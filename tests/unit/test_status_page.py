"""The gateway status page: the pure snapshot, and the routes over HTTP on 127.0.0.1 with a
real buffer and a real credentials file (operator accounts, HTTP Basic)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.buffer import Buffer, BufferSettings
from gateway.http import GatewayHttp
from gateway.pipeline import PipelineStats
from gateway.status import Parts, RateMeter, status_body, status_routes
from gateway.status.snapshot import uplink_state
from gateway.uplink.stats import UplinkStats

NOW = 1_705_322_445_000


# -- pure ----------------------------------------------------------------------------------


def test_rate_meter() -> None:
    m = RateMeter(window_ms=10_000)
    assert m.update(100, NOW) is None
    assert m.update(150, NOW + 5000) == 10.0
    assert m.update(250, NOW + 10_000) == 15.0  # (250 - 100) / 10 s
    assert m.update(450, NOW + 20_000) == 20.0  # base moves to the sample 10 s back
    assert m.update(10, NOW + 21_000) is None  # the counter restarted
    assert m.update(20, NOW + 22_000) == 10.0


def test_uplink_state() -> None:
    assert uplink_state(UplinkStats()) == "up"
    assert uplink_state(UplinkStats(uplink_down_since_ms=NOW)) == "down"
    assert uplink_state(UplinkStats(circuit_open=True, circuit_state="open")) == "circuit open"
    assert uplink_state(UplinkStats(last_status=401, uplink_down_since_ms=NOW)) == "refused"


def test_status_body_sections() -> None:
    pipeline = PipelineStats()
    pipeline.readings.update({"mqtt": 40, "coap": 2})
    pipeline.rejected.update({"bad_json": 3})
    buffer = {"db_bytes": 30 * 2**20, "wal_bytes": 2 * 2**20, "max_bytes": 64 * 2**20,
              "rows": {"raw": 1200, "alert": 1}, "oldest_unsent_age_ms": 65_000,
              "dropped": {"evicted": {"raw": 7}}, "dead_letters": {"bad_json": 3},
              "dead_letter_rows": 3}
    parts = Parts(
        gateway_id="gw-7", buffer=buffer, pipeline=pipeline,
        mqtt={"clients_by_role": {"device": 12, "anonymous": 1, "operator": 1},
              "connections_open": 15},
        coap=None, serial=RuntimeError("port table broken"),
        uplink={"circuit_open": False, "circuit_state": "closed", "last_status": 200,
                "uplink_down_since_ms": None, "backlog_age_ms": 65_000, "batches_sent": 9},
        alerts_active=[{"dedup_key": "a:s", "rule_id": "a", "device_id": "s",
                        "severity": "critical", "message": "hot", "state": "acknowledged",
                        "fired_at_ms": NOW - 10, "acked_by": "ops"},
                       {"dedup_key": "b:s", "rule_id": "b", "device_id": "s",
                        "severity": "warning", "message": "wet", "state": "firing",
                        "fired_at_ms": NOW - 20, "acked_by": None}],
        dead_letters=[SimpleNamespace(id=1, t_ms=NOW - 5, source="mqtt", peer="10.0.0.9",
                                      reason="bad_json", detail="x" * 400, raw=b"{"),
                      SimpleNamespace(id=2, t_ms=NOW - 1, source="coap", peer="",
                                      reason="bad_json", detail="y", raw=b"[")])
    body = status_body(parts, NOW, RateMeter())
    assert body["gateway_id"] == "gw-7"
    assert body["sensors"]["mqtt"] == {"sensors": 13, "operators": 1, "connections": 15}
    assert body["sensors"]["coap"] == {"state": "disabled"}
    assert body["sensors"]["serial"] == {"error": "RuntimeError: port table broken"}
    assert body["readings"]["total"] == 42 and body["readings"]["per_s"] is None
    assert body["readings"]["rejected"] == {"bad_json": 3}
    assert body["buffer"]["fill"] == 0.5 and body["buffer"]["dropped"] == {"evicted": 7}
    assert body["buffer"]["oldest_unsent_age_ms"] == 65_000
    assert body["uplink"]["state"] == "up" and body["uplink"]["batches_sent"] == 9
    assert [a["dedup_key"] for a in body["alerts"]["active"]] == ["b:s", "a:s"]
    assert (body["alerts"]["firing"], body["alerts"]["acknowledged"]) == (1, 1)
    dls = body["dead_letters"]
    assert dls["by_reason"] == {"bad_json": 3} and [d["id"] for d in dls["recent"]] == [2, 1]
    assert len(dls["recent"][1]["detail"]) == 300 and "raw" not in dls["recent"][0]


def test_status_body_with_nothing_running() -> None:
    body = status_body(Parts(gateway_id="gw"), NOW, RateMeter())
    assert body["uplink"] == {"state": "disabled"} and body["buffer"] == {"state": "disabled"}
    assert body["alerts"] == {"state": "disabled"}
    assert body["dead_letters"] == {"by_reason": {}, "stored": None, "recent": []}


# -- routes --------------------------------------------------------------------------------


class FakeAlerts:
    class engine:  # noqa: N801 - mirrors AlertService.engine
        @staticmethod
        def active_alerts() -> list[dict[str, Any]]:
            return [{"dedup_key": "hot:s-1", "rule_id": "hot", "device_id": "s-1",
                     "severity": "critical", "message": "s-1 at 95 C", "state": "firing",
                     "fired_at_ms": NOW, "acked_by": None}]


class BrokenUplink:
    def stats(self) -> UplinkStats:
        raise RuntimeError("uplink stats broke")


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    async with Buffer(BufferSettings(path=str(tmp_path / "b.db"), commit_interval_ms=0)) as b:
        yield b


def gateway_like(buffer: Buffer, auth: Any) -> SimpleNamespace:
    pipeline = SimpleNamespace(stats=PipelineStats())
    pipeline.stats.readings["mqtt"] = 5
    return SimpleNamespace(
        buffer=buffer, pipeline=pipeline, auth=auth, mqtt=None, coap=None, serial=None,
        components={"alerts": FakeAlerts(), "uplink": BrokenUplink()},
        config=SimpleNamespace(gateway=SimpleNamespace(id="gw-test")))


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "creds.json"
    save_accounts(path, {"ops": Account("ops", "operator", hash_password("ops-password")),
                         "s-1": Account("s-1", "device", hash_password("dev-password"))})
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_operator_basic_auth(buffer: Buffer, credentials: Path) -> None:
    with Authenticator(credentials) as auth:
        http = GatewayHttp("127.0.0.1", 0)
        http.add_routes(status_routes(gateway_like(buffer, auth)))
        async with http, aiohttp.ClientSession() as client:
            for path in ("/status", "/status.json"):
                async with client.get(http.url + path) as r:
                    assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
                async with client.get(http.url + path, headers=basic("ops", "wrong")) as r:
                    assert r.status == 401
                async with client.get(http.url + path,
                                      headers=basic("s-1", "dev-password")) as r:
                    assert r.status == 403
                async with client.get(http.url + path, headers={
                        "Authorization": "Basic !!notbase64"}) as r:
                    assert r.status == 401
            async with client.get(http.url + "/status.json",
                                  headers=basic("ops", "ops-password")) as r:
                assert r.status == 200
                body = await r.json()
            assert body["gateway_id"] == "gw-test"
            assert body["alerts"]["active"][0]["message"] == "s-1 at 95 C"
            assert body["uplink"] == {"error": "RuntimeError: uplink stats broke"}
            assert body["buffer"]["max_bytes"] > 0 and body["readings"]["total"] == 5


async def test_page_csp_allows_exactly_its_inline_code(buffer: Buffer) -> None:
    http = GatewayHttp("127.0.0.1", 0)
    http.add_routes(status_routes(gateway_like(buffer, None)))
    async with http, aiohttp.ClientSession() as client:
        async with client.get(http.url + "/status") as r:
            assert r.status == 200  # no credentials file: loopback clients only
            html = await r.text()
            csp = r.headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script[1].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp


async def test_without_credentials_only_loopback_is_served(buffer: Buffer) -> None:
    from gateway.status.routes import StatusPage

    page = StatusPage(gateway_like(buffer, None))
    local = SimpleNamespace(remote="127.0.0.1", headers={})
    remote = SimpleNamespace(remote="192.168.1.20", headers={})
    v6 = SimpleNamespace(remote="::1", headers={})
    assert await page.authorize(local) is None  # type: ignore[arg-type]
    assert await page.authorize(v6) is None  # type: ignore[arg-type]
    refused = await page.authorize(remote)  # type: ignore[arg-type]
    assert refused is not None and refused.status == 403


async def test_newest_dead_letters_are_shown(buffer: Buffer) -> None:
    for i in range(15):
        await buffer.dead_letter(b"\xff" * i, source="mqtt", reason="bad_json" if i % 2
                                 else "too_large", peer=f"10.0.0.{i}", detail=f"letter {i}")
    from gateway.status.routes import StatusPage

    page = StatusPage(gateway_like(buffer, None))
    body = await page.body()
    recent = body["dead_letters"]["recent"]
    assert [d["detail"] for d in recent] == [f"letter {i}" for i in range(14, 4, -1)]
    assert body["dead_letters"]["by_reason"] == {"bad_json": 7, "too_large": 8}
    await buffer.dead_letter(b"x", source="coap", reason="bad_cbor", detail="letter 15")
    body = await page.body()
    assert body["dead_letters"]["recent"][0]["detail"] == "letter 15"
