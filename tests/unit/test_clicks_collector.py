"""The click collector over real HTTP on 127.0.0.1, producing to the embedded bus."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud.bus import OutRecord, Record
from cloud.bus.embedded import EmbeddedBus
from cloud.clicks.collector import ClickCollector, CollectorSettings
from cloud.errors import BrokerUnavailable
from edge.testing import FakeClock

KEY = "wk_test_0123456789"
NOW = 1_705_314_645_000


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def event(**over: Any) -> dict[str, Any]:
    e = {"event_id": str(uuid.uuid4()), "user_id": "12345", "session_id": "sess_abc123",
         "event_type": "click", "timestamp": "2024-01-15T10:30:45Z",
         "properties": {"button_text": "Add to Cart", "product_id": "prod_999", "price": 29.99,
                        "email": "bob@example.com"},
         "context": {"ip": "192.168.1.1", "user_agent": "Mozilla/5.0", "locale": "en_US"}}
    e.update(over)
    return e


class FlakyBus:
    """The embedded bus, whose producer fails the next `fail` sends (a Kafka outage)."""

    def __init__(self, bus: EmbeddedBus) -> None:
        self.bus = bus
        self.kind = bus.kind
        self.fail = 0

    def producer(self) -> FlakyBus:
        return self

    async def send_batch(self, topic: str, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("kafka did not acknowledge the records (test)")
        return await self.bus.send_batch(topic, records)

    def consumer(self, group_id: str, topics: Sequence[str]) -> Any:
        return self.bus.consumer(group_id, topics)

    async def ensure_topics(self, specs: Any) -> None:
        await self.bus.ensure_topics(specs)

    async def healthy(self) -> tuple[bool, str]:
        return await self.bus.healthy()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[ClickCollector, FlakyBus,
                                                     aiohttp.ClientSession]]:
    settings = CollectorSettings(write_keys={"web": KEY}, ids_path=tmp_path / "ids.sqlite3",
                                 partitions=3, max_body_bytes=64 * 1024, max_batch_events=50,
                                 allowed_origins=("http://shop.test",))
    async with EmbeddedBus(tmp_path / "bus.sqlite3", durable=False) as raw:
        bus = FlakyBus(raw)
        async with ClickCollector(settings, bus, clock=FakeClock(NOW)) as collector:  # type: ignore[arg-type]
            assert await collector.wait_ready(10)
            async with aiohttp.ClientSession() as session:
                yield collector, bus, session


async def read_all(bus: FlakyBus, topic: str) -> list[Record]:
    async with bus.consumer(f"reader-{uuid.uuid4()}", [topic]) as c:
        out: list[Record] = []
        while True:
            got = await c.getmany(timeout_ms=200)
            if not got:
                return out
            out += got


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with session.post(url + "/v1/batch", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_gzip_batch_is_validated_scrubbed_and_keyed_by_user(env: Any) -> None:
    collector, bus, session = env
    events = [event(user_id=f"user-{i}") for i in range(10)]
    body = gzip.compress(json.dumps({"batch": events}).encode())
    status, answer = await post(session, collector.url, body, {
        **auth(), "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert status == 200 and answer == {"success": True, "accepted": 10, "duplicates": 0,
                                        "rejected": []}
    records = await read_all(bus, "web_events")
    assert len(records) == 10
    from cloud.bus import partition_for

    for r in records:
        value = json.loads(r.value)
        assert r.key is not None and r.key == value["user_id"].encode()
        assert r.partition == partition_for(r.key, 3)
        assert "email" not in value["properties"]
        assert value["context"]["ip"] == "192.168.1.0"
        assert value["source"] == "web"
    assert "bob@example.com" not in b"".join(r.value for r in records).decode()


async def test_deflate_and_plain_bodies_and_body_write_key(env: Any) -> None:
    collector, bus, session = env
    status, answer = await post(session, collector.url,
                                zlib.compress(json.dumps({"batch": [event()]}).encode()),
                                {**auth(), "Content-Encoding": "deflate"})
    assert (status, answer["accepted"]) == (200, 1)
    # sendBeacon style: no headers, the write key in the body, text/plain
    status, answer = await post(session, collector.url,
                                json.dumps({"batch": [event()], "writeKey": KEY}).encode(),
                                {"Content-Type": "text/plain;charset=UTF-8"})
    assert (status, answer["accepted"]) == (200, 1)


async def test_duplicates_are_answered_but_produced_once(env: Any) -> None:
    collector, bus, session = env
    e = event()
    body = json.dumps({"batch": [e, e, event()]}).encode()
    status, answer = await post(session, collector.url, body, auth())
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 2, 1)
    status, answer = await post(session, collector.url, json.dumps([e]).encode(), auth())
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 0, 1)
    assert len(await read_all(bus, "web_events")) == 2
    assert await collector.ids.contains(e["event_id"])


async def test_rejections_are_counted_and_dead_lettered_with_reason(env: Any) -> None:
    collector, bus, session = env
    good = event()
    bad = [event(event_type="has space", properties={"note": "mail bob@example.com"}),
           event(timestamp="2030-01-01T00:00:00Z"), "not an object"]
    status, answer = await post(session, collector.url,
                                json.dumps({"batch": [good, *bad]}).encode(), auth())
    assert status == 200 and answer["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (1, "bad_event_type"), (2, "timestamp_in_future"), (3, "not_an_object")]
    dead = await read_all(bus, "web_events.deadletter")
    assert [r.header("reason") for r in dead] == [b"bad_event_type", b"timestamp_in_future",
                                                  b"not_an_object"]
    assert all(r.header("source") == b"web" for r in dead)
    assert b"bob@example.com" not in b"".join(r.value for r in dead)
    # a body that is not JSON: 400, dead-lettered as scrubbed text
    status, answer = await post(session, collector.url, b"{broken bob@example.com", auth())
    assert status == 400 and answer["error"] == "bad_json"
    dead = await read_all(bus, "web_events.deadletter")
    assert dead[-1].header("reason") == b"bad_json"
    assert b"bob@example.com" not in dead[-1].value and b"[email]" in dead[-1].value
    metrics = collector.metrics.rejected
    assert metrics.labels("bad_json")._value.get() == 1
    assert metrics.labels("bad_event_type")._value.get() == 1


async def test_unknown_write_key_is_401_and_not_stored(env: Any) -> None:
    collector, bus, session = env
    for headers in ({}, auth("wrong-key-123"), {"Authorization": "Basic !!!"}):
        status, answer = await post(session, collector.url, json.dumps([event()]).encode(),
                                    headers)
        assert status == 401 and answer["error"] == "auth"
    assert await read_all(bus, "web_events") == []
    assert await read_all(bus, "web_events.deadletter") == []


async def test_bus_outage_is_503_and_the_retry_is_produced(env: Any) -> None:
    collector, bus, session = env
    events = [event() for _ in range(3)]
    body = json.dumps([*events, event(event_type="")]).encode()
    bus.fail = 2  # both sends of the batch fail
    async with session.post(collector.url + "/v1/batch", data=body, headers=auth()) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert not await collector.ids.contains(events[0]["event_id"])
    status, answer = await post(session, collector.url, body, auth())
    assert (status, answer["accepted"]) == (200, 3)
    assert len(await read_all(bus, "web_events")) == 3
    assert len(await read_all(bus, "web_events.deadletter")) == 1


async def test_limits_and_gzip_bombs(env: Any) -> None:
    collector, bus, session = env
    status, answer = await post(session, collector.url,
                                json.dumps([event() for _ in range(51)]).encode(), auth())
    assert status == 400 and answer["error"] == "too_many_events"
    bomb = gzip.compress(b"[" + b" " * (10 * 1024 * 1024) + b"]")
    assert len(bomb) < 64 * 1024
    # the server closes these connections (the body was not read to its end)
    close = {"Connection": "close"}
    async with session.post(collector.url + "/v1/batch", data=bomb,
                            headers={**auth(), "Content-Encoding": "gzip", **close}) as resp:
        assert resp.status == 413
    async with session.post(collector.url + "/v1/batch", data=b"\x1f\x8b garbage",
                            headers={**auth(), "Content-Encoding": "gzip", **close}) as resp:
        assert resp.status == 400
    big = event(properties={"blob": "x" * 40_000})
    status, answer = await post(session, collector.url, json.dumps([big]).encode(), auth())
    assert status == 200 and answer["rejected"][0]["reason"] == "too_large"


async def test_cors_preflight_and_snippet(env: Any) -> None:
    collector, bus, session = env
    async with session.options(collector.url + "/v1/batch", headers={
            "Origin": "http://shop.test", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-encoding"}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://shop.test"
        assert "Content-Encoding" in resp.headers["Access-Control-Allow-Headers"]
    async with session.options(collector.url + "/v1/batch",
                               headers={"Origin": "http://evil.test"}) as resp:
        assert resp.status == 403
    async with session.get(collector.url + "/snippet.js") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/javascript"
        text = await resp.text()
        assert "CompressionStream" in text and "keepalive" in text
    async with session.get(collector.url + "/metrics") as resp:
        assert "clicks_events_total" in await resp.text()
