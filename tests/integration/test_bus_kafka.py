"""cloud.bus.kafka against the real Kafka broker (the `kafka` fixture)."""

from __future__ import annotations

import asyncio
import uuid

import services
from aiokafka.admin import AIOKafkaAdminClient

from cloud.bus import Record, TopicSpec, offsets_after, partition_for
from cloud.bus.kafka import KafkaBus


def _name(what: str) -> str:
    return f"test.bus.{what}.{uuid.uuid4().hex[:8]}"


async def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


async def _drain(consumer, want: int, timeout_s: float = 30) -> list[Record]:  # type: ignore[no-untyped-def]
    out: list[Record] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < want:
            out += await consumer.getmany(timeout_ms=500, max_records=want - len(out))
    return out


async def test_topics_are_created_with_their_partitions(kafka: services.Kafka) -> None:
    a, b = _name("a"), _name("b")
    async with KafkaBus([kafka.bootstrap_servers]) as bus:
        await bus.ensure_topics([TopicSpec(a, 5), TopicSpec(b, 2)])
        await bus.ensure_topics([TopicSpec(a, 5), TopicSpec(b, 7)])  # exists: left alone
        assert await bus.wait_connected(30)
        ok, detail = await bus.healthy()
        assert ok, detail
    assert await _partitions(kafka.bootstrap_servers, [a, b]) == {a: 5, b: 2}


async def test_produce_consume_commit_resume(kafka: services.Kafka) -> None:
    topic = _name("records")
    group = f"g-{uuid.uuid4().hex[:8]}"
    async with KafkaBus([kafka.bootstrap_servers], compression="zstd") as bus:
        await bus.ensure_topics([TopicSpec(topic, 3)])
        assert await bus.wait_connected(30)
        keys = [f"line-{i % 4}".encode() for i in range(40)]
        placed = await bus.producer().send_batch(
            topic, [(k, b"%d" % i, [("n", b"%d" % i)]) for i, k in enumerate(keys)])
        assert [p for p, _ in placed] == [partition_for(k, 3) for k in keys]
        async with bus.consumer(group, [topic]) as consumer:
            first = await _drain(consumer, 40)
            assert sorted(int(r.value) for r in first) == list(range(40))
            for r in first:
                assert r.key is not None and r.partition == partition_for(r.key, 3)
                assert r.header("n") == r.value
            by_key: dict[bytes | None, list[int]] = {}
            for r in first:
                by_key.setdefault(r.key, []).append(int(r.value))
            assert all(v == sorted(v) for v in by_key.values())
            # commit only the first half of each partition
            half = offsets_after([r for r in first if r.offset < 5])
            await consumer.commit(half)
        await bus.producer().send_batch(topic, [(b"line-0", b"40", [])])
        async with bus.consumer(group, [topic]) as consumer:
            rest = await _drain(consumer, 41 - sum(half.values()))
    assert sorted(int(r.value) for r in rest) == sorted(
        [int(r.value) for r in first if r.offset >= 5] + [40])
