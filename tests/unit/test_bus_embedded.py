"""cloud.bus.embedded: the single-machine SQLite topic log behind the bus interface."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from cloud.bus import Record, TopicSpec, offsets_after, partition_for
from cloud.bus.embedded import EmbeddedBus
from cloud.errors import BrokerUnavailable, ConsumerFenced, UnknownTopic
from edge.testing import FakeClock

SPECS = [TopicSpec("readings", 4), TopicSpec("alerts", 1)]


def _bus(path: Path, **kw: object) -> EmbeddedBus:
    kw.setdefault("poll_interval_s", 0.005)
    return EmbeddedBus(path / "bus.sqlite3", **kw)  # type: ignore[arg-type]


async def _drain(consumer, want: int, timeout_s: float = 5.0) -> list[Record]:  # type: ignore[no-untyped-def]
    out: list[Record] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < want:
            out += await consumer.getmany(timeout_ms=200, max_records=want - len(out))
    return out


def test_partition_for_matches_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"", b"a", b"factory_a/3", b"sensor_0001_line3", bytes(range(37))):
        for n in (1, 3, 6, 10):
            assert partition_for(key, n) == DefaultPartitioner()(key, list(range(n)), [])


async def test_keyed_records_keep_their_order_in_one_partition(tmp_path: Path) -> None:
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)
        keys = [f"line-{i % 5}".encode() for i in range(200)]
        placed = []
        for start in range(0, 200, 50):  # several calls, concurrently
            placed.append(bus.producer().send_batch(
                "readings", [(k, b"v%d" % (start + i), [("n", str(start + i).encode())])
                             for i, k in enumerate(keys[start:start + 50])]))
        results = [p for batch in await asyncio.gather(*placed) for p in batch]
        assert [p for p, _ in results] == [partition_for(k, 4) for k in keys]
        async with bus.consumer("g", ["readings"]) as consumer:
            records = await _drain(consumer, 200)
    by_key: dict[bytes, list[int]] = {}
    for r in records:
        assert r.key is not None
        assert r.partition == partition_for(r.key, 4)
        by_key.setdefault(r.key, []).append(int(r.value[1:]))
        assert r.header("n") == r.value[1:]
    for key, values in by_key.items():
        assert values == sorted(values), key
    per_partition: dict[int, list[int]] = {}
    for r in records:
        per_partition.setdefault(r.partition, []).append(r.offset)
    for offsets in per_partition.values():
        assert offsets == list(range(len(offsets)))


async def test_send_returns_partition_and_offset_and_unkeyed_records_spread(
        tmp_path: Path) -> None:
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)
        placed = await bus.send_batch("readings", [(None, b"x", ())] * 8)
        assert sorted({p for p, _ in placed}) == [0, 1, 2, 3]
        assert sorted(o for _, o in placed) == [0, 0, 0, 0, 1, 1, 1, 1]


async def test_unknown_topic_fails_only_that_call(tmp_path: Path) -> None:
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)
        bad = bus.send_batch("nope", [(b"k", b"v", ())])
        good = bus.send_batch("alerts", [(b"k", b"v", ())])
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], UnknownTopic)
        assert results[1] == [(0, 0)]
        with pytest.raises(UnknownTopic):
            async with bus.consumer("g", ["nope"]):
                pass


async def test_closed_bus_refuses_and_queued_sends_complete_on_close(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    async with bus:
        await bus.ensure_topics(SPECS)
        pending = asyncio.ensure_future(bus.send_batch("alerts", [(b"k", b"v", ())]))
        await asyncio.sleep(0)
    assert await pending == [(0, 0)]
    with pytest.raises(BrokerUnavailable):
        await bus.send_batch("alerts", [(b"k", b"v", ())])


async def test_group_offsets_commit_resume_and_seek(tmp_path: Path) -> None:
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)
        await bus.send_batch("alerts", [(b"k", b"%d" % i, ()) for i in range(10)])
        async with bus.consumer("g", ["alerts"]) as c:
            first = await c.getmany(timeout_ms=500, max_records=4)
            assert [r.value for r in first] == [b"0", b"1", b"2", b"3"]
            await c.commit(offsets_after(first[:3]))
            more = await c.getmany(timeout_ms=500, max_records=2)
            assert [r.value for r in more] == [b"4", b"5"]
            await c.seek_to_committed()  # back to after "2"
            again = await c.getmany(timeout_ms=500, max_records=2)
            assert [r.value for r in again] == [b"3", b"4"]
            await c.commit()  # positions: after "4"
        async with bus.consumer("g", ["alerts"]) as c:
            rest = await _drain(c, 5)
            assert [r.value for r in rest] == [b"5", b"6", b"7", b"8", b"9"]
            assert await c.getmany(timeout_ms=50) == []
        async with bus.consumer("other", ["alerts"]) as c:
            # a new group starts at the earliest record
            assert [r.value for r in await _drain(c, 10)][:2] == [b"0", b"1"]


async def test_restart_keeps_records_and_offsets(tmp_path: Path) -> None:
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)
        await bus.send_batch("readings", [(b"a", b"1", ()), (b"a", b"2", ())])
        async with bus.consumer("g", ["readings"]) as c:
            got = await _drain(c, 1)
            await c.commit(offsets_after(got[:1]))
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)  # existing topics are left alone
        placed = await bus.send_batch("readings", [(b"a", b"3", ())])
        assert placed == [(partition_for(b"a", 4), 2)]
        async with bus.consumer("g", ["readings"]) as c:
            assert [r.value for r in await _drain(c, 2)] == [b"2", b"3"]


async def test_a_second_member_is_a_standby_until_the_lease_lapses(tmp_path: Path) -> None:
    clock = FakeClock()
    async with _bus(tmp_path, clock=clock, lease_ms=1000) as bus:
        await bus.ensure_topics(SPECS)
        await bus.send_batch("alerts", [(b"k", b"%d" % i, ()) for i in range(4)])
        async with bus.consumer("g", ["alerts"]) as active, \
                bus.consumer("g", ["alerts"]) as standby:
            got = await active.getmany(timeout_ms=200, max_records=2)
            assert [r.value for r in got] == [b"0", b"1"]
            await active.commit()
            assert await standby.getmany(timeout_ms=50) == []
            clock.advance(2.0)  # the active member stops renewing
            taken = await standby.getmany(timeout_ms=1500)
            assert [r.value for r in taken] == [b"2", b"3"]
            with pytest.raises(ConsumerFenced):
                await active.commit()


async def test_retention_by_age_and_size(tmp_path: Path) -> None:
    clock = FakeClock()
    async with _bus(tmp_path, clock=clock, retention_ms=60_000, retention_bytes=25,
                    retention_interval_s=3600) as bus:
        await bus.ensure_topics(SPECS)
        await bus.send_batch("alerts", [(b"k", b"old-%04d" % i, ()) for i in range(3)])
        clock.advance(61)
        await bus.send_batch("alerts", [(b"k", b"new-%04d" % i, ()) for i in range(5)])
        deleted = await asyncio.get_running_loop().run_in_executor(None, bus.retain)
        # 3 by age; of the 5 new (8 bytes each) only 3 fit in 25 bytes
        assert deleted == 5
        async with bus.consumer("g", ["alerts"]) as c:
            got = await _drain(c, 3)
            assert [r.value for r in got] == [b"new-0002", b"new-0003", b"new-0004"]
            assert [r.offset for r in got] == [5, 6, 7]


_PRODUCER = textwrap.dedent("""
    import asyncio, sys
    from cloud.bus.embedded import EmbeddedBus

    async def main():
        async with EmbeddedBus(sys.argv[1]) as bus:
            for i in range(20):
                await bus.send_batch("readings", [(b"dev-%d" % (j % 3), b"%d" % (i * 10 + j), ())
                                                  for j in range(10)])
    asyncio.run(main())
""")


async def test_two_processes_share_the_log(tmp_path: Path) -> None:
    async with _bus(tmp_path) as bus:
        await bus.ensure_topics(SPECS)
        async with bus.consumer("g", ["readings"]) as c:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PRODUCER,
                                                        str(bus.path))
            try:
                records = await _drain(c, 200, timeout_s=30)
            finally:
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
            # and this process appends after the other one, with the next offsets
            placed = await bus.send_batch("readings", [(b"dev-0", b"last", ())])
    values = sorted(int(r.value) for r in records)
    assert values == list(range(200))
    per_key: dict[bytes | None, list[int]] = {}
    for r in records:
        per_key.setdefault(r.key, []).append(int(r.value))
    for seq in per_key.values():
        assert seq == sorted(seq)
    p = partition_for(b"dev-0", 4)
    assert placed == [(p, sum(1 for r in records if r.partition == p))]
