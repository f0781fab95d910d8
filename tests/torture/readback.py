"""What the cloud stores hold, read back through their public interfaces and keyed by
reading: `(device_id, measurement, seq)`, the simulator ledger's key.

* Kafka: every record of a topic from the beginning up to the end offsets taken when the
  read starts (assigned partitions, no consumer group), decoded with
  `edge.codec.decode_batch` — the one codec.
* InfluxDB: InfluxQL over the HTTP API (`/query`), every point of the run's database and
  retention policy with its `device_id` tag and `seq` field.
* Parquet: DuckDB over `<archive>/**/*.parquet` (what `fieldlink cloud query` reads).

Each returns a `StoreContents`: the copies of each reading as stored (raw), and the distinct
contents `(ts_ms, value)` of each reading.  Raw copies are at-least-once delivery: Kafka
holds a batch twice when a produce failed half way and was retried; de-duplication by
idempotency key (consumers, archive compaction; InfluxDB by series and timestamp)
collapses them.  A reading with two different contents is a real duplicate: it stays twice
(or one copy silently wins) whatever de-duplicates it — that is what `duplicated` counts.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Key = tuple[str, str, int]


@dataclass
class StoreContents:
    store: str
    #: copies of each reading as stored (raw)
    copies: Counter[Key] = field(default_factory=Counter)
    #: the distinct contents (ts_ms, value) of each reading
    identities: dict[Key, set[Any]] = field(default_factory=lambda: defaultdict(set))
    #: Kafka: the batch ids each reading arrived in
    batches: dict[Key, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    #: items without a sequence number (cannot be matched to the ledger)
    unkeyed: int = 0
    #: alerts / aggregates, when read
    events: list[Any] = field(default_factory=list)
    error: str | None = None

    def add(self, key: Key, identity: Any, batch: bytes | None = None) -> None:
        self.copies[key] += 1
        self.identities[key].add(identity)
        if batch is not None:
            self.batches[key].add(batch)

    def without(self, prefix: str) -> StoreContents:
        """These contents minus readings whose device id starts with `prefix` (readings a
        scenario injected itself, past the fleets and their ledgers)."""
        out = StoreContents(self.store, unkeyed=self.unkeyed, error=self.error)
        for key, n in self.copies.items():
            if not key[0].startswith(prefix):
                out.copies[key] = n
                out.identities[key] = self.identities[key]
                if key in self.batches:
                    out.batches[key] = self.batches[key]
        return out

    @property
    def raw_copies(self) -> int:
        """Rows beyond one per reading (before de-duplication)."""
        return sum(n - 1 for n in self.copies.values() if n > 1)

    @property
    def copies_across_batches(self) -> int:
        """Kafka: readings the gateway delivered in more than one batch and ingest let
        through (copies within one batch are produce retries)."""
        return sum(len(b) - 1 for b in self.batches.values() if len(b) > 1)

    @property
    def duplicated(self) -> int:
        """Readings stored under more than one identity: still twice after de-duplication."""
        return sum(len(ids) - 1 for ids in self.identities.values() if len(ids) > 1)


# --------------------------------------------------------------------------- Kafka


async def _partitions(consumer: Any, topics: list[str]) -> list[Any]:
    """The topics' partitions, from fresh cluster metadata (a consumer without a
    subscription has none of its own)."""
    from aiokafka import TopicPartition

    cluster = await consumer._client.fetch_all_metadata()
    return [TopicPartition(t, p) for t in topics
            for p in sorted(cluster.partitions_for_topic(t) or ())]


async def _kafka_records(bootstrap: str, topic: str, limit_s: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest",
                                request_timeout_ms=20_000, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    out: list[Any] = []
    try:
        tps = await _partitions(consumer, [topic])
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps)):
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for msgs in batches.values():
                out += msgs
        else:
            raise TimeoutError(f"reading {topic} did not reach its end offsets in {limit_s} s")
    finally:
        await consumer.stop()
    return out


def kafka_readings(bootstrap: str, topic: str, limit_s: float = 180) -> StoreContents:
    from edge.codec import decode_batch

    contents = StoreContents("kafka")
    records = asyncio.run(_kafka_records(bootstrap, topic, limit_s))
    for rec in records:
        batch = dict(rec.headers).get("fl-batch", b"?")
        for r in decode_batch(rec.value).readings:
            if r.seq is None:
                contents.unkeyed += 1
                continue
            contents.add((r.device_id, r.measurement, r.seq), (r.ts_ms, r.value), batch)
    return contents


def kafka_events(bootstrap: str, topic: str, limit_s: float = 120) -> list[Any]:
    from edge.codec import decode_batch

    out: list[Any] = []
    for rec in asyncio.run(_kafka_records(bootstrap, topic, limit_s)):
        out += decode_batch(rec.value).events
    return out


def kafka_count(bootstrap: str, topic: str) -> int:
    """Records on the topic (sum of end offsets minus beginnings)."""
    async def count() -> int:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            tps = await _partitions(consumer, [topic])
            if not tps:
                return 0
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            return sum(ends[tp] - starts[tp] for tp in tps)
        finally:
            await consumer.stop()
    return asyncio.run(count())


async def _group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            lag += ends[tp] - (committed or 0)
        return lag
    finally:
        await consumer.stop()


def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records the consumer group has not committed yet, summed over the topics."""
    return asyncio.run(_group_lag(bootstrap, group, topics))


# --------------------------------------------------------------------------- InfluxDB


def influxql(url: str, database: str, query: str, timeout: float = 60) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"db": database, "q": query, "epoch": "ms"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=timeout) as resp:
        body = json.loads(resp.read())
    result = body["results"][0]
    if "error" in result:
        raise RuntimeError(result["error"])
    return result.get("series", []) or []


def influx_readings(url: str, database: str, measurements: tuple[str, ...],
                    rp: str = "hot") -> StoreContents:
    contents = StoreContents("influxdb")
    for m in measurements:
        try:
            series = influxql(url, database, f'SELECT "seq", "device_id", "value" '
                                             f'FROM "{rp}"."{m}"')
        except urllib.error.HTTPError as e:
            contents.error = f"{e.code} {e.read()[:200]!r}"
            return contents
        except RuntimeError as e:
            if "database not found" in str(e):
                continue
            raise
        for s in series:
            cols = s["columns"]
            i_seq, i_dev, i_val = cols.index("seq"), cols.index("device_id"), cols.index("value")
            for row in s["values"]:
                if row[i_seq] is None:
                    contents.unkeyed += 1
                    continue
                # InfluxDB keeps one point per series and timestamp: two rows for one
                # reading are two points at different times
                contents.add((row[i_dev], m, int(row[i_seq])), (int(row[0]), row[i_val]))
    return contents


def influx_alert_count(url: str, database: str, rp: str = "hot") -> int:
    try:
        series = influxql(url, database, f'SELECT count("dedup_key") FROM "{rp}"."alerts"')
    except RuntimeError:
        return 0
    return int(series[0]["values"][0][1]) if series else 0


# --------------------------------------------------------------------------- Parquet


def parquet_readings(archive: Path) -> StoreContents:
    import duckdb

    contents = StoreContents("parquet")
    if not archive.exists() or not any(archive.glob("**/*.parquet")):
        return contents
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT device_id, measurement, seq, epoch_ms(ts), value FROM read_parquet(?, "
            "hive_partitioning = true)", [f"{archive}/**/*.parquet"]).fetchall()
    finally:
        con.close()
    for device, measurement, seq, ts_ms, value in rows:
        if seq is None:
            contents.unkeyed += 1
            continue
        contents.add((device, measurement, int(seq)), (int(ts_ms), value))
    return contents
