"""The byte cap: eviction order, counted drops, refusals, and the file size after commits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.model import Event, Priority, Reading
from edge.testing import FakeClock
from gateway.buffer import Buffer, BufferSettings, Eviction, Store
from gateway.buffer import space as space_mod

T0 = 1_705_322_445_000
MAX = 1024 * 1024


def reading(i: int) -> Reading:
    return Reading(device_id=f"sensor_{i % 50:03d}", ts_ms=T0 + i, value=float(i), seq=i,
                   unit="celsius", facility="factory_a", line="1", zone="assembly",
                   battery_voltage=3.7, received_ms=T0 + i)


def event(i: int, kind: str) -> Event:
    return Event(kind=kind, key=(kind + str(i)).encode().ljust(16, b"_"), ts_ms=T0 + i,
                 device_id=f"sensor_{i % 50:03d}", body={"n": i, "text": "x" * 40})


def disk_bytes(path: str) -> int:
    wal = path + "-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


def present_seqs(path: str) -> list[int]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return [s for (s,) in conn.execute("SELECT seq FROM readings ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_ms=T0)


def capped(tmp_path: Path, **kw: object) -> BufferSettings:
    return BufferSettings(path=str(tmp_path / "b.db"), max_bytes=MAX, commit_interval_ms=0,
                          **kw)  # type: ignore[arg-type]


async def test_cap_evicts_oldest_raw_keeps_alerts_and_bounds_the_file(tmp_path, clock) -> None:
    s = capped(tmp_path)
    async with Buffer(s, clock=clock) as buf:
        assert (await buf.append_events([event(i, "alert") for i in range(40)])).stored == 40
        n = 0
        for _ in range(40):
            res = await buf.append([reading(n + k) for k in range(500)])
            assert res.stored == 500  # room is always made for raw readings
            n += 500
            assert disk_bytes(s.path) <= s.max_bytes + s.page_size
        st = buf.stats()
        kept = present_seqs(s.path)
        assert 0 < len(kept) < n
        # oldest first: what is left is exactly the newest suffix
        assert kept == list(range(n - len(kept), n))
        assert st.dropped == {"evicted": {"raw": n - len(kept)}}
        assert st.rows == {"raw": len(kept), "aggregate": 0, "alert": 40}
        assert st.db_bytes <= s.max_bytes - s.wal_limit
        # claiming writes no reading row, so a full buffer can always be claimed and drained
        while await buf.claim(1000) is not None:
            assert disk_bytes(s.path) <= s.max_bytes + s.page_size
        assert buf.stats().claimed_rows == len(kept) + 40


async def test_newest_first_keeps_history(tmp_path, clock) -> None:
    s = capped(tmp_path, eviction=Eviction.NEWEST_FIRST)
    async with Buffer(s, clock=clock) as buf:
        n = 0
        for _ in range(30):
            assert (await buf.append([reading(n + k) for k in range(500)])).stored == 500
            n += 500
            assert disk_bytes(s.path) <= s.max_bytes + s.page_size
        kept = present_seqs(s.path)
        st = buf.stats()
    assert st.dropped["evicted"]["raw"] == n - len(kept)
    # the oldest readings survive; the latest commit is always kept as well
    assert kept[:100] == list(range(100))
    assert kept[-500:] == list(range(n - 500, n))
    assert kept == sorted(kept)


async def test_aggregates_go_only_after_raw_and_alerts_never(tmp_path, clock) -> None:
    s = capped(tmp_path)
    async with Buffer(s, clock=clock) as buf:
        n = 0
        while buf.stats().dropped.get("evicted", {}).get("raw", 0) == 0:
            await buf.append([reading(n + k) for k in range(500)])
            n += 500
        # the uplink takes everything in flight and gets one batch acknowledged
        claims = []
        while (c := await buf.claim(1000, live_share=0)) is not None:
            claims.append(c)
        await buf.ack(claims[0])
        assert (await buf.append_events([event(i, "aggregate") for i in range(200)])).stored \
            == 200
        # new raw readings push out older unclaimed raw readings, never aggregates
        for _ in range(10):
            assert (await buf.append([reading(n + k) for k in range(300)])).stored == 300
            n += 300
        st = buf.stats()
        assert st.rows["aggregate"] == 200
        unclaimed_raw = st.rows["raw"] - st.claimed_rows
        assert unclaimed_raw > 0
        evicted_raw = st.dropped["evicted"]["raw"]
        i = 0
        while buf.stats().dropped["evicted"].get("aggregate", 0) == 0:
            res = await buf.append_events([event(10_000 + i + k, "alert") for k in range(50)])
            assert res.stored == 50
            i += 50
            assert disk_bytes(s.path) <= s.max_bytes + s.page_size
        st = buf.stats()
        # the unclaimed raw readings went first, then aggregates; claimed rows stayed
        assert st.dropped["evicted"]["raw"] == evicted_raw + unclaimed_raw
        assert st.rows["raw"] == st.claimed_rows == sum(len(c) for c in claims[1:])
        assert st.rows["alert"] == i
        assert st.dropped["evicted"]["aggregate"] == 200 - st.rows["aggregate"]


async def test_full_of_alerts_refuses_raw_with_a_counted_reason(tmp_path, clock) -> None:
    s = capped(tmp_path)
    async with Buffer(s, clock=clock) as buf:
        i = refused = 0
        for size in (100, 1):  # big batches, then single alerts into the last pages
            while True:
                res = await buf.append_events([event(i + k, "alert") for k in range(size)])
                i += size
                assert disk_bytes(s.path) <= s.max_bytes + s.page_size
                if res.refused:
                    assert (res.refused, res.refused_reason) == (size, "buffer_full")
                    refused += size
                    break
        res = await buf.append([reading(1), reading(2)])
        assert (res.stored, res.refused, res.refused_reason) == (0, 2, "buffer_full")
        assert not res.ok
        st = buf.stats()
        assert st.refused["buffer_full"] == {"raw": 2, "alert": refused}
        assert st.dropped == {}  # not one alert evicted
        assert st.rows["alert"] == i - refused
        assert disk_bytes(s.path) <= s.max_bytes + s.page_size


async def test_seen_keys_and_dead_letters_go_before_raw(tmp_path, clock) -> None:
    s = capped(tmp_path, dedup_max_keys=1_000_000, dedup_horizon_s=1e9)
    async with Buffer(s, clock=clock) as buf:
        n = 0
        for _ in range(8):  # fill well past half the budget, then send it all
            await buf.append([reading(n + k) for k in range(500)])
            n += 500
        while (c := await buf.claim(5000)) is not None:
            await buf.ack(c)
        assert buf.stats().seen_keys == n
        for i in range(20):
            await buf.dead_letter(b"x" * 2000, source="mqtt", reason="malformed_payload",
                                  detail=str(i))
        while buf.stats().dropped.get("evicted", {}).get("raw", 0) == 0:
            await buf.append([reading(n + k) for k in range(500)])
            n += 500
        st = buf.stats()
        assert st.counters["dedup_pruned.space"] > 0
        assert st.seen_keys == 0 and st.dead_letter_rows == 0
        assert st.dead_letters_dropped == {"space": 20}


def test_reclaim_gives_free_pages_back(tmp_path, clock) -> None:
    s = BufferSettings(path=str(tmp_path / "b.db"), max_bytes=8 * MAX,
                       reclaim_free_bytes=64 * 1024)
    store = Store.open(s, clock)
    try:
        with store.transaction():
            store.insert_readings([[reading(i) for i in range(20_000)]], clock.now_ms())
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        big = os.path.getsize(s.path)
        with store.transaction():
            store.purge([Priority.RAW], older_than_ms=None, now_ms=clock.now_ms(),
                        limit=100_000)
        for _ in range(50):
            with store.transaction():
                if space_mod.reclaim(store) == 0:
                    break
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert os.path.getsize(s.path) < big / 4
        assert store.free_pages * s.page_size <= 64 * 1024
    finally:
        store.close()
