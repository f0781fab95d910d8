"""The browser snippet in headless Chromium against the collector and real Kafka.

A test page is served by the test from its own origin (so every batch is a real cross-origin
request with a CORS preflight); the snippet comes from the collector's /snippet.js.  What
reaches Kafka is read back with a consumer.  Chromium is Debian's (`/usr/bin/chromium`), driven
by Playwright; it is never downloaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud.bus import OutRecord, Record
from cloud.bus.kafka import KafkaBus
from cloud.clicks.collector import ClickCollector, CollectorSettings
from cloud.errors import BrokerUnavailable

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
KEY = "wk_browser_test_key"

PAGE = """<!doctype html>
<html><head><title>shop</title>
<script>window.fieldlink = {options: %(options)s};</script>
<script src="%(collector)s/snippet.js" data-write-key="%(key)s"></script>
</head><body>
<button id="add" data-track="click" data-track-product_id="prod_999"
        data-track-price="29.99">Add to Cart</button>
<a id="next" href="/other">next</a>
</body></html>
"""


def _browser_or_fail() -> None:
    reason = None
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


class FlakyBus:
    """The Kafka bus, refusing the next `fail` sends as an outage would (503 to the browser)."""

    def __init__(self, bus: KafkaBus) -> None:
        self.bus = bus
        self.kind = bus.kind
        self.fail = 0

    def producer(self) -> FlakyBus:
        return self

    async def send_batch(self, topic: str, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("kafka did not acknowledge the records (test outage)")
        return await self.bus.send_batch(topic, records)

    def consumer(self, group_id: str, topics: Sequence[str]) -> Any:
        return self.bus.consumer(group_id, topics)

    async def ensure_topics(self, specs: Any) -> None:
        await self.bus.ensure_topics(specs)

    async def healthy(self) -> tuple[bool, str]:
        return await self.bus.healthy()


class Env:
    def __init__(self, collector: ClickCollector, bus: FlakyBus, topic: str, page_url: str,
                 browser: Any, options: dict[str, Any]) -> None:
        #: window.fieldlink.options of the next page served
        self.options = options
        self.collector = collector
        self.bus = bus
        self.topic = topic
        self.page_url = page_url
        self.browser = browser

    async def events(self, n: int, within_s: float = 30.0) -> list[dict[str, Any]]:
        """The first `n` events on the topic (fails if fewer arrive in time)."""
        out: list[Record] = []
        async with self.bus.consumer(f"t-{uuid.uuid4().hex}", [self.topic]) as c:
            async with asyncio.timeout(within_s):
                while len(out) < n:
                    out += await c.getmany(timeout_ms=500)
            out += await c.getmany(timeout_ms=1000)  # anything beyond n would show here
        return [json.loads(r.value) for r in out]

    def metric(self, name: str, **labels: str) -> float:
        value = self.collector.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
async def env(kafka: Any, tmp_path: Path) -> AsyncIterator[Env]:
    _browser_or_fail()
    from playwright.async_api import async_playwright

    topic = f"web_events_{uuid.uuid4().hex[:10]}"
    page_app = web.Application()
    options: dict[str, Any] = {}
    collector_url: list[str] = []

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"collector": collector_url[0], "key": KEY,
                                         "options": json.dumps(options)},
                            content_type="text/html")

    async def other(request: web.Request) -> web.Response:
        return web.Response(text="<p>elsewhere</p>", content_type="text/html")

    page_app.router.add_get("/", page)
    page_app.router.add_get("/other", other)
    runner = web.AppRunner(page_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    page_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    settings = CollectorSettings(write_keys={"shop": KEY}, ids_path=tmp_path / "ids.sqlite3",
                                 topic=topic, partitions=3,
                                 deadletter_topic=f"{topic}.deadletter",
                                 allowed_origins=(page_url,))
    async with KafkaBus([kafka.bootstrap_servers], compression=None) as raw:
        assert await raw.wait_connected(30)
        bus = FlakyBus(raw)
        async with ClickCollector(settings, bus) as collector:  # type: ignore[arg-type]
            assert await collector.wait_ready(30)
            collector_url.append(collector.url)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                try:
                    yield Env(collector, bus, topic, page_url, browser, options)
                finally:
                    await browser.close()
    await runner.cleanup()


async def open_page(env: Env, **options: Any) -> Any:
    env.options.clear()
    env.options.update(options)
    page = await env.browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/v1/batch") else None)
    page.requests = requests
    await page.goto(env.page_url + "/")
    await page.wait_for_function("window.fieldlink && window.fieldlink._loaded")
    return page


async def test_clicks_arrive_in_kafka_as_gzip_batches(env: Env) -> None:
    page = await open_page(env)
    for _ in range(3):
        await page.click("#add")
    assert await page.evaluate("fieldlink.pending()") == 3
    # the 5 s timer sends the batch
    events = await env.events(3, within_s=20)
    assert len(events) == 3
    assert {e["event_type"] for e in events} == {"click"}
    assert events[0]["properties"] == {"product_id": "prod_999", "price": 29.99,
                                       "button_text": "Add to Cart"}
    assert len({e["event_id"] for e in events}) == 3
    assert len({e["user_id"] for e in events}) == 1
    assert events[0]["session_id"].startswith("sess_")
    assert events[0]["context"]["user_agent"].startswith("Mozilla/5.0")
    posts = [r for r in page.requests if r.method == "POST"]
    assert len(posts) == 1
    headers = await posts[0].all_headers()
    assert headers["content-encoding"] == "gzip"
    assert headers["authorization"].startswith("Basic ")
    assert env.metric("clicks_request_encodings_total", encoding="gzip") == 1
    assert await page.evaluate("fieldlink.stats.gzip") == 1
    await page.close()


async def test_a_full_batch_of_100_is_sent_at_once(env: Env) -> None:
    page = await open_page(env, flushMs=60_000)
    await page.evaluate("for (let i = 0; i < 250; i++) fieldlink.track('view', {i: i})")
    # 100 + 100 now, without waiting for the timer; 50 stay queued
    events = await env.events(200, within_s=15)
    assert len(events) == 200
    assert await page.evaluate("fieldlink.pending()") == 50
    assert len([r for r in page.requests if r.method == "POST"]) == 2
    await page.close()


async def test_hidden_page_flushes_with_keepalive(env: Env) -> None:
    page = await open_page(env, flushMs=60_000)
    await page.evaluate("fieldlink.track('click', {n: 1}); fieldlink.track('scroll', {n: 2})")
    await page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'hidden',
                                                            configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    events = await env.events(2, within_s=15)
    assert sorted(e["event_type"] for e in events) == ["click", "scroll"]
    assert await page.evaluate("fieldlink.stats.hidden_flushes") == 1
    posts = [r for r in page.requests if r.method == "POST"]
    assert len(posts) == 1
    headers = await posts[0].all_headers()
    assert "content-encoding" not in headers and "authorization" not in headers
    assert json.loads(posts[0].post_data)["writeKey"] == KEY
    await page.close()


async def test_leaving_the_page_flushes_what_is_queued(env: Env) -> None:
    page = await open_page(env, flushMs=60_000)
    await page.click("#add")
    await page.click("#add")
    await page.click("#next")  # navigation: pagehide
    await page.wait_for_url("**/other")
    events = await env.events(2, within_s=15)
    assert [e["event_type"] for e in events] == ["click", "click"]
    await page.close()


async def test_collector_503_makes_the_snippet_retry(env: Env) -> None:
    page = await open_page(env, flushMs=200, baseDelayMs=300)
    env.bus.fail = 1
    await page.click("#add")
    events = await env.events(1, within_s=20)
    assert len(events) == 1
    assert env.metric("clicks_requests_total", status="503") == 1
    assert env.metric("clicks_requests_total", status="200") == 1
    assert await page.evaluate("fieldlink.stats.retries") == 1
    posts = [r for r in page.requests if r.method == "POST"]
    assert len(posts) == 2
    await page.close()
