"""`fieldlink gateway alerts list / pending / ack` against a real alert state file and a
running alert service's HTTP routes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge.rules import parse_rules
from edge.testing import FakeClock
from gateway.alerts import AlertService, AlertSettings, WebhookTarget
from gateway.alerts import cli as alerts_cli
from gateway.alerts.testing import RecordingBroker, feed
from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.cli import COMMANDS
from gateway.http import GatewayHttp

T0 = 1_705_322_400_000
RULES = parse_rules({
    "version": 1,
    "windows": [{"id": "w1s", "kind": "tumbling", "size": "1s", "lateness": "100ms",
                 "idle_timeout": "200ms"}],
    "rules": [{"id": "overheat", "window": "w1s", "match": {"measurement": "temperature"},
               "condition": "max > 90", "clear": "max < 85", "severity": "critical",
               "message": "{device_id} max {max:.1f}"}],
})


def test_registered_under_fieldlink_gateway() -> None:
    assert COMMANDS["alerts"] == ("gateway.alerts.cli:main", "list / acknowledge alerts")


async def test_list_and_pending_read_the_state_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock(wall_ms=T0)
    down = WebhookTarget("http://127.0.0.1:9/hook", "generic", timeout_s=0.2)
    svc = AlertService(AlertSettings(state_path=tmp_path / "alerts.sqlite3", tick_s=None,
                                     webhooks=(down,), retry_base_s=0.05, retry_cap_s=0.1),
                       mqtt=RecordingBroker(), clock=clock, ruleset=RULES)
    db = str(tmp_path / "alerts.sqlite3")
    async with svc:
        await feed(svc, clock, 1.5, {"oven-1": 95.0, "oven-2": 60.0})
        await asyncio.sleep(0.3)                     # the webhook failed at least once
        # read-only, while the service runs
        assert await asyncio.to_thread(alerts_cli.main, ["list", "--db", db, "--json"]) == 0
        listing = json.loads(capsys.readouterr().out)
        assert [(a["rule_id"], a["subject"], a["state"]) for a in listing["active"]] == [
            ("overheat", "oven-1", "firing")]
        assert listing["recent"][0]["deliveries"]["mqtt"]["status"] == "delivered"
        assert await asyncio.to_thread(alerts_cli.main, ["pending", "--db", db, "--json"]) == 0
        pending = json.loads(capsys.readouterr().out)
        assert [(p["channel"], p["transition"]) for p in pending] == [(down.channel, "firing")]
        assert pending[0]["attempts"] >= 1 and pending[0]["error"]
        assert await asyncio.to_thread(alerts_cli.main, ["list", "--db", db]) == 0
        text = capsys.readouterr().out
        assert "1 active alert(s)" in text and "overheat:oven-1" in text
    assert alerts_cli.main(["list", "--db", str(tmp_path / "nope.sqlite3")]) == 2


async def test_ack_through_the_gateway_http_endpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    creds = tmp_path / "creds.json"
    save_accounts(creds, {"ops": Account("ops", "operator", hash_password("pw-ops"))})
    clock = FakeClock(wall_ms=T0)
    with Authenticator(creds) as auth:
        svc = AlertService(AlertSettings(state_path=tmp_path / "a.sqlite3", tick_s=None),
                           mqtt=RecordingBroker(), auth=auth, clock=clock, ruleset=RULES)
        http = GatewayHttp("127.0.0.1", 0)
        http.add_routes(svc.routes())
        async with svc, http:
            await feed(svc, clock, 1.5, {"oven-1": 95.0})
            monkeypatch.setenv("FIELDLINK_OPERATOR_PASSWORD", "pw-ops")
            argv = ["ack", "overheat:oven-1", "--user", "ops", "--url", http.url]
            assert await asyncio.to_thread(alerts_cli.main, argv) == 0
            assert "acknowledged overheat:oven-1 (by ops)" in capsys.readouterr().out
            assert await asyncio.to_thread(alerts_cli.main, argv) == 1     # already acked
            assert "HTTP 409" in capsys.readouterr().err
            monkeypatch.setenv("FIELDLINK_OPERATOR_PASSWORD", "wrong")
            assert await asyncio.to_thread(alerts_cli.main, argv) == 1
            assert "HTTP 401" in capsys.readouterr().err
    argv[-1] = http.url                              # the endpoint is gone now
    assert alerts_cli.main(argv) == 2
