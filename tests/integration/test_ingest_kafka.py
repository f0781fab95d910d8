"""Cloud ingest into the real Kafka broker: what is posted is what the topics hold.

The outage test stops and restarts a SECOND, throwaway broker (its own port and state under
the test's tmp dir, via deploy/local/services/kafka.sh with FIELDLINK_VAR/FIELDLINK_KAFKA_PORT),
so the shared broker other tests use is never touched.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import services
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from cloud.bus import TopicSpec, partition_for
from cloud.bus.kafka import KafkaBus
from cloud.ingest.service import BATCH_CONTENT_TYPE, IngestService
from cloud.ingest.settings import IngestSettings, Topics
from edge.backoff import Backoff
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Reading
from edge.signing import sign_request

SECRETS = {f"gw-{g}": f"secret-of-gateway-{g}-xyz".encode() for g in range(4)}


def _topics() -> Topics:
    suffix = uuid.uuid4().hex[:8]
    return Topics(*(f"test.ingest.{t}.{suffix}" for t in
                    ("readings", "aggregates", "alerts", "deadletter")))


def _specs(t: Topics) -> tuple[TopicSpec, ...]:
    return (TopicSpec(t.readings, 6), TopicSpec(t.aggregates, 2), TopicSpec(t.alerts, 2),
            TopicSpec(t.deadletter, 1))


def _readings(gateway: int, batch: int, n: int = 200) -> list[Reading]:
    t0 = 1_705_322_400_000 + batch * 100_000
    return [Reading(device_id=f"gw{gateway}-dev-{i % 10}", ts_ms=t0 + 100 * i,
                    value=round(20 + ((i * 7) % 50) / 10, 2), unit="celsius",
                    facility=f"plant-{gateway % 2}", line=str(i % 10 % 3),
                    seq=batch * 1000 + i // 10, received_ms=t0 + 100 * i + 3)
            for i in range(n)]


@asynccontextmanager
async def _ingest(bootstrap: str, tmp_path: Path, topics: Topics, key_mode: str,
                  **bus_options: Any) -> AsyncIterator[tuple[IngestService, str]]:
    settings = IngestSettings(ledger_path=tmp_path / f"ledger-{uuid.uuid4().hex}.sqlite3",
                              secrets=SECRETS, port=0, topics=topics,
                              topic_specs=_specs(topics), key_mode=key_mode,
                              setup_retry_cap_s=1.0)
    async with KafkaBus([bootstrap], compression="zstd", **bus_options) as bus, \
            IngestService(settings, bus) as service:
        assert await service.wait_ready(60), "topics were not created"
        yield service, service.url + "/v1/batches"


async def _post(http: aiohttp.ClientSession, url: str, gateway: str, frame: bytes
                ) -> tuple[int, dict[str, object], dict[str, str]]:
    headers = sign_request(SECRETS[gateway], gateway, frame, time.time_ns() // 1_000_000)
    headers["Content-Type"] = BATCH_CONTENT_TYPE
    async with http.post(url, data=frame, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def _consume_all(bootstrap: str, topic: str, want_records: int | None = None,
                       idle_s: float = 3.0) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                group_id=f"check-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + 60
        last = time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                out += msgs
            if batches:
                last = time.monotonic()
            enough = want_records is None or len(out) >= want_records
            if enough and time.monotonic() - last > idle_s:
                break
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("key_mode", ["facility_line", "device"])
async def test_posted_batches_come_back_exactly_keyed_and_ordered(
        kafka: services.Kafka, tmp_path: Path, key_mode: str) -> None:
    topics = _topics()
    posted: list[Reading] = []
    async with _ingest(kafka.bootstrap_servers, tmp_path, topics, key_mode) as (_, url), \
            aiohttp.ClientSession() as http:
        frames = []
        for g in range(4):
            for b in range(3):
                rs = _readings(g, b)
                posted += rs
                frames.append((f"gw-{g}", encode_batch(Batch(f"gw-{g}", b, 1, rs))))
        # gateways in parallel, each gateway's batches in order (as an uplink sends them)
        async def gateway(items: list[tuple[str, bytes]]) -> list[int]:
            return [(await _post(http, url, gw, frame))[0] for gw, frame in items]

        statuses = await asyncio.gather(*(gateway(frames[g * 3:(g + 1) * 3]) for g in range(4)))
        assert statuses == [[200, 200, 200]] * 4
        # the same batch again: answered as a duplicate, not produced twice
        status, body, _ = await _post(http, url, *frames[0])
        assert status == 200 and body["duplicate"] is True

    messages = await _consume_all(kafka.bootstrap_servers, topics.readings)
    got: list[Reading] = []
    for m in messages:
        batch = decode_batch(m.value)
        keys = {(f"{r.facility}/{r.line}" if key_mode == "facility_line" else r.device_id)
                .encode() for r in batch.readings}
        assert keys == {m.key}
        assert m.partition == partition_for(m.key, 6)
        headers = dict(m.headers)
        assert headers["fl-batch"] == f"{batch.gateway_id}:{batch.sequence}".encode()
        assert headers["fl-count"] == str(len(batch.readings)).encode()
        got += batch.readings
    assert len(got) == len(posted)
    assert sorted(got, key=Reading.idempotency_key) == sorted(posted,
                                                              key=Reading.idempotency_key)
    # per device: the order of the consumed partition is the order of posting
    by_partition = sorted(messages, key=lambda m: (m.partition, m.offset))
    seen: dict[str, list[int]] = {}
    for m in by_partition:
        for r in decode_batch(m.value).readings:
            seen.setdefault(r.device_id, []).append(r.ts_ms)
    assert all(ts == sorted(ts) for ts in seen.values())


async def test_topics_created_with_configured_partitions(kafka: services.Kafka,
                                                         tmp_path: Path) -> None:
    topics = _topics()
    async with _ingest(kafka.bootstrap_servers, tmp_path, topics, "facility_line"):
        pass
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topics.readings, topics.aggregates,
                                                 topics.alerts, topics.deadletter])
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        s.name: s.partitions for s in _specs(topics)}


# --------------------------------------------------------------------------- outage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayKafka:
    """A second broker with its own port and state, started/stopped by kafka.sh."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "FIELDLINK_VAR": str(root),
                    "FIELDLINK_KAFKA_PORT": str(self.port),
                    "FIELDLINK_KAFKA_CONTROLLER_PORT": str(_free_port())}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, action: str) -> None:
        proc = subprocess.run(["bash", str(services.SCRIPTS / "kafka.sh"), action],
                              env=self.env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise services.ServiceUnavailable(f"kafka.sh {action} (port {self.port}) failed:\n"
                                              f"{proc.stdout}{proc.stderr}")

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")


@contextmanager
def _throwaway(tmp_path: Path) -> Iterator[ThrowawayKafka]:
    broker = ThrowawayKafka(tmp_path / "kafka2")
    try:
        broker.start()
    except services.ServiceUnavailable as exc:
        broker.stop()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the throwaway broker did not start: {exc}")
        pytest.skip(str(exc))
    try:
        yield broker
    finally:
        broker.stop()


async def _until(predicate_coro, timeout_s: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate_coro()
        if result is not None:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.5)


async def test_broker_outage_is_503_with_retry_after_then_recovers(
        kafka: services.Kafka, tmp_path: Path) -> None:
    # `kafka` is requested so that, under CI=true, a machine without Kafka fails here too
    topics = _topics()
    with _throwaway(tmp_path) as broker:
        async with _ingest(broker.bootstrap, tmp_path, topics, "facility_line",
                           send_timeout_s=5.0, watch_interval_s=1.0,
                           backoff=Backoff(base=0.2, cap=2.0)) as (service, url), \
                aiohttp.ClientSession() as http:
            frame = encode_batch(Batch("gw-1", 1, 1, _readings(1, 1)))

            # A broker started a moment ago may still be electing the new topics' leaders:
            # until then ingest answers 503 (correctly) and, like a gateway, the test resends
            async def first() -> int | None:
                status = (await _post(http, url, "gw-1", frame))[0]
                assert status in (200, 503), status
                return status if status == 200 else None

            await _until(first, 60)

            await asyncio.to_thread(broker.stop)
            seq = iter(range(2, 10_000))

            async def refused() -> tuple[int, dict[str, object], dict[str, str]] | None:
                n = next(seq)
                answer = await _post(http, url, "gw-1",
                                     encode_batch(Batch("gw-1", n, 1, _readings(1, n))))
                return answer if answer[0] == 503 else None

            status, body, headers = await _until(refused, 60)
            assert body["error"] == "broker_unavailable"
            assert int(headers["Retry-After"]) > 0
            async with http.get(service.url + "/healthz") as resp:
                assert resp.status == 503
            # a batch produced before the outage is still answered from the ledger
            status, body, _ = await _post(http, url, "gw-1", frame)
            assert status == 200 and body["duplicate"] is True

            await asyncio.to_thread(broker.start)
            retry = encode_batch(Batch("gw-1", 9_999, 1, _readings(1, 77)))

            async def accepted() -> dict[str, object] | None:
                answer = await _post(http, url, "gw-1", retry)
                return answer[1] if answer[0] == 200 else None

            body = await _until(accepted, 120)
            assert body["duplicate"] is False and body["readings"] == 200
        messages = await _consume_all(broker.bootstrap, topics.readings)
        sequences = {decode_batch(m.value).sequence for m in messages}
        assert {1, 9_999} <= sequences
