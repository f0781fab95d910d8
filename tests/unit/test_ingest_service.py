"""cloud ingest over real HTTP on 127.0.0.1, on the embedded bus (and a failing bus seam)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud.bus import OutRecord, Record, TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.errors import BrokerUnavailable
from cloud.ingest.service import BATCH_CONTENT_TYPE, IngestService
from cloud.ingest.settings import IngestSettings, Topics
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Event, Reading
from edge.signing import sign_request
from edge.testing import FakeClock

SECRETS = {"gw-1": b"secret-of-gw-1-0123456789", "gw-2": b"secret-of-gw-2-0123456789"}
TOPICS = Topics("t.readings", "t.aggregates", "t.alerts", "t.deadletter")
SPECS = (TopicSpec("t.readings", 4), TopicSpec("t.aggregates", 2), TopicSpec("t.alerts", 2),
         TopicSpec("t.deadletter", 1))


def readings(n: int, *, seq0: int = 0, lines: int = 3, devices: int = 6,
             t0: int = 1_705_322_400_000) -> list[Reading]:
    return [Reading(device_id=f"dev-{i % devices}", ts_ms=t0 + 1000 * i, value=20 + i / 100,
                    unit="celsius", facility="plant-a", line=str((i % devices) % lines),
                    seq=seq0 + i // devices, received_ms=t0 + 1000 * i + 4)
            for i in range(n)]


class FlakyBus:
    """The embedded bus behind a producer that fails while `down` (the 503 seam)."""

    def __init__(self, inner: EmbeddedBus) -> None:
        self.inner = inner
        self.kind = "flaky"
        self.down = False
        self.sent = 0

    def producer(self) -> FlakyBus:
        return self

    def consumer(self, group_id: str, topics: Sequence[str]) -> Any:
        return self.inner.consumer(group_id, topics)

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        await self.inner.ensure_topics(specs)

    async def healthy(self) -> tuple[bool, str]:
        return (False, "down") if self.down else (True, "up")

    async def send_batch(self, topic: str, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        if self.down:
            raise BrokerUnavailable("broker down (test)")
        self.sent += len(records)
        return await self.inner.send_batch(topic, records)


@dataclass
class Env:
    service: IngestService
    bus: FlakyBus
    clock: FakeClock
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.service.url + "/v1/batches"

    async def post(self, frame: bytes, *, gateway: str = "gw-1", secret: bytes | None = None,
                   at_ms: int | None = None, headers: dict[str, str] | None = None,
                   ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        signed = sign_request(secret or SECRETS.get(gateway, b"x" * 16), gateway, frame,
                              self.clock.now_ms() if at_ms is None else at_ms)
        signed["Content-Type"] = BATCH_CONTENT_TYPE
        signed.update(headers or {})
        async with self.http.post(self.url, data=frame, headers=signed) as resp:
            return resp.status, await resp.json(), resp

    async def consume(self, topic: str, want: int, group: str = "check") -> list[Record]:
        out: list[Record] = []
        async with self.bus.inner.consumer(group, [topic]) as c:
            async with asyncio.timeout(5):
                while len(out) < want:
                    out += await c.getmany(timeout_ms=100)
            out += await c.getmany(timeout_ms=100)  # and nothing more
        return out


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock()
    settings = IngestSettings(ledger_path=tmp_path / "ledger.sqlite3", secrets=SECRETS,
                              port=0, topics=TOPICS, topic_specs=SPECS, max_body_bytes=64_000,
                              record_compression="none")
    async with EmbeddedBus(tmp_path / "bus.sqlite3", poll_interval_s=0.005) as inner:
        bus = FlakyBus(inner)
        async with IngestService(settings, bus, clock=clock) as service, \
                aiohttp.ClientSession() as http:
            assert await service.wait_ready(5)
            yield Env(service, bus, clock, http)


def frame_of(rs: list[Reading], seq: int = 1, gateway: str = "gw-1",
             events: list[Event] | None = None) -> bytes:
    return encode_batch(Batch(gateway, seq, 1_705_322_445_000, rs, events or []), "zstd")


async def test_batch_is_produced_keyed_and_ordered(env: Env) -> None:
    rs = readings(300)
    status, body, _ = await env.post(frame_of(rs))
    assert status == 200
    assert body == {"batch_id": "gw-1:1", "readings": 300, "events": 0,
                    "duplicate_readings": 0, "rejected": 0, "duplicate": False}
    records = await env.consume(TOPICS.readings, 3)
    assert len(records) == 3
    got = []
    for rec in records:
        batch = decode_batch(rec.value)
        assert rec.key == f"plant-a/{batch.readings[0].line}".encode()
        assert all(f"plant-a/{r.line}".encode() == rec.key for r in batch.readings)
        assert rec.header("fl-batch") == b"gw-1:1"
        got += batch.readings
    assert sorted(got, key=lambda r: r.ts_ms) == rs
    for dev in {r.device_id for r in rs}:
        mine = [r.seq or 0 for r in got if r.device_id == dev]
        assert mine == sorted(mine)


async def test_resent_batch_is_answered_again_and_produced_once(env: Env) -> None:
    frame = frame_of(readings(50, lines=1))
    first = await env.post(frame)
    env.clock.advance(30)  # the gateway retries after a timeout, freshly signed
    second = await env.post(frame)
    replay = await env.post(frame, at_ms=env.clock.now_ms() - 30_000)  # the same request
    assert first[0] == second[0] == replay[0] == 200
    assert first[1]["duplicate"] is False and second[1]["duplicate"] is True
    assert {k: v for k, v in second[1].items() if k != "duplicate"} == \
        {k: v for k, v in first[1].items() if k != "duplicate"}
    records = await env.consume(TOPICS.readings, 1)
    assert len(records) == 1 and records[0].value == frame  # one key: forwarded as received


async def test_concurrent_copies_of_a_batch_produce_once(env: Env) -> None:
    frame = frame_of(readings(120))
    answers = await asyncio.gather(*(env.post(frame) for _ in range(6)))
    assert [a[0] for a in answers] == [200] * 6
    assert sorted(a[1]["duplicate"] for a in answers) == [False] + [True] * 5
    assert env.bus.sent == 3


async def test_readings_resent_in_another_batch_are_dropped(env: Env) -> None:
    rs = readings(60)
    assert (await env.post(frame_of(rs, seq=1)))[0] == 200
    more = readings(12, seq0=10)
    status, body, _ = await env.post(frame_of(rs[:30] + more, seq=2))
    assert status == 200
    assert body["readings"] == 12 and body["duplicate_readings"] == 30
    records = await env.consume(TOPICS.readings, 4)
    assert sum(len(decode_batch(r.value).readings) for r in records) == 72


@pytest.mark.parametrize(("case", "reason"), [
    ("wrong_secret", "bad_signature"), ("expired", "expired"), ("future", "future"),
    ("unknown", "unknown_gateway"), ("mismatch", "gateway_mismatch"),
    ("unsigned", "missing_header")])
async def test_unauthenticated_requests_get_401_and_nothing_is_kept(env: Env, case: str,
                                                                    reason: str) -> None:
    frame = frame_of(readings(10))
    now = env.clock.now_ms()
    if case == "wrong_secret":
        answer = await env.post(frame, secret=b"not-the-right-secret!")
    elif case == "expired":
        answer = await env.post(frame, at_ms=now - 300_001)
    elif case == "future":
        answer = await env.post(frame, at_ms=now + 300_001)
    elif case == "unknown":
        answer = await env.post(frame, gateway="gw-9")
    elif case == "mismatch":
        answer = await env.post(frame, gateway="gw-2")  # a frame of gw-1 signed by gw-2
    else:
        async with env.http.post(env.url, data=frame,
                                 headers={"Content-Type": BATCH_CONTENT_TYPE}) as resp:
            answer = (resp.status, await resp.json(), resp)
    assert answer[0] == 401 and answer[1]["error"] == reason
    assert env.bus.sent == 0
    metrics = await (await env.http.get(env.service.url + "/metrics")).text()
    assert f'fieldlink_ingest_auth_failures_total{{reason="{reason}"}} 1.0' in metrics


async def test_undecodable_frame_is_400_and_dead_lettered(env: Env) -> None:
    frame = bytearray(frame_of(readings(10)))
    frame[-3] ^= 0xFF  # the body changed, the header checksum did not
    status, body, _ = await env.post(bytes(frame))
    assert status == 400 and body["error"] == "checksum_mismatch"
    (dead,) = await env.consume(TOPICS.deadletter, 1)
    assert dead.value == bytes(frame)
    assert dead.header("fl-reason") == b"checksum_mismatch"
    assert dead.header("fl-gateway") == b"gw-1" and dead.header("fl-stage") == b"frame"
    status, body, _ = await env.post(b"not a frame at all")
    assert status == 400 and body["error"] == "malformed"


async def test_invalid_readings_are_dead_lettered_and_the_rest_accepted(env: Env) -> None:
    rs = readings(20)
    bad = [replace(rs[3], value=math.nan), replace(rs[4], ts_ms=5)]
    status, body, _ = await env.post(frame_of(rs[:3] + bad + rs[5:]))
    assert status == 200
    assert body["readings"] == 18 and body["rejected"] == 2
    (dead,) = await env.consume(TOPICS.deadletter, 1)
    refused = decode_batch(dead.value).readings
    assert [r.seq for r in refused] == [bad[0].seq, bad[1].seq] and math.isnan(refused[0].value)
    assert json.loads(dead.header("fl-reasons") or b"") == ["non_finite",
                                                            "timestamp_out_of_range"]


async def test_events_are_produced_to_their_topics(env: Env) -> None:
    events = [Event("aggregate", b"a" * 16, 1_705_322_445_000, "dev-1", {"mean": 1.0}),
              Event("alert", b"b" * 16, 1_705_322_445_001, "dev-2", {"state": "firing"}),
              Event("bogus", b"c" * 16, 1_705_322_445_002, "dev-3", {})]
    status, body, _ = await env.post(frame_of(readings(6), events=events))
    assert status == 200 and body["events"] == 2 and body["rejected"] == 1
    (agg,) = await env.consume(TOPICS.aggregates, 1)
    (alert,) = await env.consume(TOPICS.alerts, 1)
    assert decode_batch(agg.value).events == events[:1] and agg.key == b"dev-1"
    assert decode_batch(alert.value).events == events[1:2]
    (dead,) = await env.consume(TOPICS.deadletter, 1)
    assert decode_batch(dead.value).events == events[2:]


async def test_oversize_is_413_before_the_body_is_read(env: Env) -> None:
    big = b"x" * 70_000
    signed = sign_request(SECRETS["gw-1"], "gw-1", big, env.clock.now_ms())
    signed["Content-Type"] = BATCH_CONTENT_TYPE
    async with env.http.post(env.url, data=big, headers=signed) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 10_000

    async with env.http.post(env.url, data=chunks(), headers=signed) as resp:
        assert resp.status == 413
    assert env.bus.sent == 0


async def test_wrong_content_type_is_415(env: Env) -> None:
    status, body, _ = await env.post(frame_of(readings(3)),
                                     headers={"Content-Type": "application/json"})
    assert status == 415 and body["error"] == "unsupported_media_type"


async def test_bus_down_is_503_with_retry_after_and_the_retry_produces(env: Env) -> None:
    frame = frame_of(readings(40))
    env.bus.down = True
    status, body, resp = await env.post(frame)
    assert status == 503 and resp.headers["Retry-After"] == "5"
    assert body["error"] == "broker_unavailable"
    health = await env.http.get(env.service.url + "/healthz")
    assert health.status == 503 and (await health.json())["failed"] == ["bus"]
    env.bus.down = False
    status, body, _ = await env.post(frame)
    assert status == 200 and body["duplicate"] is False and body["readings"] == 40
    # a batch produced before the outage is still answered from the ledger during it
    env.bus.down = True
    status, body, _ = await env.post(frame)
    assert status == 200 and body["duplicate"] is True


async def test_undecodable_frame_while_the_bus_is_down_is_503(env: Env) -> None:
    env.bus.down = True
    status, _, _ = await env.post(b"garbage")
    assert status == 503  # the gateway keeps it: it could not be dead-lettered


async def test_openapi_health_and_metrics(env: Env) -> None:
    async with env.http.get(env.service.url + "/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/batches", "/healthz", "/metrics", "/openapi.json"}
    assert set(doc["paths"]["/v1/batches"]["post"]["responses"]) >= {
        "200", "400", "401", "413", "503"}
    async with env.http.get(env.service.url + "/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
    await env.post(frame_of(readings(30)))
    await env.post(frame_of(readings(30)))
    text = await (await env.http.get(env.service.url + "/metrics")).text()
    for line in ('fieldlink_ingest_requests_total{status="200"} 2.0',
                 "fieldlink_ingest_readings_produced_total 30.0",
                 'fieldlink_ingest_duplicates_total{kind="batch"} 1.0',
                 "fieldlink_ingest_request_seconds_count 2.0",
                 "fieldlink_ingest_produce_seconds_count 1.0"):
        assert line in text, line


async def test_device_key_mode(tmp_path: Path) -> None:
    settings = IngestSettings(ledger_path=tmp_path / "l.sqlite3", secrets=SECRETS, port=0,
                              topics=TOPICS, topic_specs=SPECS, key_mode="device")
    async with EmbeddedBus(tmp_path / "bus.sqlite3") as bus, \
            IngestService(settings, bus) as service, aiohttp.ClientSession() as http:
        assert await service.wait_ready(5)
        frame = frame_of(readings(24))
        headers = sign_request(SECRETS["gw-1"], "gw-1", frame, service.clock.now_ms())
        headers["Content-Type"] = BATCH_CONTENT_TYPE
        async with http.post(service.url + "/v1/batches", data=frame, headers=headers) as r:
            assert r.status == 200
        async with bus.consumer("g", [TOPICS.readings]) as c:
            records = await c.getmany(timeout_ms=1000)
    assert sorted(r.key or b"" for r in records) == [f"dev-{i}".encode() for i in range(6)]
    for rec in records:
        assert {x.device_id.encode() for x in decode_batch(rec.value).readings} == {rec.key}


async def test_gateway_key_mode_forwards_a_many_line_batch_whole(tmp_path: Path) -> None:
    settings = IngestSettings(ledger_path=tmp_path / "l.sqlite3", secrets=SECRETS, port=0,
                              topics=TOPICS, topic_specs=SPECS, key_mode="gateway")
    async with EmbeddedBus(tmp_path / "bus.sqlite3") as bus, \
            IngestService(settings, bus) as service, aiohttp.ClientSession() as http:
        assert await service.wait_ready(5)
        rs = readings(30, lines=3)
        frame = frame_of(rs)
        headers = sign_request(SECRETS["gw-1"], "gw-1", frame, service.clock.now_ms())
        headers["Content-Type"] = BATCH_CONTENT_TYPE
        async with http.post(service.url + "/v1/batches", data=frame, headers=headers) as r:
            assert r.status == 200 and (await r.json())["readings"] == 30
        async with bus.consumer("g", [TOPICS.readings]) as c:
            records = await c.getmany(timeout_ms=1000)
    assert [(r.key, r.value) for r in records] == [(b"gw-1", frame)]
    assert decode_batch(records[0].value).readings == rs
