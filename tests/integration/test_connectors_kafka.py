"""`fieldlink cloud connectors run` as a process: a local fake GitHub API (recorded fixtures)
and signed Stripe deliveries in, real Kafka out; cursors survive a restart, rate limits are
waited out, SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from cloud.bus import Record
from cloud.bus.kafka import KafkaBus

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "saas"))
import fake_api  # noqa: E402

SECRET = "whsec_integration_0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Connectors:
    def __init__(self, tmp: Path, kafka: Any, github_url: str) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.bootstrap = kafka.bootstrap_servers
        self.port = free_port()
        self.prefix = f"saas.github.{self.id}"
        self.stripe_topic = f"saas.stripe.{self.id}"
        self.config = tmp / "secondary.yaml"
        self.config.write_text(yaml.safe_dump({
            "cloud": {"data_dir": str(tmp / "data")},
            "kafka": {"bootstrap_servers": [self.bootstrap], "compression": "none"},
            "connectors": {
                "port": self.port, "backoff_base_s": 0.2, "backoff_cap_s": 2,
                "deadletter_topic": f"saas.dl.{self.id}",
                "github": {"enabled": True, "base_url": github_url, "repos": ["acme/widgets"],
                           "poll_interval_s": 1, "per_page": 4, "topic_prefix": self.prefix},
                "stripe": {"enabled": True, "signing_secret": SECRET,
                           "topic": self.stripe_topic}},
            "logging": {"level": "info"},
        }))
        self.log = tmp / "connectors.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.connectors.app", "run", "-c", str(self.config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))

    def cursors(self) -> str:
        return subprocess.run([sys.executable, "-m", "cloud.connectors.app", "cursors", "-c",
                               str(self.config)], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout

    async def start(self) -> None:
        self.spawn()
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            while True:
                self.check_alive()
                try:
                    async with s.get(self.url + "/healthz") as resp:
                        body = await resp.json()
                        if body["checks"]["connectors"]["detail"] != "creating topics":
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()[-3000:]
                await asyncio.sleep(0.3)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"the connectors exited {self.proc.returncode}:\n"
                        f"{self.log.read_text()[-4000:]}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    async def records(self, topic: str, at_least: int, within_s: float = 60) -> list[Record]:
        """Every record of `topic`, once there are `at_least` (then a quiet second more)."""
        out: list[Record] = []
        async with KafkaBus([self.bootstrap], compression=None) as bus:
            async with bus.consumer(f"check-{uuid.uuid4().hex}", [topic]) as c:
                deadline = time.monotonic() + within_s
                while len(out) < at_least:
                    self.check_alive()
                    assert time.monotonic() < deadline, \
                        f"{topic}: {len(out)} records\n{self.log.read_text()[-3000:]}"
                    out += await c.getmany(timeout_ms=500)
                out += await c.getmany(timeout_ms=1500)
        return out

    async def deliver(self, name: str, *, t: int | None = None) -> int:
        body = json.dumps(fake_api.stripe_event(name), indent=2).encode()
        header = fake_api.stripe_signature(body, SECRET, t or int(time.time()))
        async with aiohttp.ClientSession() as s, s.post(
                self.url + "/webhooks/stripe", data=body,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"}) as r:
            return r.status


@pytest.fixture
async def github() -> AsyncIterator[fake_api.FakeGitHub]:
    fake = fake_api.FakeGitHub(poll_interval_s=1)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def connectors(tmp_path: Path, kafka: Any, github: fake_api.FakeGitHub) -> Any:
    c = Connectors(tmp_path, kafka, github.url)
    yield c
    if c.proc is not None:
        c.proc.kill()
        c.proc.wait()


async def test_poll_receive_restart_and_rate_limits(connectors: Connectors,
                                                     github: fake_api.FakeGitHub) -> None:
    await connectors.start()
    assert await connectors.deliver("payment_intent.succeeded") == 200
    assert await connectors.deliver("charge.refunded") == 200
    assert await connectors.deliver("charge.refunded") == 200  # a retry: not produced again
    commits = await connectors.records(f"{connectors.prefix}.commits", 7)
    events = await connectors.records(f"{connectors.prefix}.events", 10)
    stripe = await connectors.records(connectors.stripe_topic, 2)
    assert len(commits) == 7 and len(events) == 10 and len(stripe) == 2
    # later rounds ask only for what is new: since=<cursor> and If-None-Match
    await asyncio.sleep(2.5)
    assert any(q.get("since") == "2024-01-16T16:45:33Z" for _, p, q, _ in github.requests
               if p.endswith("/commits"))
    assert any("If-None-Match" in h for _, p, _, h in github.requests if p.endswith("/events"))
    assert connectors.stop() == 0
    cursors = connectors.cursors()
    assert "github:acme/widgets:commits\t{\"since\": \"2024-01-16T16:45:33Z\"}" in cursors
    # while it was down: new data, and the quota is spent until a reset 8 s away
    github.add_commit("While it was down", "2024-01-18T08:00:00Z")
    github.add_event("WatchEvent")
    github.remaining = 0
    github.reset_at = time.time() + 8
    await connectors.start()
    commits = await connectors.records(f"{connectors.prefix}.commits", 8)
    events = await connectors.records(f"{connectors.prefix}.events", 11)
    assert len(commits) == 8 and len({r.key for r in commits}) == 8
    assert len(events) == 11 and len({r.key for r in events}) == 11
    async with aiohttp.ClientSession() as s, s.get(connectors.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'connectors_rate_limit_waits_total{connector="github",why="X-RateLimit-Reset"}' \
        in metrics, metrics
    assert await connectors.deliver("charge.refunded") == 200  # still a duplicate after restart
    assert await connectors.deliver("charge.succeeded", t=int(time.time()) - 3600) == 400
    stripe = await connectors.records(connectors.stripe_topic, 2)
    assert len(stripe) == 2
    assert connectors.stop() == 0
