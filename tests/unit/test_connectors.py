"""SaaS connectors: rate-limit rules, signatures, the store, and the GitHub poller and Stripe
receiver against the local fake APIs (tests/fixtures/saas) with the embedded bus."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from cloud.bus import Record, TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.connectors.client import ApiClient
from cloud.connectors.github import GithubPoller
from cloud.connectors.poller import Delivery, PollLoop, PollMetrics
from cloud.connectors.ratelimit import SECONDARY_WAIT_S, decide, parse_link, retry_after_s
from cloud.connectors.service import ConnectorService
from cloud.connectors.store import ConnectorStore
from cloud.connectors.stripe import StripeReceiver, sign, verify_signature
from cloud.errors import AuthFailed, UpstreamRejected, UpstreamUnavailable
from edge.backoff import Backoff

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "saas"))
import fake_api  # noqa: E402

NOW = 1_705_314_645.0
SECRET = "whsec_test_5b0b6f1e4a7e4bb99a512c8f1f7e9d10"

# -- pure rules --------------------------------------------------------------------------------


def test_link_header_parsing() -> None:
    header = ('<https://api.github.com/repositories/1/commits?page=2>; rel="next", '
              '<https://api.github.com/repositories/1/commits?page=5>; rel="last"')
    assert parse_link(header) == {
        "next": "https://api.github.com/repositories/1/commits?page=2",
        "last": "https://api.github.com/repositories/1/commits?page=5"}
    assert parse_link('<a>; rel="prev first"') == {"prev": "a", "first": "a"}
    assert parse_link(None) == {} and parse_link("") == {} and parse_link("garbage") == {}


def test_rate_limit_decisions() -> None:
    reset = str(int(NOW) + 120)
    assert decide(200, {"X-RateLimit-Remaining": "10"}, NOW).action == "ok"
    spent = decide(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, NOW)
    assert (spent.action, spent.pause_s) == ("ok", 121.0)
    primary = decide(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}, NOW)
    assert (primary.action, primary.pause_s, primary.why) == ("wait", 121.0,
                                                              "X-RateLimit-Reset")
    secondary = decide(403, {"Retry-After": "30", "X-RateLimit-Remaining": "12"}, NOW)
    assert (secondary.action, secondary.pause_s) == ("wait", 30.0)
    silent = decide(403, {"X-RateLimit-Remaining": "12"}, NOW,
                    body_hint="You have exceeded a secondary rate limit.")
    assert (silent.action, silent.pause_s) == ("wait", SECONDARY_WAIT_S)
    assert decide(429, {}, NOW).action == "wait"
    assert decide(502, {}, NOW).action == "retry" and decide(408, {}, NOW).action == "retry"
    assert decide(403, {"X-RateLimit-Remaining": "12"}, NOW).action == "reject"
    assert decide(401, {}, NOW).action == "reject" and decide(404, {}, NOW).action == "reject"
    assert decide(304, {}, NOW).action == "ok"
    date = format_datetime(datetime.fromtimestamp(NOW + 45, UTC), usegmt=True)
    assert retry_after_s({"Retry-After": date}, NOW) == pytest.approx(45, abs=1)
    assert retry_after_s({"Retry-After": "soon"}, NOW) is None


def test_stripe_signatures() -> None:
    body = json.dumps(fake_api.stripe_event("payment_intent.succeeded")).encode()
    header = sign(body, SECRET, int(NOW))
    assert header == fake_api.stripe_signature(body, SECRET, int(NOW))
    assert verify_signature(body, header, [SECRET], now_s=NOW + 10) == int(NOW)
    # rolled secrets and several v1 signatures: any match counts
    both = header + ",v1=" + "0" * 64 + ",v0=deadbeef"
    assert verify_signature(body, both, ["whsec_old", SECRET], now_s=NOW) == int(NOW)
    cases = [(None, "no_signature"), ("v1=abc", "bad_signature_header"),
             ("t=x,v1=abc", "bad_signature_header"),
             (sign(body, "whsec_other", int(NOW)), "signature_mismatch"),
             (sign(body + b" ", SECRET, int(NOW)), "signature_mismatch")]
    for bad, reason in cases:
        with pytest.raises(AuthFailed) as info:
            verify_signature(body, bad, [SECRET], now_s=NOW)
        assert info.value.reason == reason
    with pytest.raises(AuthFailed) as info:
        verify_signature(body, header, [SECRET], now_s=NOW + 301)
    assert info.value.reason == "timestamp_out_of_tolerance"


def test_store_cursor_and_bounded_delivered_ids(tmp_path: Path) -> None:
    store = ConnectorStore(tmp_path / "s.sqlite3", keep_ids=5)
    assert store.cursor("a") == {}
    store.commit("a", cursor={"since": "2024-01-15T00:00:00Z"}, delivered=["1", "2", "3"])
    assert store.unseen("a", ["3", "4", "4", "1"]) == ["4"]
    assert store.unseen("b", ["1"]) == ["1"]  # scopes are separate
    store.commit("a", delivered=["4", "5", "6", "7"])
    assert store.unseen("a", ["1", "2", "3", "7"]) == ["1", "2"]  # the oldest were forgotten
    store.close()
    store = ConnectorStore(tmp_path / "s.sqlite3")
    assert store.cursor("a") == {"since": "2024-01-15T00:00:00Z"}
    assert store.scopes() == ["a"]
    store.close()


# -- against the fake APIs -----------------------------------------------------------------------


class Env:
    def __init__(self, github: fake_api.FakeGitHub, bus: EmbeddedBus, store: ConnectorStore,
                 tmp: Path) -> None:
        self.github = github
        self.bus = bus
        self.store = store
        self.tmp = tmp
        self.metrics = PollMetrics(CollectorRegistry())
        self.delivery = Delivery(bus, store, self.metrics)

    def api(self, **kw: Any) -> ApiClient:
        kw.setdefault("backoff", Backoff(base=0.01, cap=0.05))
        return ApiClient("github", **kw)

    async def records(self, topic: str) -> list[Record]:
        async with self.bus.consumer(f"r-{time.monotonic_ns()}", [topic]) as c:
            out: list[Record] = []
            while got := await c.getmany(timeout_ms=200):
                out += got
            return out


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    github = fake_api.FakeGitHub()
    await github.start()
    async with EmbeddedBus(tmp_path / "bus.sqlite3", durable=False) as bus:
        await bus.ensure_topics([TopicSpec("saas.github.commits", 3),
                                 TopicSpec("saas.github.events", 3),
                                 TopicSpec("saas.stripe.events", 3),
                                 TopicSpec("saas.deadletter", 1)])
        store = ConnectorStore(tmp_path / "state.sqlite3")
        try:
            yield Env(github, bus, store, tmp_path)
        finally:
            store.close()
            await github.stop()


async def test_commits_paginate_resume_from_the_cursor_and_drop_duplicates(env: Env) -> None:
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url, per_page=3)
        assert await poller.poll() == 7
        pages = [q for _, path, q, _ in env.github.requests]
        assert [q.get("page") for q in pages] == [None, "2", "3"]  # Link rel="next" followed
        assert env.store.cursor(poller.scope) == {"since": "2024-01-16T16:45:33Z"}
        # the next round asks `since` the cursor; the boundary commit is not delivered twice
        assert await poller.poll() == 0
        assert env.github.requests[-1][2]["since"] == "2024-01-16T16:45:33Z"
        new = env.github.add_commit("Fix the flaky test", "2024-01-17T09:00:00Z")
        assert await poller.poll() == 1
    records = await env.records("saas.github.commits")
    assert len(records) == 8 and len({r.key for r in records}) == 8
    last = json.loads(records[-1].value) if records[-1].key == new["sha"].encode() else \
        next(json.loads(r.value) for r in records if r.key == new["sha"].encode())
    assert last["data"]["commit"]["message"] == "Fix the flaky test"
    assert (last["source"], last["repo"], last["resource"]) == ("github", "acme/widgets",
                                                                "commits")
    assert records[0].header("repo") == b"acme/widgets"


async def test_state_survives_a_restart(env: Env) -> None:
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url)
        assert await poller.poll() == 7
    env.store.close()
    env.store = ConnectorStore(env.tmp / "state.sqlite3")
    env.delivery = Delivery(env.bus, env.store, env.metrics)
    env.github.add_commit("After the restart", "2024-01-18T10:00:00Z")
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url)
        assert await poller.poll() == 1
    assert len(await env.records("saas.github.commits")) == 8


async def test_events_use_etags_poll_interval_and_deliver_oldest_first(env: Env) -> None:
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="events",
                              base_url=env.github.url, per_page=4)
        assert await poller.poll() == 10
        assert poller.next_poll_s() == 60.0
        before = env.github.remaining
        assert await poller.poll() == 0  # 304: not modified, not counted
        assert env.github.requests[-1][3]["If-None-Match"] == env.github.etag()
        assert env.github.remaining == before
        e = env.github.add_event("WatchEvent")
        assert await poller.poll() == 1
    records = await env.records("saas.github.events")
    assert len(records) == 11
    by_partition: dict[int, list[int]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(int(r.key or b"0"))
    for ids in by_partition.values():
        assert ids == sorted(ids)  # produced oldest first
    assert max(max(v) for v in by_partition.values()) == int(e["id"])
    oldest = min(records, key=lambda r: int(r.key or b"0"))
    assert json.loads(oldest.value)["data"]["type"] == "CreateEvent"


async def test_primary_rate_limit_waits_until_the_reset(env: Env) -> None:
    env.github.remaining = 0
    env.github.reset_at = time.time() + 1.5
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url)
        started = time.monotonic()
        assert await poller.poll() == 7
        waited = time.monotonic() - started
    assert waited >= 1.0
    statuses = api.metrics.requests
    assert statuses.labels("github", "403")._value.get() == 1
    assert api.metrics.waits.labels("github", "X-RateLimit-Reset")._value.get() == 1


async def test_spending_the_quota_pauses_the_next_request(env: Env) -> None:
    env.github.remaining = 1
    env.github.reset_at = time.time() + 1.5
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url, per_page=5)
        assert await poller.poll() == 7
    # the first answer said Remaining: 0, so the second page waited instead of being refused
    assert api.metrics.requests.labels("github", "403")._value.get() == 0
    assert api.metrics.waits.labels("github", "quota spent")._value.get() == 1


async def test_secondary_limits_and_server_errors_are_retried(env: Env) -> None:
    env.github.secondary_next = 1
    env.github.fail_next = [502, 503]
    async with env.api() as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url)
        assert await poller.poll() == 7
    assert api.metrics.waits.labels("github", "Retry-After")._value.get() == 1
    assert api.metrics.retries.labels("github")._value.get() == 2


async def test_giving_up_and_refusals(env: Env) -> None:
    env.github.fail_next = [502] * 3
    async with env.api(max_attempts=3) as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url)
        with pytest.raises(UpstreamUnavailable):
            await poller.poll()
        assert env.store.cursor(poller.scope) == {}  # nothing recorded: the next round resumes
        env.github.secondary_next = 1
        env.github.retry_after_s = 7200
        with pytest.raises(UpstreamUnavailable):  # longer than max_rate_wait_s
            await poller.poll()
        wrong = GithubPoller(api, env.delivery, repo="acme/gadgets", resource="commits",
                             base_url=env.github.url)
        with pytest.raises(UpstreamRejected):
            await wrong.poll()
    env.github.token = "ghp_right"
    async with env.api(headers={"Authorization": "Bearer ghp_wrong"}) as api:
        poller = GithubPoller(api, env.delivery, repo="acme/widgets", resource="commits",
                              base_url=env.github.url)
        loop = PollLoop(poller, interval_s=0.05, metrics=env.metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop), name="poll-test")
        while loop.rounds < 2:  # noqa: ASYNC110 - polling the loop's counter
            await asyncio.sleep(0.02)
        stop.set()
        await task
        assert loop.last_error is not None and "401" in loop.last_error
        assert env.metrics.rounds.labels(poller.name, "refused")._value.get() >= 2


async def test_stripe_webhooks(env: Env) -> None:
    receiver = StripeReceiver(env.bus, env.store, secrets=[SECRET])
    service = ConnectorService(env.bus, env.store,
                               topics=[TopicSpec("saas.stripe.events", 3),
                                       TopicSpec("saas.deadletter", 1)])
    service.add_receiver(receiver)
    async with service, aiohttp.ClientSession() as http:
        assert await service.wait_ready(10)
        url = service.url + "/webhooks/stripe"

        async def deliver(body: bytes, header: str | None) -> tuple[int, Any]:
            headers = {"Content-Type": "application/json"}
            if header is not None:
                headers["Stripe-Signature"] = header
            async with http.post(url, data=body, headers=headers) as resp:
                return resp.status, await resp.json()

        now = int(time.time())
        bodies = [json.dumps(fake_api.stripe_event(name), indent=2).encode()
                  for name in ("payment_intent.succeeded", "charge.succeeded",
                               "charge.refunded", "customer.subscription.updated")]
        for body in bodies:
            assert await deliver(body, sign(body, SECRET, now)) == (200, {"received": True})
        # Stripe retries: the same event again is acknowledged, not produced twice
        assert await deliver(bodies[2], sign(bodies[2], SECRET, now + 60)) == (
            200, {"received": True, "duplicate": True})
        status, answer = await deliver(bodies[0], sign(bodies[0], "whsec_wrong", now))
        assert (status, answer["error"]) == (400, "signature_mismatch")
        status, answer = await deliver(bodies[0], sign(bodies[0], SECRET, now - 3600))
        assert (status, answer["error"]) == (400, "timestamp_out_of_tolerance")
        assert (await deliver(bodies[0], None))[0] == 400
        junk = b'{"not": "an event"}'
        status, answer = await deliver(junk, sign(junk, SECRET, now))
        assert (status, answer["error"]) == (400, "bad_event")
        async with http.get(service.url + "/metrics") as resp:
            text = await resp.text()
        assert 'connectors_webhook_deliveries_total{outcome="delivered",receiver="stripe"} 4.0' \
            in text
    records = await env.records("saas.stripe.events")
    assert [r.header("stripe-event-type") for r in records].count(b"charge.refunded") == 1
    assert len(records) == 4
    by_type = {r.header("stripe-event-type"): r for r in records}
    refund = by_type[b"charge.refunded"]
    assert refund.key == b"ch_3OaBcD2eZvKYlo2C1aBcDeFg"  # keyed by the object: ordered per charge
    assert refund.value == bodies[2]  # the event exactly as signed
    assert json.loads(refund.value)["data"]["previous_attributes"] == {"amount_refunded": 0}
    dead = await env.records("saas.deadletter")
    assert [r.header("reason") for r in dead] == [b"bad_event"]
