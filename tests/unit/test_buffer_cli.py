"""`fieldlink gateway queue …` on real buffer files."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from edge.cli import main as fieldlink
from edge.model import Event, Reading
from edge.testing import FakeClock
from gateway.buffer import Buffer, BufferSettings, Store, claims, deadletters
from gateway.buffer.cli import main, parse_duration

T0 = 1_705_322_445_000


def reading(i: int, rx: int = T0) -> Reading:
    return Reading(device_id=f"sensor_{i % 4}", ts_ms=T0 + i, value=float(i), seq=i,
                   received_ms=rx)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A buffer with 10 old raw readings, 5 fresh ones, an alert, a claim, dead letters."""
    path = str(tmp_path / "buffer.db")
    clock = FakeClock(wall_ms=T0)
    store = Store.open(BufferSettings(path=path), clock)
    try:
        with store.transaction():
            store.insert_readings([[reading(i, rx=T0 - 7_200_000) for i in range(10)]], T0)
            store.insert_readings([[reading(100 + i) for i in range(5)]], T0)
            store.insert_events([Event(kind="alert", key=b"k" * 16, ts_ms=T0,
                                       device_id="sensor_1", body={"rule": "hot"})], T0)
            deadletters.add(store, [
                (b"\xffbad", "mqtt", "10.0.0.7:41000", "malformed_payload", "not JSON"),
                (b"who?", "coap", "10.0.0.8", "unknown_device", "")], T0)
            store.record_settings()
        with store.transaction(fsync=True):
            # the uplink holds the alert and the two oldest readings in flight
            claims.make_claim(store, 3, 0.0, T0)
    finally:
        store.close()
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out, clock=FakeClock(wall_ms=T0))
    return code, out.getvalue()


def test_stats_text_and_json(db: str) -> None:
    code, text = run("stats", "--db", db)
    assert code == 0
    assert "rows: raw 15, aggregate 0, alert 1" in text
    assert "claimed 3 in 1 claim(s)" in text
    assert "malformed_payload 1" in text and "of 256.0 MiB" in text
    code, text = run("stats", "--db", db, "--json")
    obj = json.loads(text)
    assert obj["rows"] == {"raw": 15, "aggregate": 0, "alert": 1}
    assert obj["claims_in_flight"] == 1 and obj["claimed_rows"] == 3
    assert obj["dead_letters"] == {"malformed_payload": 1, "unknown_device": 1}
    assert obj["counters"]["appended.raw"] == 15
    assert obj["disk_bytes"] == obj["db_bytes"] + obj["wal_bytes"] > 0


def test_peek_prints_json_lines_in_send_order(db: str) -> None:
    code, text = run("peek", "--db", db, "-n", "3")
    assert code == 0
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["class"] for r in rows] == ["alert", "raw", "raw"]
    assert rows[0]["body"] == {"rule": "hot"} and rows[0]["claim"] is not None
    assert rows[1]["seq"] == 0 and rows[1]["claim"] == rows[0]["claim"]
    assert rows[2]["claim"] is not None
    assert rows[1]["key"] == reading(0, rx=T0 - 7_200_000).idempotency_key().hex()
    code, text = run("peek", "--db", db, "-n", "50", "--class", "raw")
    assert len(text.splitlines()) == 15


def test_replay_deadletter_exports_and_deletes(db: str, tmp_path: Path) -> None:
    code, text = run("replay-deadletter", "--db", db, "--reason", "unknown_device")
    assert code == 0
    (only,) = [json.loads(line) for line in text.splitlines()]
    assert base64.b64decode(only["raw_b64"]) == b"who?" and only["source"] == "coap"
    out_file = tmp_path / "dl.jsonl"
    code, _ = run("replay-deadletter", "--db", db, "--out", str(out_file), "--delete")
    assert code == 0
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [base64.b64decode(e["raw_b64"]) for e in exported] == [b"\xffbad", b"who?"]
    assert exported[0]["peer"] == "10.0.0.7:41000" and exported[0]["detail"] == "not JSON"
    obj = json.loads(run("stats", "--db", db, "--json")[1])
    assert obj["dead_letter_rows"] == 0
    assert obj["dead_letters_dropped"] == {"exported": 2}


def test_purge_needs_yes_and_spares_claimed_rows(db: str) -> None:
    code, text = run("purge", "--db", db, "--class", "raw")
    assert code == 1 and "would purge 13" in text
    assert json.loads(run("stats", "--db", db, "--json")[1])["rows"]["raw"] == 15
    code, text = run("purge", "--db", db, "--class", "raw", "--older-than", "1h", "--yes")
    assert code == 0 and "purged 8" in text  # 10 old ones, minus the 2 in flight
    obj = json.loads(run("stats", "--db", db, "--json")[1])
    assert obj["rows"]["raw"] == 7 and obj["claimed_rows"] == 3
    assert obj["dropped"] == {"purged": {"raw": 8}}
    code, text = run("purge", "--db", db, "--all", "--yes")
    assert code == 0 and "purged 5" in text
    obj = json.loads(run("stats", "--db", db, "--json")[1])
    assert obj["rows"] == {"raw": 2, "aggregate": 0, "alert": 1}  # the claim is untouched


def test_usage_errors(tmp_path: Path, db: str) -> None:
    assert run("stats", "--db", str(tmp_path / "missing.db"))[0] == 2
    assert not (tmp_path / "missing.db").exists()  # never created by the CLI
    assert run("purge", "--db", db, "--yes")[0] == 2
    assert run("stats", "--config", str(tmp_path / "nope.yaml"))[0] == 2
    assert run("bogus")[0] == 2
    assert run("--help")[0] == 0
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")
    assert parse_duration("15m") == 900 and parse_duration("500ms") == 0.5


def test_db_from_the_gateway_config(tmp_path: Path, db: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"buffer:\n  path: {db}\n  max_bytes: 1000000\n")
    code, text = run("stats", "--config", str(cfg), "--json")
    assert code == 0 and json.loads(text)["rows"]["raw"] == 15


def test_registered_under_fieldlink_gateway(capsys) -> None:
    assert fieldlink(["gateway", "--help"]) == 0
    assert "queue" in capsys.readouterr().out
    assert fieldlink(["gateway", "queue", "--help"]) == 0
    assert "replay-deadletter" in capsys.readouterr().out


async def test_purge_next_to_a_running_gateway(tmp_path: Path) -> None:
    settings = BufferSettings(path=str(tmp_path / "b.db"), commit_interval_ms=0)
    clock = FakeClock(wall_ms=T0)
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i) for i in range(20)])
        code, _ = run("purge", "--db", settings.path, "--class", "raw", "--yes")
        assert code == 0
        # the writer notices the other process's commit and reloads its mirror
        await buf.append([reading(100)])
        st = buf.stats()
        assert st.rows["raw"] == 1
        assert st.dropped == {"purged": {"raw": 20}} and st.appended["raw"] == 21
