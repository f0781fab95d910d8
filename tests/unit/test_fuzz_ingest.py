"""Hostile requests at cloud ingest's pure seams (hypothesis): request signing and batch
validation.  (The running HTTP API is fuzzed from its OpenAPI document by schemathesis in
the torture suite, tests/torture/scenarios/hostile_input.py.)

* `edge.signing.verify_request` raises `AuthError` and nothing else for any headers and
  body, and accepts only a request signed with the gateway's own secret within the window:
  a changed body, gateway id or timestamp, or another secret, is always refused.
* Any batch the codec carries — readings with NaN, infinities, bad device ids, timestamps
  out of range, unknown qualities — is split by `cloud.ingest.validate` into accepted and
  refused, every item accounted for, one documented reason per refusal, and what is
  accepted passes the checks.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest.validate import check_events, check_readings
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import MAX_TS_MS, MIN_TS_MS, Event, Reading
from edge.payload.decode import is_valid_device_id
from edge.signing import AuthError, sign_request, verify_request

NOW = 1_705_322_445_000
WINDOW = 300_000
SECRETS = {"gw-1": "secret-of-gateway-one-0123", "gw-2": "secret-of-gateway-two-0123"}
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
READING_REASONS = {"timestamp_out_of_range", "non_finite", "invalid_device_id",
                   "invalid_quality"}
EVENT_REASONS = {"unknown_event_kind", "timestamp_out_of_range", "invalid_device_id",
                 "invalid_key"}

header_value = st.one_of(st.text(max_size=80), st.sampled_from(
    ["gw-1", "gw-2", "v1=" + "0" * 64, "v1=zz", "", " ", "v2=abc,v1=", str(NOW), "-1",
     "9" * 17, "1e3"]))


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(
    ["X-Fieldlink-Gateway", "x-fieldlink-timestamp", "X-Fieldlink-Signature",
     "X-FIELDLINK-GATEWAY", "Other"]), header_value, max_size=5),
    body=st.binary(max_size=100), skew=st.integers(-10**9, 10**9))
def test_verify_raises_only_auth_errors(headers: dict[str, str], body: bytes,
                                        skew: int) -> None:
    try:
        verify_request(SECRETS, headers, body, NOW + skew, WINDOW)
    except AuthError:
        pass


@FUZZ
@given(body=st.binary(max_size=200), gateway=st.sampled_from(sorted(SECRETS)),
       change=st.sampled_from(["nothing", "body", "gateway", "timestamp", "secret", "skew"]),
       skew=st.integers(-2 * WINDOW, 2 * WINDOW), flip=st.integers(0, 7))
def test_only_an_unaltered_request_signed_with_the_right_secret_passes(
        body: bytes, gateway: str, change: str, skew: int, flip: int) -> None:
    secret = SECRETS[gateway] if change != "secret" else "a-different-secret-0123456"
    headers = sign_request(secret, gateway, body, NOW)
    if change == "body":
        body = bytes([body[0] ^ (1 << flip)]) + body[1:] if body else b"x"
    elif change == "gateway":
        headers["X-Fieldlink-Gateway"] = "gw-2" if gateway == "gw-1" else "gw-1"
    elif change == "timestamp":
        headers["X-Fieldlink-Timestamp"] = str(NOW + 1)
    now = NOW + (skew if change == "skew" else 0)
    try:
        auth = verify_request(SECRETS, headers, body, now, WINDOW)
    except AuthError as exc:
        assert change != "nothing" and not (change == "skew" and abs(skew) <= WINDOW), exc
        return
    assert change == "nothing" or (change == "skew" and abs(skew) <= WINDOW)
    assert auth.gateway_id == gateway


finite_or_not = st.one_of(st.floats(width=64), st.sampled_from([math.nan, math.inf, -math.inf]))
readings = st.builds(
    Reading,
    device_id=st.one_of(st.sampled_from(["dev-1", "dev 2", "a/b", "x+", "#", "", "dev\\",
                                         "é-3"]), st.text(max_size=10)),
    # the codec carries times within ±2**62 ms (docs/wire-format.md); validation decides
    # within that
    ts_ms=st.one_of(st.integers(-2**62, 2**62 - 1), st.integers(MIN_TS_MS, MAX_TS_MS)),
    value=finite_or_not, measurement=st.sampled_from(["temperature", "t"]),
    unit=st.just("C"), quality=st.sampled_from(["good", "uncertain", "bad", "GOOD", "weird"]),
    battery_voltage=st.one_of(st.none(), finite_or_not),
    seq=st.one_of(st.none(), st.integers(0, 2**63 - 1)), received_ms=st.just(NOW))
events = st.builds(Event, kind=st.sampled_from(["alert", "aggregate", "other", ""]),
                   key=st.binary(max_size=80),
                   ts_ms=st.one_of(st.integers(-2**62, 2**62 - 1), st.just(NOW)),
                   device_id=st.sampled_from(["dev-1", "bad id", ""]),
                   body=st.fixed_dictionaries({"k": st.integers(-2**63, 2**63 - 1)}))


@settings(FUZZ, max_examples=100)
@given(rs=st.lists(readings, max_size=12), es=st.lists(events, max_size=4))
def test_every_item_of_a_batch_is_accepted_or_refused_with_a_reason(
        rs: list[Reading], es: list[Event]) -> None:
    batch = decode_batch(encode_batch(Batch("gw-1", 7, NOW, rs, es), "zstd"))
    accepted, refused, reasons = check_readings(batch.readings)
    assert len(accepted) + len(refused) == len(batch.readings)
    assert len(reasons) == len(refused) and set(reasons) <= READING_REASONS
    for r in accepted:
        assert MIN_TS_MS <= r.ts_ms <= MAX_TS_MS and math.isfinite(r.value)
        assert r.battery_voltage is None or math.isfinite(r.battery_voltage)
        assert is_valid_device_id(r.device_id) and r.quality in ("good", "uncertain", "bad")
    ok_events, bad_events, event_reasons = check_events(batch.events)
    assert len(ok_events) + len(bad_events) == len(batch.events)
    assert len(event_reasons) == len(bad_events) and set(event_reasons) <= EVENT_REASONS
