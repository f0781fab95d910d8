"""The uplink against the real cloud ingest service (cloud.ingest, embedded bus) on 127.0.0.1:
mutual TLS, the batch ledger answering a resend as a duplicate, a real 413 and a real 401.

Certificates are made with the openssl CLI for each run (missing openssl: skipped locally,
failed under CI=true).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from cloud.bus import TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings, Topics
from edge.codec import decode_batch
from edge.model import Event, Reading
from gateway.buffer import Buffer, BufferSettings
from gateway.uplink import Uplink, UplinkSettings
from gateway.uplink.frames import frame_for_claim
from gateway.uplink.transport import HttpTransport

GATEWAY = "gw-up-1"
SECRET = b"integration-secret-0123456789"
TOPICS = Topics("u.readings", "u.aggregates", "u.alerts", "u.deadletter")
SPECS = tuple(TopicSpec(name, 2) for name in (TOPICS.readings, TOPICS.aggregates,
                                              TOPICS.alerts, TOPICS.deadletter))
T0 = 1_705_322_400_000


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and openssl is not installed")
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
       "-subj", "/CN=fieldlink uplink test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "server.ext"), ("client", "client.ext")):
        sh("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
               d / "client.key")


@asynccontextmanager
async def ingest(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[IngestService, EmbeddedBus]]:
    settings = IngestSettings(ledger_path=tmp_path / "ledger.sqlite3",
                              secrets={GATEWAY: SECRET}, port=0, topics=TOPICS,
                              topic_specs=SPECS, shutdown_timeout_s=1.0, **kw)
    async with EmbeddedBus(tmp_path / "bus.sqlite3") as bus, \
            IngestService(settings, bus) as service:
        assert await service.wait_ready(10)
        yield service, bus


@asynccontextmanager
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    async with Buffer(BufferSettings(path=str(tmp_path / "buffer.sqlite3"),
                                     commit_interval_ms=1, check_at_open=False)) as buf:
        yield buf


def uplink_settings(url: str, **kw: Any) -> UplinkSettings:
    base: dict[str, Any] = dict(url=url, gateway_id=GATEWAY, secret=SECRET,
                                batch_max_records=200, batch_max_age_ms=0, timeout_s=5.0,
                                backoff_base_s=0.02, backoff_cap_s=0.2, poll_interval_s=0.01,
                                shutdown_grace_s=1.0)
    base.update(kw)
    return UplinkSettings(**base)


def readings(n: int, start: int = 0) -> list[Reading]:
    now = time.time_ns() // 1_000_000
    return [Reading(f"dev-{i % 7}", T0 + 1000 * i, 20 + (i % 40) / 8, unit="celsius",
                    facility="plant-a", line=str(i % 3), seq=i, received_ms=now)
            for i in range(start, start + n)]


async def until(check: Any, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        await asyncio.sleep(0.02)


async def consumed(bus: EmbeddedBus, topic: str) -> list[Any]:
    """Every record of `topic`, read by a fresh group."""
    out: list[Any] = []
    async with bus.consumer(f"check-{time.monotonic_ns()}", [topic]) as c:
        while True:
            batch = await c.getmany(timeout_ms=300)
            if not batch:
                return out
            out += batch


def reading_keys(records: list[Any]) -> list[tuple[str, int | None]]:
    return [(r.device_id, r.seq) for rec in records for r in decode_batch(rec.value).readings]


async def test_mutual_tls_delivers_readings_and_alerts_once(tmp_path: Path, pki: Pki) -> None:
    async with ingest(tmp_path, tls_enabled=True, tls_certfile=pki.server_cert,
                      tls_keyfile=pki.server_key, tls_cafile=pki.ca,
                      tls_require_client_cert=True) as (service, bus), \
            buffer(tmp_path) as buf:
        assert service.url.startswith("https://")
        await buf.append(readings(700))
        await buf.append_events([Event("alert", b"A" * 16, T0, "dev-3", {"rule": "hot"})])
        settings = uplink_settings(service.url, cafile=pki.ca, certfile=pki.client_cert,
                                   keyfile=pki.client_key)
        async with Uplink(buf, settings) as up:
            await until(lambda: sum(buf.stats().rows.values()) == 0, what="drained")
            st = up.stats()
        assert (st.readings_sent, st.events_sent, st.batches_failed) == (700, 1, 0)
        keys = reading_keys(await consumed(bus, TOPICS.readings))
        assert sorted(keys, key=lambda k: k[1] or 0) == [(f"dev-{i % 7}", i) for i in range(700)]
        alerts = [e for rec in await consumed(bus, TOPICS.alerts)
                  for e in decode_batch(rec.value).events]
        assert [(a.kind, a.key) for a in alerts] == [("alert", b"A" * 16)]


async def test_tls_without_client_certificate_or_trust_keeps_everything(
        tmp_path: Path, pki: Pki) -> None:
    async with ingest(tmp_path, tls_enabled=True, tls_certfile=pki.server_cert,
                      tls_keyfile=pki.server_key, tls_cafile=pki.ca,
                      tls_require_client_cert=True) as (service, bus), \
            buffer(tmp_path) as buf:
        await buf.append(readings(50))
        for settings in (uplink_settings(service.url, cafile=pki.ca),  # no client cert
                         uplink_settings(service.url)):                 # server not trusted
            async with Uplink(buf, settings) as up:
                await until(lambda: up.stats().batches_failed >= 2, what="refused handshakes")
                st = up.stats()
            assert st.batches_sent == 0 and st.uplink_down_since_ms is not None
            assert sum(buf.stats().rows.values()) == 50
        assert "tls" in st.failures_by_reason
        assert await consumed(bus, TOPICS.readings) == []


async def test_a_batch_the_cloud_already_has_is_answered_duplicate_and_acked(
        tmp_path: Path) -> None:
    async with ingest(tmp_path) as (service, bus), buffer(tmp_path) as buf:
        await buf.append(readings(120))
        settings = uplink_settings(service.url)
        # a previous run posted claim 1 and died before its ack
        claim = await buf.claim(120, 0.0)
        assert claim is not None
        frame = frame_for_claim(claim, GATEWAY, "zstd").frame
        await buf.set_claim_meta(claim, frame)
        async with HttpTransport(settings, buf.clock) as transport:
            first = await transport.post(frame)
        assert first.verdict.status == 200 and not first.verdict.duplicate
        await buf.append(readings(30, start=120))
        async with Uplink(buf, settings) as up:
            await until(lambda: sum(buf.stats().rows.values()) == 0, what="drained")
            st = up.stats()
        assert (st.resent_at_start, st.batches_duplicate, st.batches_sent) == (1, 1, 2)
        keys = reading_keys(await consumed(bus, TOPICS.readings))
        assert sorted(k[1] or 0 for k in keys) == list(range(150)), "each reading once"


async def test_real_413_splits_and_real_401_holds(tmp_path: Path) -> None:
    async with ingest(tmp_path, max_body_bytes=1500) as (service, bus), \
            buffer(tmp_path) as buf:
        rs = readings(600)
        rs = [replace(r, value=r.value + (i * 7919 % 1000) / 997) for i, r in enumerate(rs)]
        await buf.append(rs)
        wrong = uplink_settings(service.url, secret=b"not-the-registered-secret")
        async with Uplink(buf, wrong) as up:
            await until(lambda: up.stats().batches_failed >= 2, what="401s")
            ok, detail = up.health()
            assert not ok and "401" in detail
        assert sum(buf.stats().rows.values()) == 600
        async with Uplink(buf, uplink_settings(service.url, batch_max_records=600)) as up:
            await until(lambda: sum(buf.stats().rows.values()) == 0, what="drained")
            st = up.stats()
        assert st.batches_split >= 1 and st.rejected_by_status.get("413", 0) >= 1
        assert st.batch_max_records < 600 and st.batches_rejected == 0
        keys = reading_keys(await consumed(bus, TOPICS.readings))
        assert sorted(k[1] or 0 for k in keys) == list(range(600))
