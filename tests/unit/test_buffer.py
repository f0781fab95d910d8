"""The buffer's asyncio API on real SQLite files: appends, de-duplication, claims, dead
letters, counters, restarts."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from edge.model import FLAG_CLOCK_SKEW, FLAG_TS_MISSING, Event, Priority, Reading
from edge.testing import FakeClock
from gateway.buffer import Buffer, BufferSettings, Claim, Store, Synchronous
from gateway.errors import BufferBusy, BufferCorrupt

T0 = 1_705_322_445_000


def reading(i: int, device: str = "sensor_001", *, rx: int = T0, **kw: object) -> Reading:
    fields: dict[str, object] = dict(device_id=device, ts_ms=T0 + i, value=20.0 + i, seq=i,
                                     unit="celsius", facility="factory_a", line="1",
                                     zone="assembly", battery_voltage=3.7, received_ms=rx)
    fields.update(kw)
    return Reading(**fields)  # type: ignore[arg-type]


def event(i: int, kind: str = "alert", device: str = "sensor_001") -> Event:
    return Event(kind=kind, key=i.to_bytes(16, "big"), ts_ms=T0 + i, device_id=device,
                 body={"rule": "too_hot", "value": 90.0 + i, "raw": b"\x00\x01"})


def wal_size(path: str) -> int:
    wal = Path(path + "-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_ms=T0)


@pytest.fixture
def settings(tmp_path: Path) -> BufferSettings:
    return BufferSettings(path=str(tmp_path / "buffer.db"), commit_interval_ms=1,
                          synchronous=Synchronous.NORMAL)


async def test_durable_append_is_committed_when_it_resolves(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        res = await buf.append([reading(i) for i in range(10)])
        assert (res.stored, res.duplicates, res.refused, res.pending) == (10, 0, 0, 0)
        # another connection sees the rows: the transaction has committed
        other = sqlite3.connect(settings.path)
        assert other.execute("SELECT count(*) FROM readings").fetchone()[0] == 10
        other.close()


async def test_readings_round_trip_unchanged(settings, clock) -> None:
    odd = [reading(1, quality="uncertain", battery_voltage=None, seq=None),
           reading(2, facility=None, line=None, zone=None, quality="weird"),
           reading(3, flags=FLAG_CLOCK_SKEW, sensor_ts_ms=T0 - 99_000, ts_ms=T0),
           reading(4, flags=FLAG_TS_MISSING, seq=None, ts_ms=T0 + 5, received_ms=T0 + 5),
           reading(5, value=-1e300, measurement="humidity", unit="%")]
    async with Buffer(settings, clock=clock) as buf:
        assert (await buf.append(odd)).stored == 5
        claim = await buf.claim(100)
        assert claim is not None
        assert claim.readings == odd
        assert [r.key for r in claim.rows] == [r.idempotency_key() for r in odd]


async def test_received_ms_zero_is_stamped_before_the_key(settings, clock) -> None:
    r = Reading(device_id="d", ts_ms=T0, value=1.0, flags=FLAG_TS_MISSING)
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([r])
        claim = await buf.claim(10)
        assert claim is not None
        got = claim.readings[0]
        assert got.received_ms == clock.now_ms()
        assert claim.rows[0].key == got.idempotency_key()


async def test_duplicates_within_a_group_across_groups_and_after_ack(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        first = await buf.append([reading(1), reading(2), reading(1)])
        assert (first.stored, first.duplicates) == (2, 1)
        # concurrent callers in one group commit each get their own answer
        results = await asyncio.gather(buf.append([reading(2)]), buf.append([reading(3)]),
                                       buf.append([reading(3), reading(4)]))
        assert [(r.stored, r.duplicates) for r in results] == [(0, 1), (1, 0), (1, 1)]
        claim = await buf.claim(100)
        assert claim is not None and len(claim) == 4
        assert await buf.ack(claim) == 4
        # the uplink already sent reading 1: a late QoS 1 redelivery is still recognised
        late = await buf.append([reading(1), reading(5)])
        assert (late.stored, late.duplicates) == (1, 1)
        st = buf.stats()
        assert st.duplicates["raw"] == 4 and st.appended["raw"] == 5
        assert st.seen_keys == 4


async def test_skewed_and_clockless_redeliveries_match(settings, clock) -> None:
    # the gateway may classify a redelivery differently (skew decided against its own clock)
    a = reading(1, seq=7, ts_ms=T0 + 1)
    b = reading(1, seq=7, ts_ms=T0 + 50_000, sensor_ts_ms=T0 + 1, flags=FLAG_CLOCK_SKEW)
    # no sensor time, but a sequence number: the receive time differs per delivery
    c = reading(2, seq=9, flags=FLAG_TS_MISSING, ts_ms=T0 + 10, received_ms=T0 + 10)
    d = reading(2, seq=9, flags=FLAG_TS_MISSING, ts_ms=T0 + 20, received_ms=T0 + 20)
    async with Buffer(settings, clock=clock) as buf:
        assert (await buf.append([a, c])).stored == 2
        res = await buf.append([b, d])
        assert (res.stored, res.duplicates) == (0, 2)


async def test_dedup_horizon_prunes_seen_keys(tmp_path, clock) -> None:
    s = BufferSettings(path=str(tmp_path / "b.db"), commit_interval_ms=0, dedup_horizon_s=60,
                       dedup_max_keys=3)
    async with Buffer(s, clock=clock) as buf:
        await buf.append([reading(i) for i in range(5)])
        claim = await buf.claim(100)
        assert claim is not None
        await buf.ack(claim)
        st = buf.stats()
        assert st.seen_keys == 3 and st.counters["dedup_pruned.count"] == 2
        clock.advance(61)
        await buf.append([reading(10)])
        claim = await buf.claim(100)
        assert claim is not None
        await buf.ack(claim)  # pruning runs with acks: the three old keys are past the horizon
        st = buf.stats()
        assert st.seen_keys == 1 and st.counters["dedup_pruned.horizon"] == 3


async def test_non_durable_append_resolves_at_once_and_commits_later(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        res = await buf.append([reading(1), reading(2)], durable=False)
        assert (res.stored, res.pending) == (0, 2)
        await buf.flush()
        assert buf.stats().rows["raw"] == 2


async def test_events_and_priorities_in_claims(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i) for i in range(5)])
        res = await buf.append_events([event(1, "aggregate"), event(2, "alert"),
                                       event(2, "alert")])
        assert (res.stored, res.duplicates) == (2, 1)
        claim = await buf.claim(4, live_share=0.0)
        assert claim is not None
        assert [r.priority for r in claim.rows] == [Priority.ALERT, Priority.AGGREGATE,
                                                     Priority.RAW, Priority.RAW]
        assert claim.events[0] == event(2, "alert")
        assert [r.seq for r in claim.readings] == [0, 1]


async def test_live_share_takes_newest_and_oldest(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        # an outage backlog, received long ago
        await buf.append([reading(i, rx=T0) for i in range(100)])
        clock.advance(3600)
        now = clock.now_ms()
        await buf.append([reading(1000 + i, rx=now) for i in range(20)])
        claim = await buf.claim(10, live_share=0.3)
        assert claim is not None
        seqs = [r.seq for r in claim.readings]
        # 3 newest live readings, 7 oldest backlog readings, in id order
        assert seqs == [0, 1, 2, 3, 4, 5, 6, 1017, 1018, 1019]
        ids = [r.id for r in claim.rows]
        assert ids == sorted(ids)
        # nothing live left in the window once the clock moves on: all backlog
        clock.advance(60)
        claim2 = await buf.claim(10, live_share=0.3)
        assert claim2 is not None
        assert [r.seq for r in claim2.readings] == list(range(7, 17))


async def test_a_row_is_in_at_most_one_claim_and_release_returns_it(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i) for i in range(10)])
        a = await buf.claim(6, live_share=0)
        b = await buf.claim(6, live_share=0)
        assert a is not None and b is not None
        assert {r.id for r in a.rows}.isdisjoint({r.id for r in b.rows})
        assert len(b) == 4 and b.seq > a.seq
        assert await buf.claim(6) is None
        assert await buf.release(a) == 6
        c = await buf.claim(100, live_share=0)
        assert c is not None and [r.id for r in c.rows] == [r.id for r in a.rows]
        assert c.seq > b.seq  # a released batch is regrouped under a new number
        assert await buf.release(a) == 0 and buf.stats().counters["release_unknown"] == 1
        assert await buf.ack(a) == 0 and buf.stats().counters["ack_unknown"] == 1


async def test_claims_survive_a_restart_identically(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i) for i in range(30)])
        await buf.append_events([event(1)])
        c1 = await buf.claim(10)
        c2 = await buf.claim(10)
        assert c1 is not None and c2 is not None
        assert await buf.set_claim_meta(c2, b"frame-bytes")
    async with Buffer(settings, clock=clock) as buf:
        pending = await buf.pending_claims()
        assert [c.seq for c in pending] == [c1.seq, c2.seq]
        assert pending[0] == c1
        assert pending[1].rows == c2.rows and pending[1].meta == b"frame-bytes"
        c3 = await buf.claim(100)
        assert c3 is not None and c3.seq > c2.seq
        assert {r.id for r in c3.rows}.isdisjoint({r.id for c in pending for r in c.rows})
        await buf.ack(pending[0])
        st = buf.stats()
        assert st.claims_in_flight == 2 and st.claimed_rows == len(c2) + len(c3)


async def test_claim_lease_releases_old_claims_at_open(settings, clock, tmp_path) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i) for i in range(5)])
        assert await buf.claim(10) is not None
    clock.advance(600)
    leased = BufferSettings(path=settings.path, claim_lease_s=300)
    async with Buffer(leased, clock=clock) as buf:
        assert await buf.pending_claims() == []
        st = buf.stats()
        assert st.claimed_rows == 0 and st.counters["claims.expired"] == 1
        assert st.counters["released.raw"] == 5


async def test_sequence_numbers_start_at_creation_time(tmp_path, clock) -> None:
    first = BufferSettings(path=str(tmp_path / "a.db"))
    async with Buffer(first, clock=clock) as buf:
        await buf.append([reading(1)])
        c = await buf.claim(1)
        assert c is not None and c.seq == T0 * 1000
    os.remove(first.path)  # an operator wipes the buffer ...
    clock.advance(1)
    async with Buffer(first, clock=clock) as buf:
        await buf.append([reading(1)])
        c2 = await buf.claim(1)
        assert c2 is not None and c2.seq > c.seq  # ... and no number is reused


async def test_counters_persist_across_restarts(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(1), reading(1)])
        await buf.dead_letter(b"\xff", source="coap", peer="10.0.0.9", reason="malformed_payload")
    async with Buffer(settings, clock=clock) as buf:
        st = buf.stats()
        assert st.appended["raw"] == 1 and st.duplicates["raw"] == 1
        assert st.dead_letters == {"malformed_payload": 1} and st.dead_letter_rows == 1
        assert st.rows["raw"] == 1


async def test_dead_letters_are_capped_and_truncated(tmp_path, clock) -> None:
    s = BufferSettings(path=str(tmp_path / "b.db"), deadletter_max_rows=3,
                       deadletter_max_raw=8)
    async with Buffer(s, clock=clock) as buf:
        for i in range(5):
            await buf.dead_letter(bytes([i]) * (4 + i * 3), source="mqtt", peer="p",
                                  reason="unknown_device", detail=f"#{i}")
        letters = await buf.dead_letters()
        assert [d.detail.split()[0] for d in letters] == ["#2", "#3", "#4"]
        assert letters[-1].raw == bytes([4]) * 8
        assert "truncated from 16 bytes" in letters[-1].detail
        st = buf.stats()
        assert st.dead_letters["unknown_device"] == 5
        assert st.dead_letters_dropped == {"cap": 2} and st.dead_letter_rows == 3


async def test_replay_dead_letters_through_a_handler(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.dead_letter(b"a", source="mqtt", reason="malformed_payload")
        await buf.dead_letter(b"b", source="mqtt", reason="unknown_device")
        await buf.dead_letter(b"c", source="coap", reason="unknown_device")
        seen: list[bytes] = []

        async def handler(dl) -> bool:
            seen.append(dl.raw)
            return dl.raw != b"c"  # "c" still fails; it stays
        assert await buf.replay_dead_letters(handler, reason="unknown_device") == 1
        assert seen == [b"b", b"c"]
        assert [d.raw for d in await buf.dead_letters()] == [b"a", b"c"]
        assert buf.stats().dead_letters_dropped == {"replayed": 1}


async def test_invalid_record_refuses_only_its_caller(settings, clock) -> None:
    good = [reading(1)]
    too_big = [reading(2), reading(3, seq=2**70)]  # beyond SQLite's integers
    # SQLite would store NULL for NaN: OR IGNORE would skip the row, or the battery would
    # come back as None
    nan = [reading(4, value=float("nan")), reading(5, battery_voltage=float("nan"))]
    async with Buffer(settings, clock=clock) as buf:
        results = await asyncio.gather(buf.append(good), buf.append(too_big), buf.append(nan))
        assert results[0].stored == 1
        assert (results[1].refused, results[1].refused_reason) == (2, "invalid_record")
        assert (results[2].refused, results[2].refused_reason) == (2, "invalid_record")
        assert buf.stats().refused == {"invalid_record": {"raw": 4}}
        assert buf.stats().rows["raw"] == 1


async def test_writer_backlog_refuses_with_busy(tmp_path, clock) -> None:
    s = BufferSettings(path=str(tmp_path / "b.db"), commit_interval_ms=200,
                       commit_max_readings=10, max_pending_readings=10)
    async with Buffer(s, clock=clock) as buf:
        first = asyncio.ensure_future(buf.append([reading(i) for i in range(10)]))
        await asyncio.sleep(0)
        with pytest.raises(BufferBusy):
            await buf.append([reading(99)])
        lossy = await buf.append([reading(98)], durable=False)
        assert (lossy.refused, lossy.refused_reason) == (1, "overload")
        assert (await first).stored == 10
        await buf.append([reading(50)])  # the next commit carries the counter
        assert buf.stats().refused == {"overload": {"raw": 2}}


async def test_second_process_on_the_same_file_is_refused(settings, clock) -> None:
    async with Buffer(settings, clock=clock):
        with pytest.raises(BufferBusy):
            async with Buffer(settings, clock=clock):
                pass


async def test_damaged_file_is_buffer_corrupt(tmp_path, clock) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not an sqlite database at all" * 200)
    with pytest.raises(BufferCorrupt):
        async with Buffer(BufferSettings(path=str(path)), clock=clock):
            pass


async def test_commit_failure_fails_the_group_then_recovers(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(0)])
        # another process holds the write lock longer than the writer waits for it
        other = sqlite3.connect(settings.path, isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        store = buf.writer.store
        assert store is not None
        store.conn.execute("PRAGMA busy_timeout=50")
        with pytest.raises(BufferBusy):
            await buf.append([reading(1)])
        other.execute("ROLLBACK")
        other.close()
        res = await buf.append([reading(1)])
        assert res.stored == 1  # the failed attempt kept nothing; the retry stores it
        assert buf.stats().rows["raw"] == 2


async def test_stats_report_sizes_and_age(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        assert buf.stats().oldest_unsent_age_ms is None
        await buf.append([reading(i, rx=T0) for i in range(100)])
        clock.advance(2.5)
        st = buf.stats()
        assert st.oldest_unsent_age_ms == 2500
        assert st.rows == {"raw": 100, "aggregate": 0, "alert": 0}
        assert st.db_bytes > 0 and st.used_bytes <= st.db_bytes
        assert st.commits >= 1 and st.commit_ms_avg > 0 and st.group_size_last >= 1
        assert st.schema_version == 2


async def test_close_commits_what_was_handed_over(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i) for i in range(50)], durable=False)
    assert wal_size(settings.path) == 0  # checkpointed and truncated
    store = Store.open(settings, clock)
    try:
        assert store.state.rows[0] == 50
    finally:
        store.close()


async def test_claim_is_fsynced_even_with_synchronous_normal(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(1)])
        before = buf.stats().sync_commits
        claim = await buf.claim(10)
        assert isinstance(claim, Claim)
        assert buf.stats().sync_commits == before + 1
        store = buf.writer.store
        assert store is not None
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL


async def test_interned_strings_of_gone_devices_are_forgotten(settings, clock) -> None:
    async with Buffer(settings, clock=clock) as buf:
        await buf.append([reading(i, device=f"old_{i}") for i in range(20)])
        claim = await buf.claim(100)
        assert claim is not None
        await buf.ack(claim)
        await buf.append([reading(100, device="kept")])
    async with Buffer(settings, clock=clock) as buf:
        store = buf.writer.store
        assert store is not None
        assert {k[0] for k in store.series.ids} == {"kept"}
        claim = await buf.claim(10)
        assert claim is not None and claim.readings[0].device_id == "kept"


async def test_a_failing_group_is_retriable_and_the_writer_carries_on(settings, clock,
                                                                     monkeypatch) -> None:
    async with Buffer(settings, clock=clock) as buf:
        def broken(self, batches, now_ms):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")
        with monkeypatch.context() as m:
            m.setattr(Store, "insert_readings", broken)
            with pytest.raises(BufferBusy, match="bug"):
                await buf.append([reading(1)])
        assert (await buf.append([reading(1)])).stored == 1
        assert buf.stats().rows["raw"] == 1
