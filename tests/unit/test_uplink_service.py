"""The uplink against a scripted cloud ingest on 127.0.0.1 (tests/unit/test_uplink_cloud.py):
a real buffer file, real HTTP, real signatures and frames.

What must hold: a batch leaves the buffer only after a 200 (or a definitive 400, with a local
dead-letter copy); every resend of a batch is byte-identical, also after a crash; failures
back off, honour Retry-After and open the circuit breaker; the bandwidth cap holds; the
backlog drains with live data in every batch and in order per device.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from test_uplink_cloud import GATEWAY, SECRET, Answer, FakeIngest, Hang, fake_ingest

from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Event, Reading
from gateway.buffer import Buffer, BufferSettings
from gateway.http.metrics import UPLINK_FIELDS, map_snapshot
from gateway.uplink import Uplink, UplinkSettings

T0 = 1_705_322_400_000


def _settings(url: str, **kw: Any) -> UplinkSettings:
    base: dict[str, Any] = dict(
        url=url, gateway_id=GATEWAY, secret=SECRET, batch_max_records=100,
        batch_max_age_ms=0, timeout_s=2.0, backoff_base_s=0.01, backoff_cap_s=0.05,
        breaker_failures=1000, breaker_reset_s=1.0, poll_interval_s=0.01,
        shutdown_grace_s=1.0)
    base.update(kw)
    return UplinkSettings(**base)


def _readings(n: int, *, devices: int = 4, start: int = 0, received_ms: int | None = None,
              noisy: bool = False) -> list[Reading]:
    now = time.time_ns() // 1_000_000
    rng = random.Random(start)
    return [Reading(f"dev-{i % devices}", T0 + i * 100,
                    rng.uniform(0, 100) if noisy else 20.0 + (i % 50) / 10, unit="celsius",
                    seq=i, received_ms=received_ms if received_ms is not None else now)
            for i in range(start, start + n)]


@asynccontextmanager
async def _buffer(path: Path, **kw: Any) -> AsyncIterator[Buffer]:
    async with Buffer(BufferSettings(path=str(path), commit_interval_ms=1,
                                     check_at_open=False, **kw)) as buf:
        yield buf


async def _until(check: Callable[[], Any], timeout_s: float = 10.0,
                 what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        await asyncio.sleep(0.01)


def _seq(r: Reading) -> int:
    assert r.seq is not None
    return r.seq


def _rows(buf: Buffer) -> int:
    return sum(buf.stats().rows.values())


# --------------------------------------------------------------------------- happy path


async def test_everything_is_sent_signed_in_sequence_and_acked(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        sent = _readings(1050)
        await buf.append(sent)
        async with Uplink(buf, _settings(cloud.url)) as up:
            await _until(lambda: _rows(buf) == 0, what="buffer drained")
            st = up.stats()
        assert cloud.auth_failures == []
        assert sorted(cloud.readings(), key=lambda r: r.seq) == sent
        seqs = [b.sequence for b in cloud.order]
        assert seqs == sorted(seqs) and len(seqs) == 11
        assert all(len(b.readings) <= 100 for b in cloud.order)
        assert (st.batches_sent, st.readings_sent, st.batches_failed) == (11, 1050, 0)
        assert st.retries == 0 and st.uplink_down_since_ms is None
        assert st.bytes_per_reading is not None and 0 < st.bytes_per_reading < 100
        assert st.latency_ms_last is not None and st.latency_ms_avg is not None
        assert st.bytes_sent >= sum(len(r.body) for r in cloud.requests)
        assert buf.stats().acked["raw"] == 1050
        families = {f for f, _, _ in map_snapshot(st, UPLINK_FIELDS)}
        assert {"uplink_batches", "uplink_readings", "uplink_bytes", "uplink_retries",
                "uplink_latency_seconds", "uplink_circuit_open"} <= families
        assert up.health()[0]


async def test_size_and_age_triggers(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        async with Uplink(buf, _settings(cloud.url, batch_max_records=50,
                                         batch_max_age_ms=600)):
            await buf.append(_readings(10))
            await asyncio.sleep(0.3)
            assert cloud.requests == [], "10 of 50 waiting for 0.3 s: not due yet"
            await _until(lambda: cloud.order, 5, "age trigger")
            assert len(cloud.order[0].readings) == 10
        # an age limit that is never reached: only the size can trigger
        async with Uplink(buf, _settings(cloud.url, batch_max_records=50,
                                         batch_max_age_ms=3_600_000)):
            await buf.append(_readings(49, start=10))
            await asyncio.sleep(0.3)
            assert len(cloud.order) == 1, "49 of 50: not due"
            await buf.append(_readings(1, start=59))
            await _until(lambda: len(cloud.order) == 2, 10, "size trigger")
            assert len(cloud.order[1].readings) == 50


async def test_alerts_and_aggregates_go_first(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(250))
        alert = Event("alert", b"a" * 16, T0, "dev-1", {"rule": "hot"})
        agg = Event("aggregate", b"g" * 16, T0, "dev-2", {"mean": 1.0})
        await buf.append_events([agg, alert])
        async with Uplink(buf, _settings(cloud.url)):
            await _until(lambda: _rows(buf) == 0)
        first = cloud.order[0]
        assert [e.kind for e in first.events] == ["alert", "aggregate"]
        assert len(first.readings) == 98


# --------------------------------------------------------------------------- failures


async def test_failed_attempts_resend_identical_bytes_and_ack_only_after_200(
        tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(80))
        cloud.script.extend([Answer(503, {"Retry-After": "0"}), Answer(500),
                             Hang(), Answer(429)])
        async with Uplink(buf, _settings(cloud.url, timeout_s=0.3)) as up:
            await _until(lambda: len(cloud.requests) >= 3, what="three attempts")
            # nothing acknowledged yet: every row still in the buffer, claimed
            st = buf.stats()
            assert st.rows["raw"] == 80 and st.claims_in_flight == 1
            assert up.stats().uplink_down_since_ms is not None
            assert (await buf.pending_claims())[0].meta is not None
            await _until(lambda: _rows(buf) == 0, what="drained after recovery")
            ust = up.stats()
        bodies = cloud.bodies(cloud.requests[0].sequence)
        assert len(bodies) == 5 and len(set(bodies)) == 1
        assert [r.status for r in cloud.requests] == [503, 500, None, 429, 200]
        assert (ust.batches_sent, ust.batches_failed, ust.retries) == (1, 4, 4)
        assert ust.failures_by_reason["timeout"] == 1
        assert ust.rejected_by_status == {"503": 1, "500": 1, "429": 1}
        assert ust.uplink_down_since_ms is None
        assert len(cloud.readings()) == 80


async def test_retry_after_is_a_floor_for_the_next_attempt(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(5))
        cloud.script.append(Answer(503, {"Retry-After": "1"}))
        async with Uplink(buf, _settings(cloud.url, backoff_cap_s=5.0)):
            await _until(lambda: _rows(buf) == 0)
        gap = cloud.requests[1].t - cloud.requests[0].t
        assert gap >= 0.95, f"retried {gap:.3f} s after Retry-After: 1"


async def test_lost_answer_is_resent_and_answered_as_duplicate(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(30))
        cloud.script.append(Hang(produce=True))  # the cloud took it; the answer is lost
        async with Uplink(buf, _settings(cloud.url, timeout_s=0.3)) as up:
            await _until(lambda: _rows(buf) == 0)
            st = up.stats()
        assert len(cloud.requests) == 2 and cloud.requests[0].body == cloud.requests[1].body
        assert len(cloud.order) == 1, "produced once"
        assert (st.batches_sent, st.batches_duplicate, st.readings_sent) == (1, 1, 30)


async def test_connection_refused_until_ingest_starts(tmp_path: Path) -> None:
    cloud = FakeIngest()
    await cloud.start()
    port = cloud.port
    await cloud.stop()  # the port is free again: connections are refused
    async with _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(20))
        async with Uplink(buf, _settings(f"http://127.0.0.1:{port}")) as up:
            await _until(lambda: up.stats().batches_failed >= 3, what="failures")
            st = up.stats()
            assert st.uplink_down_since_ms is not None and st.failures_by_reason["connect"] >= 3
            assert _rows(buf) == 20
            await cloud.start(port)
            try:
                await _until(lambda: _rows(buf) == 0, what="drained")
                assert up.stats().uplink_down_since_ms is None
                assert len(cloud.readings()) == 20
            finally:
                await cloud.stop()


async def test_400_is_dead_lettered_locally_acked_and_the_rest_flows(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(150))
        cloud.script.append(Answer(400, error="checksum_mismatch"))
        async with Uplink(buf, _settings(cloud.url)) as up:
            await _until(lambda: _rows(buf) == 0)
            st = up.stats()
        rejected = cloud.requests[0]
        assert rejected.status == 400 and rejected.sequence not in {b.sequence
                                                                    for b in cloud.order}
        assert (st.batches_rejected, st.readings_rejected, st.batches_sent) == (1, 100, 1)
        assert st.rejected_by_status == {"400": 1} and st.retries == 0
        dls = await buf.dead_letters(reason="cloud_rejected")
        assert len(dls) == 1 and dls[0].raw == rejected.body and dls[0].source == "uplink"
        assert "400" in dls[0].detail and "checksum_mismatch" in dls[0].detail
        assert len(decode_batch(dls[0].raw).readings) == 100


async def test_413_splits_the_batch_until_it_fits(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        rs = _readings(400)
        await buf.append(rs)
        # room for about 100 of them
        limit = len(encode_batch(Batch(GATEWAY, 1, 1, rs[:100]), "none")) + 40
        cloud.max_body_bytes = limit
        async with Uplink(buf, _settings(cloud.url, batch_max_records=400,
                                         compression="none")) as up:
            await _until(lambda: _rows(buf) == 0)
            st = up.stats()
        assert st.batches_split >= 1 and st.batches_rejected == 0
        assert st.batch_max_records < 400
        assert sorted(r.seq for r in cloud.readings()) == list(range(400))
        assert all(len(r.body) <= limit for r in cloud.requests if r.status == 200)
        assert [r.status for r in cloud.requests[:2]] == [413, 413]


async def test_401_keeps_the_batch_and_reports_unhealthy(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(10))
        cloud.secrets[GATEWAY] = b"the-cloud-has-another-secret"
        async with Uplink(buf, _settings(cloud.url)) as up:
            await _until(lambda: len(cloud.auth_failures) >= 3, what="refusals")
            ok, detail = up.health()
            assert not ok and "401" in detail and "bad_signature" in detail
            assert _rows(buf) == 10 and up.stats().batches_rejected == 0
            cloud.secrets[GATEWAY] = SECRET  # the operator fixed the secret
            await _until(lambda: _rows(buf) == 0)
            assert up.health()[0]


async def test_breaker_opens_then_half_open_probe_closes_it(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(10))
        cloud.script.extend([Answer(503)] * 4)
        s = _settings(cloud.url, breaker_failures=3, breaker_reset_s=0.8,
                      backoff_base_s=0.001, backoff_cap_s=0.002)
        async with Uplink(buf, s) as up:
            await _until(lambda: len(cloud.requests) == 3, what="three failures")
            t_open = time.monotonic()
            await _until(lambda: up.stats().circuit_open, 1, "circuit open")
            assert up.stats().circuit_state == "open" and not up.health()[0]
            # the probe failed: open again, one more probe after reset_s, which succeeds
            await _until(lambda: _rows(buf) == 0, 10)
            st = up.stats()
        # no request while the circuit was open: each probe came reset_s after the failure
        # before it (the server's clock, so a slow test cannot blur it)
        gaps = [b.t - a.t for a, b in zip(cloud.requests, cloud.requests[1:])]
        assert gaps[2] >= 0.75 and gaps[3] >= 0.75, gaps
        assert time.monotonic() - t_open >= 1.5
        assert (st.circuit_state, st.circuit_open, st.circuit_opened) == ("closed", False, 2)
        assert [r.status for r in cloud.requests] == [503] * 4 + [200]


# --------------------------------------------------------------------------- crash, shutdown


async def test_crash_then_restart_resends_the_pending_claim_identically_first(
        tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    async with fake_ingest() as cloud:
        cloud.script.append(Hang())
        async with _buffer(path) as buf:
            await buf.append(_readings(60))
            crashed = Uplink(buf, _settings(cloud.url, timeout_s=30))
            await crashed.__aenter__()
            await _until(lambda: len(cloud.requests) == 1, what="first attempt")
            # the crash: the uplink's tasks die mid-request, nothing is cleaned up
            assert crashed._runner is not None
            crashed._runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await crashed._runner
            await buf.append(_readings(40, start=60))
        first = cloud.requests[0]
        async with _buffer(path) as buf:
            pending = await buf.pending_claims()
            assert [c.seq for c in pending] == [first.sequence]
            assert pending[0].meta == first.body
            async with Uplink(buf, _settings(cloud.url)) as up:
                await _until(lambda: _rows(buf) == 0)
                st = up.stats()
        assert cloud.requests[1].body == first.body, "resent identically, before new batches"
        assert [b.sequence for b in cloud.order] == sorted(b.sequence for b in cloud.order)
        assert st.resent_at_start == 1 and st.retries == 0
        assert sorted(r.seq for r in cloud.readings()) == list(range(100))
        await crashed.transport.__aexit__()


async def test_shutdown_abandons_a_hung_attempt_within_the_grace(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    async with fake_ingest() as cloud, _buffer(path) as buf:
        await buf.append(_readings(20))
        cloud.script.append(Hang())
        up = Uplink(buf, _settings(cloud.url, timeout_s=30, shutdown_grace_s=0.3))
        async with up:
            await _until(lambda: len(cloud.requests) == 1)
            t = time.monotonic()
        assert time.monotonic() - t < 2.0
        assert all(t.get_name() != "uplink" for t in asyncio.all_tasks())
        pending = await buf.pending_claims()
        assert len(pending) == 1 and pending[0].meta == cloud.requests[0].body
        assert _rows(buf) == 20


async def test_shutdown_lets_a_quick_answer_land_and_acks_it(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(20))
        cloud.script.append(Answer(200, delay_s=0.3))
        async with Uplink(buf, _settings(cloud.url, shutdown_grace_s=3.0)):
            await _until(lambda: len(cloud.requests) == 1)
        assert _rows(buf) == 0 and await buf.pending_claims() == []


# --------------------------------------------------------------------------- flow control


async def test_bandwidth_cap_holds_over_every_window(tmp_path: Path) -> None:
    rate = 6000
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(3000, devices=50, noisy=True))
        s = _settings(cloud.url, batch_max_records=100, compression="none",
                      bandwidth_bytes_per_s=rate, bandwidth_burst_bytes=rate)
        t0 = time.monotonic()
        async with Uplink(buf, s) as up:
            await asyncio.sleep(2.5)
            st = up.stats()
            elapsed = time.monotonic() - t0
        assert len(cloud.requests) >= 4
        total = 0
        for r in cloud.requests:
            total += len(r.body)
            # bodies (the uplink counts headers too) by arrival time: never over the cap
            assert total <= rate + rate * (r.t - t0), (total, r.t - t0)
        # the uplink's own count of wire bytes (bodies and headers) of answered attempts
        assert st.bytes_sent <= rate + rate * elapsed
        assert st.throttled_ms > 1000
        # and the cap is not wildly conservative: most of it is used
        assert st.bytes_sent >= 0.6 * rate * elapsed


async def test_backlog_drains_with_live_data_in_every_batch_in_order_per_device(
        tmp_path: Path) -> None:
    old = time.time_ns() // 1_000_000 - 3_600_000
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        backlog = _readings(1500, devices=5, received_ms=old)
        await buf.append(backlog)
        stop = asyncio.Event()

        async def live_feed() -> None:
            n = 100_000
            while not stop.is_set():
                await buf.append(_readings(20, devices=5, start=n))
                n += 20
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(live_feed(), name="test-live-feed")
        await _until(lambda: _rows(buf) > 1500)
        try:
            # slow answers: the live feed keeps up with the drain
            cloud.script.extend([Answer(200, delay_s=0.03)] * 40)
            async with Uplink(buf, _settings(cloud.url, live_share=0.3)):
                await _until(lambda: buf.stats().rows["raw"] - buf.stats().claimed_rows < 200
                             and all(_seq(r) >= 100_000 for b in cloud.order[-1:]
                                     for r in b.readings), 30, "backlog drained")
        finally:
            stop.set()
            await feeder
        with_backlog = [b for b in cloud.order if any(_seq(r) < 100_000 for r in b.readings)]
        assert len(with_backlog) >= 15
        for b in with_backlog:
            live = [r for r in b.readings if _seq(r) >= 100_000]
            assert len(live) >= 1, f"batch {b.sequence} has no live reading"
        # per device: backlog rows go out in order, and inside a batch everything is ordered
        got: dict[str, list[int]] = {}
        for b in cloud.order:
            per_batch: dict[str, list[int]] = {}
            for r in b.readings:
                per_batch.setdefault(r.device_id, []).append(_seq(r))
                if _seq(r) < 100_000:
                    got.setdefault(r.device_id, []).append(_seq(r))
            assert all(s == sorted(s) for s in per_batch.values())
        assert all(s == sorted(s) for s in got.values())
        assert sum(len(s) for s in got.values()) == 1500


async def test_two_in_flight_acks_may_complete_out_of_order(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(200))
        cloud.script.extend([Answer(200, delay_s=0.6), Answer(200, delay_s=0.05)])
        async with Uplink(buf, _settings(cloud.url, max_in_flight=2)) as up:
            await _until(lambda: _rows(buf) == 0)
            st = up.stats()
        assert cloud.max_in_flight_seen == 2
        first, second = cloud.requests[0].sequence, cloud.requests[1].sequence
        assert first < second
        assert [b.sequence for b in cloud.order] == [second, first]
        assert st.batches_sent == 2 and st.readings_sent == 200


# --------------------------------------------------------------------------- robustness


async def test_a_row_the_codec_refuses_is_dead_lettered_and_the_rest_sent(
        tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        good = _readings(10)
        # the pipeline never stores such a reading; the buffer would (SQLite is typeless)
        bad = Reading("dev-bad", T0, 1.0, battery_voltage="x", seq=99,  # type: ignore[arg-type]
                      received_ms=good[0].received_ms)
        await buf.append([*good[:5], bad, *good[5:]])
        async with Uplink(buf, _settings(cloud.url)) as up:
            await _until(lambda: _rows(buf) == 0)
            st = up.stats()
        assert cloud.readings() == good
        assert (st.unencodable, st.readings_sent, st.batches_sent) == (1, 10, 1)
        dls = await buf.dead_letters(reason="unencodable")
        assert len(dls) == 1 and "wrong_type" in dls[0].detail and b"dev-bad" in dls[0].raw


async def test_an_internal_failure_restarts_from_the_pending_claims(tmp_path: Path) -> None:
    async with fake_ingest() as cloud, _buffer(tmp_path / "b.sqlite3") as buf:
        await buf.append(_readings(30))
        real = buf.pending_claims
        calls = 0

        async def flaky() -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected")
            return await real()

        buf.pending_claims = flaky  # type: ignore[method-assign]
        async with Uplink(buf, _settings(cloud.url)) as up:
            await _until(lambda: _rows(buf) == 0, 10)
            st = up.stats()
        assert calls == 2 and st.internal_errors == 1 and st.readings_sent == 30
