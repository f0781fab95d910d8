"""The uplink's pure parts: verdicts per status, Retry-After, circuit breaker, bandwidth
bucket, claim <-> frame, settings."""

from __future__ import annotations

import email.utils
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.codec import decode_batch, peek_header
from edge.config.gateway import GatewayConfig
from edge.errors import ConfigError
from edge.model import Event, Priority, Reading
from gateway.buffer import Claim, ClaimedRow
from gateway.uplink import Action, CircuitBreaker, CircuitState, TokenBucket, UplinkSettings
from gateway.uplink.frames import encode_claim, frame_for_claim, record_bytes
from gateway.uplink.verdict import from_error, from_response, parse_retry_after

NOW_MS = 1_705_322_445_000

# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(("status", "body", "action", "link_ok"), [
    (200, {"duplicate": False}, Action.ACK, True),
    (200, {"duplicate": True}, Action.ACK, True),
    (400, {"error": "checksum_mismatch"}, Action.REJECT, True),
    (422, {"error": "invalid"}, Action.HOLD, False),
    (413, {"error": "too_large"}, Action.SPLIT, True),
    (503, {"error": "broker_unavailable"}, Action.RETRY, False),
    (500, None, Action.RETRY, False),
    (502, None, Action.RETRY, False),
    (429, None, Action.RETRY, False),
    (408, None, Action.RETRY, False),
    (401, {"error": "bad_signature"}, Action.HOLD, False),
    (403, None, Action.HOLD, False),
    (404, None, Action.HOLD, False),
    (415, {"error": "unsupported_media_type"}, Action.HOLD, False),
    (202, None, Action.HOLD, False),
    (301, None, Action.HOLD, False),
])
def test_every_status_has_a_verdict(status: int, body: object, action: Action,
                                    link_ok: bool) -> None:
    v = from_response(status, {}, body, NOW_MS)
    assert (v.action, v.link_ok, v.status) == (action, link_ok, status)
    if isinstance(body, dict) and "error" in body:
        assert v.reason == body["error"]


def test_duplicate_flag_and_retry_after_are_read() -> None:
    assert from_response(200, {}, {"duplicate": True}, NOW_MS).duplicate
    assert not from_response(200, {}, {"duplicate": "yes"}, NOW_MS).duplicate
    v = from_response(503, {"Retry-After": "7"}, {"error": "bus"}, NOW_MS)
    assert v.retry_after_s == 7.0 and v.reason == "bus"
    no_answer = from_error("timeout", "10 s")
    assert no_answer.action is Action.RETRY and no_answer.status is None
    assert not no_answer.link_ok


def test_retry_after_forms() -> None:
    assert parse_retry_after("5", NOW_MS) == 5.0
    assert parse_retry_after(" 0 ", NOW_MS) == 0.0
    assert parse_retry_after(None, NOW_MS) is None
    assert parse_retry_after("soon", NOW_MS) is None
    assert parse_retry_after("-3", NOW_MS) is None
    date = email.utils.formatdate(NOW_MS / 1000 + 30, usegmt=True)
    assert parse_retry_after(date, NOW_MS) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(NOW_MS / 1000 - 30, usegmt=True)
    assert parse_retry_after(past, NOW_MS) == 0.0


# --------------------------------------------------------------------------- breaker


def test_breaker_opens_after_n_failures_and_probes_once_after_reset() -> None:
    b = CircuitBreaker(failures=3, reset_s=10.0)
    for t in (0.0, 1.0):
        assert b.admit(t) == 0.0
        b.failure(t)
        assert b.state(t) is CircuitState.CLOSED
    b.failure(2.0)
    assert b.state(2.0) is CircuitState.OPEN and b.opened == 1
    assert b.admit(5.0) == pytest.approx(7.0)
    # half-open: one probe, the others wait for it
    assert b.state(12.0) is CircuitState.HALF_OPEN
    assert b.admit(12.0) == 0.0
    assert b.admit(12.0) > 0
    b.failure(12.5)  # the probe failed: open for another reset_s
    assert b.state(13.0) is CircuitState.OPEN and b.opened == 2
    assert b.admit(22.4) > 0
    assert b.admit(22.5) == 0.0
    b.success()
    assert b.state(22.6) is CircuitState.CLOSED and b.consecutive == 0
    assert b.admit(22.6) == 0.0 and b.admit(22.6) == 0.0


def test_breaker_success_resets_the_count_and_abandon_frees_the_probe() -> None:
    b = CircuitBreaker(failures=2, reset_s=1.0)
    b.failure(0.0)
    b.success()
    b.failure(0.1)
    assert b.state(0.1) is CircuitState.CLOSED
    b.failure(0.2)
    assert b.state(0.2) is CircuitState.OPEN
    assert b.admit(1.3) == 0.0
    assert b.admit(1.3) > 0
    b.abandon()
    assert b.admit(1.3) == 0.0
    # a late failure of a request admitted before the circuit opened does not extend it
    b2 = CircuitBreaker(failures=1, reset_s=5.0)
    b2.failure(0.0)
    b2.failure(1.0)
    assert b2.admit(5.0) == 0.0


# --------------------------------------------------------------------------- bandwidth


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(100, 100_000),
       sends=st.lists(st.tuples(st.floats(0, 2.0), st.integers(1, 50_000)), min_size=1,
                      max_size=40))
