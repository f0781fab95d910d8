"""Schema versions: a file written by an older fieldlink opens with the current code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest

from edge.model import Event, Reading
from edge.testing import FakeClock
from gateway.buffer import Buffer, BufferSettings, schema
from gateway.errors import BufferCorrupt

T0 = 1_705_322_445_000

# The version 1 schema exactly as fieldlink 0.1 created it (copied, not imported: the test must
# keep describing the old format even if the module changes).
V1_SQL = """
CREATE TABLE series (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, measurement TEXT NOT NULL,
    unit TEXT NOT NULL, facility TEXT, line TEXT, zone TEXT);
CREATE TABLE readings (
    id INTEGER PRIMARY KEY, dk BLOB NOT NULL, rx_ms INTEGER NOT NULL,
    series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value REAL NOT NULL, quality,
    battery REAL, seq INTEGER, sensor_ts_ms INTEGER, flags INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX readings_dk ON readings(dk);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, dk BLOB NOT NULL, prio INTEGER NOT NULL,
    rx_ms INTEGER NOT NULL, series INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    body BLOB NOT NULL);
CREATE UNIQUE INDEX events_dk ON events(dk);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE deadletter (
    id INTEGER PRIMARY KEY, t_ms INTEGER NOT NULL, source TEXT NOT NULL,
    peer TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, raw BLOB NOT NULL);
PRAGMA user_version = 1;
"""

READINGS = [Reading(device_id=f"sensor_{i % 3}", ts_ms=T0 + i, value=20.5 + i, seq=i,
                    unit="celsius", facility="factory_a", line="2", zone="paint",
                    quality=("good", "bad", "uncertain")[i % 3],
                    battery_voltage=None if i % 2 else 3.6, received_ms=T0 + i)
            for i in range(12)]
ALERT = Event(kind="alert", key=b"A" * 16, ts_ms=T0 + 5, device_id="sensor_1",
              body={"rule": "too_hot", "value": 91.0})


def write_v1_file(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_SQL)
    series: dict[tuple[str | None, ...], int] = {}
    for r in READINGS:
        skey = (r.device_id, r.measurement, r.unit, r.facility, r.line, r.zone)
        if skey not in series:
            series[skey] = conn.execute(
                "INSERT INTO series(device, measurement, unit, facility, line, zone)"
                " VALUES (?, ?, ?, ?, ?, ?)", skey).lastrowid  # type: ignore[assignment]
        dk = r.ts_ms.to_bytes(6, "big") + r.idempotency_key()
        conn.execute("INSERT INTO readings(dk, rx_ms, series, ts_ms, value, quality, battery,"
                     " seq, sensor_ts_ms, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (dk, r.received_ms, series[skey], r.ts_ms, r.value,
                      {"good": 0, "uncertain": 1, "bad": 2}[r.quality], r.battery_voltage,
                      r.seq, None, 0))
    sid = conn.execute("INSERT INTO series(device, measurement, unit) VALUES"
                       " ('sensor_1', 'alert', '')").lastrowid
    conn.execute("INSERT INTO events(dk, prio, rx_ms, series, ts_ms, body) VALUES"
                 " (?, 2, ?, ?, ?, ?)", (ALERT.ts_ms.to_bytes(6, "big") + ALERT.key, T0, sid,
                                         ALERT.ts_ms, msgpack.packb(ALERT.body)))
    conn.execute("INSERT INTO deadletter(t_ms, source, peer, reason, detail, raw) VALUES"
                 " (?, 'mqtt', '10.1.1.1:5000', 'malformed_payload', 'bad json', x'7b7b')",
                 (T0,))
    conn.executemany("INSERT INTO counters(name, value) VALUES (?, ?)",
                     [("appended.raw", 12), ("appended.alert", 1), ("duplicates.raw", 3),
                      ("deadletter.malformed_payload", 1), ("dropped.evicted.raw", 7)])
    conn.commit()
    conn.close()


async def test_a_v1_file_opens_with_its_data_intact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_v1_file(path)
    clock = FakeClock(wall_ms=T0 + 60_000)
    async with Buffer(BufferSettings(path=str(path)), clock=clock) as buf:
        st = buf.stats()
        assert st.schema_version == schema.SCHEMA_VERSION == 2
        assert st.rows == {"raw": 12, "aggregate": 0, "alert": 1}
        assert st.appended == {"raw": 12, "aggregate": 0, "alert": 1}
        assert st.duplicates["raw"] == 3 and st.dropped == {"evicted": {"raw": 7}}
        letters = await buf.dead_letters()
        assert [(d.reason, d.raw, d.peer) for d in letters] == \
            [("malformed_payload", b"{{", "10.1.1.1:5000")]
        # a redelivery of an old reading is still recognised
        assert (await buf.append([READINGS[3]])).duplicates == 1
        claim = await buf.claim(100)
        assert claim is not None
        assert claim.events == [ALERT]
        assert claim.readings == READINGS
        assert claim.seq == (T0 + 60_000) * 1000  # the sequence starts at the upgrade
        await buf.ack(claim)
        assert buf.stats().acked == {"raw": 12, "aggregate": 0, "alert": 1}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        # converted once so that free pages can be given back
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        conn.close()


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BufferCorrupt, match="newer"):
        schema.connect(BufferSettings(path=str(path)), now_ms=T0)


def test_a_failing_step_leaves_the_old_version(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "old.db"
    write_v1_file(path)

    def broken(conn: sqlite3.Connection, now_ms: int) -> None:
        conn.execute("ALTER TABLE events ADD COLUMN claim_id INTEGER")
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0], broken])
    with pytest.raises(Exception, match="disk I/O error"):
        schema.connect(BufferSettings(path=str(path)), now_ms=T0)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        assert "claim_id" not in cols  # the half-done step was rolled back
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 12
    finally:
        conn.close()


def test_fresh_and_upgraded_files_have_the_same_schema(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    write_v1_file(old)
    schema.connect(BufferSettings(path=str(old)), now_ms=T0).close()
    schema.connect(BufferSettings(path=str(tmp_path / "new.db")), now_ms=T0).close()

    def ddl(path: Path) -> list[tuple[str, str]]:
        conn = sqlite3.connect(path)
        try:
            return sorted((name, " ".join(sql.split())) for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE sql NOT NULL"))
        finally:
            conn.close()
    assert ddl(old) == ddl(tmp_path / "new.db")