def test_bucket_never_lets_more_than_burst_plus_rate_times_t(
        rate: int, sends: list[tuple[float, int]]) -> None:
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    started: list[tuple[float, int]] = []
    for gap, size in sends:
        now += gap
        wait = bucket.reserve(size, now)
        assert wait >= 0
        # the caller waits, then sends; the next reservation comes after that
        now += wait
        started.append((now, size))
    total = 0
    for t, size in started:
        total += size
        assert total <= bucket.burst + rate * t + 1e-6 * total


def test_bucket_waits_exactly_for_the_debt() -> None:
    bucket = TokenBucket(1000, burst=500, now=0.0)
    assert bucket.reserve(500, 0.0) == 0.0
    assert bucket.reserve(1000, 0.0) == pytest.approx(1.0)
    assert bucket.reserve(100, 1.0) == pytest.approx(0.1)
    assert bucket.reserve(100, 10.0) == 0.0  # idle: refilled to the burst, no more
    assert bucket.tokens == pytest.approx(400)


# --------------------------------------------------------------------------- frames


def _claim(seq: int = 5, n: int = 20, meta: bytes | None = None,
           extra: list[Reading] | None = None) -> Claim:
    readings = [Reading(f"dev-{i % 3}", NOW_MS + i * 1000, 20.0 + i / 10, unit="celsius",
                        seq=i, received_ms=NOW_MS + i * 1000 + 5) for i in range(n)]
    readings += extra or []
    alert = Event("alert", b"k" * 16, NOW_MS, "dev-1", {"rule": "hot"})
    rows = [ClaimedRow(1, Priority.ALERT, alert.key, alert)]
    rows += [ClaimedRow(i + 1, Priority.RAW, b"%16d" % i, r) for i, r in enumerate(readings)]
    return Claim(seq=seq, created_ms=NOW_MS, rows=tuple(rows), meta=meta)


def test_a_claim_encodes_to_the_same_bytes_every_time() -> None:
    claim = _claim()
    enc = encode_claim(claim, "gw-1", "zstd")
    assert enc.frame == encode_claim(claim, "gw-1", "zstd").frame
    batch = decode_batch(enc.frame)
    assert (batch.gateway_id, batch.sequence, batch.created_ms) == ("gw-1", 5, NOW_MS)
    assert batch.readings == claim.readings and batch.events == claim.events
    assert (enc.readings, enc.events, enc.stored) == (20, 1, False)


def test_the_stored_frame_is_used_when_it_belongs_to_the_claim() -> None:
    claim = _claim()
    # a frame of the same claim made differently (other compression): still the one sent
    stored = encode_claim(claim, "gw-1", "gzip").frame
    enc = frame_for_claim(_claim(meta=stored), "gw-1", "zstd")
    assert enc.stored and enc.frame == stored
    fresh = encode_claim(claim, "gw-1", "zstd").frame
    # not this claim's, damaged, or another gateway's: encoded again from the rows
    for bad in (encode_claim(_claim(seq=6), "gw-1", "zstd").frame, stored[:-1] + bytes([stored[-1] ^ 1]),
                b"junk", encode_claim(claim, "gw-2", "zstd").frame):
        enc = frame_for_claim(_claim(meta=bad), "gw-1", "zstd")
        assert not enc.stored and enc.frame == fresh
    assert peek_header(fresh).sequence == 5


def test_unencodable_rows_are_left_out_and_reported() -> None:
    bad = [Reading("dev-x", NOW_MS, 1.0, seq=2**70), Reading("dev-y", NOW_MS, "x")]  # type: ignore[arg-type]
    claim = _claim(n=4, extra=bad)
    enc = encode_claim(claim, "gw-1", "zstd")
    assert [r for r, _ in enc.unencodable] == bad
    assert {e.reason for _, e in enc.unencodable} == {"oversize", "wrong_type"}
    assert decode_batch(enc.frame).readings == claim.readings[:4]
    assert (enc.readings, enc.events) == (4, 1)
    for r in bad:
        assert record_bytes(r)


# --------------------------------------------------------------------------- settings


def test_settings_from_config_and_endpoint() -> None:
    cfg = GatewayConfig.model_validate({
        "gateway": {"id": "gw-9"},
        "uplink": {"url": "https://ingest.example.com:8700/", "gateway_secret": "s" * 20,
                   "batch_max_readings": 500, "bandwidth_bytes_per_s": "2KiB",
                   "live_share": 0.5}})
    s = UplinkSettings.from_config(cfg)
    assert s.endpoint == "https://ingest.example.com:8700/v1/batches"
    assert (s.gateway_id, s.secret, s.batch_max_records) == ("gw-9", b"s" * 20, 500)
    assert (s.bandwidth_bytes_per_s, s.live_share, s.max_in_flight) == (2048, 0.5, 1)
    same = UplinkSettings(url="http://h:1/v1/batches", gateway_id="g", secret=b"x" * 16)
    assert same.endpoint == "http://h:1/v1/batches"


def test_settings_refuse_nonsense_with_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        UplinkSettings(url="ftp://x", gateway_id="", secret=b"short", max_in_flight=0,
                       certfile=Path("c.pem"))
    keys = {k for k, _ in err.value.problems}
    assert keys == {"uplink.url", "gateway.id", "uplink.gateway_secret",
                    "uplink.max_in_flight", "uplink.tls.certfile"}
    for bad_id in ("gw.1", "é" * 128):
        with pytest.raises(ConfigError, match="gateway.id"):
            UplinkSettings(url="http://h:1", gateway_id=bad_id, secret=b"x" * 16)
