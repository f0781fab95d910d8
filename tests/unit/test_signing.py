"""edge.signing: the HMAC scheme between the gateway uplink and cloud ingest."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import FatalError
from edge.signing import (
    GATEWAY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    BadSignature,
    GatewayMismatch,
    MissingHeader,
    SignedRequest,
    StaleTimestamp,
    UnknownGateway,
    check_gateway,
    sign_request,
    verify_request,
)

NOW = 1_705_322_445_000
WINDOW = 300_000
SECRETS: dict[str, bytes | str] = {"gw-1": b"secret-of-gw-1-0123456789", "gw-2": "secret-of-gw-2-0123456789"}
BODY = b"FLNK\x01 some frame bytes \x00\xff"


def _verify(headers: dict[str, str], body: bytes = BODY, now: int = NOW,
            frame_gateway: str | None = None) -> SignedRequest:
    return verify_request(SECRETS, headers, body, now, WINDOW, frame_gateway=frame_gateway)


def test_valid_request_is_accepted_and_reports_the_skew() -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW - 1500)
    auth = _verify(headers)
    assert auth.gateway_id == "gw-1"
    assert auth.timestamp_ms == NOW - 1500
    assert auth.skew_ms == 1500


def test_header_format_is_the_documented_one() -> None:
    headers = sign_request("k" * 20, "gw-1", b"body", 1234)
    mac = hmac.new(b"k" * 20, b"gw-1.1234.body", hashlib.sha256).hexdigest()
    assert headers == {GATEWAY_HEADER: "gw-1", TIMESTAMP_HEADER: "1234",
                       SIGNATURE_HEADER: f"v1={mac}"}


def test_str_and_bytes_secrets_sign_alike() -> None:
    a = sign_request("secret-of-gw-2-0123456789", "gw-2", BODY, NOW)
    b = sign_request(b"secret-of-gw-2-0123456789", "gw-2", BODY, NOW)
    assert a == b
    _verify(a)


def test_wrong_secret_is_a_bad_signature() -> None:
    headers = sign_request(b"not-the-secret-of-gw-1!", "gw-1", BODY, NOW)
    with pytest.raises(BadSignature) as info:
        _verify(headers)
    assert info.value.reason == "bad_signature"
    assert "not-the-secret" not in str(info.value)


@pytest.mark.parametrize("tamper", [
    lambda b: b + b"x",
    lambda b: b[:-1],
    lambda b: bytes([b[0] ^ 1]) + b[1:],
    lambda b: b"",
])
def test_tampered_body_is_a_bad_signature(tamper) -> None:  # type: ignore[no-untyped-def]
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    with pytest.raises(BadSignature):
        _verify(headers, body=tamper(BODY))


def test_tampered_timestamp_is_a_bad_signature() -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)
    with pytest.raises(BadSignature):
        _verify(headers)


def test_gateway_swapped_in_the_header_is_refused() -> None:
    # gw-2 replays gw-1's signature under its own name: the name is signed too
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    headers[GATEWAY_HEADER] = "gw-2"
    with pytest.raises(BadSignature):
        _verify(headers)


def test_expired_and_future_timestamps_are_refused_even_when_authentic() -> None:
    old = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW - WINDOW - 1)
    with pytest.raises(StaleTimestamp) as info:
        _verify(old)
    assert info.value.reason == "expired"
    ahead = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW + WINDOW + 1)
    with pytest.raises(StaleTimestamp) as info:
        _verify(ahead)
    assert info.value.reason == "future"
    # the edges of the window are inside it
    _verify(sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW - WINDOW))
    _verify(sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW + WINDOW))


def test_replay_within_the_window_verifies_again() -> None:
    # harmless by design: ingest answers it from batch de-duplication
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    _verify(headers)
    _verify(headers, now=NOW + WINDOW)
    with pytest.raises(StaleTimestamp):
        _verify(headers, now=NOW + WINDOW + 1)


def test_unknown_gateway() -> None:
    headers = sign_request(b"whatever-secret-123456", "gw-9", BODY, NOW)
    with pytest.raises(UnknownGateway) as info:
        _verify(headers)
    assert info.value.reason == "unknown_gateway"


def test_secrets_may_be_a_function() -> None:
    headers = sign_request(b"s" * 16, "gw-x", BODY, NOW)
    auth = verify_request(lambda gw: b"s" * 16 if gw == "gw-x" else None, headers, BODY,
                          NOW, WINDOW)
    assert auth.gateway_id == "gw-x"


def test_gateway_mismatch_between_header_and_batch() -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    auth = _verify(headers, frame_gateway="gw-1")
    with pytest.raises(GatewayMismatch) as info:
        _verify(headers, frame_gateway="gw-2")
    assert info.value.reason == "gateway_mismatch"
    with pytest.raises(GatewayMismatch):
        check_gateway(auth, "gw-10")


@pytest.mark.parametrize("drop", [GATEWAY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_missing_headers(drop: str) -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    del headers[drop]
    with pytest.raises(MissingHeader) as info:
        _verify(headers)
    assert info.value.reason == "missing_header"


@pytest.mark.parametrize("value", ["", "12a", "-5", "1" * 17, "１２３"])
def test_unreadable_timestamp(value: str) -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    headers[TIMESTAMP_HEADER] = value
    with pytest.raises(MissingHeader):
        _verify(headers)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign_request(SECRETS["gw-1"], "gw-1", BODY,
                                                     NOW).items()}
    assert _verify(headers).gateway_id == "gw-1"


def test_other_schemes_are_ignored_and_v1_is_required() -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", BODY, NOW)
    v1 = headers[SIGNATURE_HEADER]
    headers[SIGNATURE_HEADER] = f"v2=abcdef, {v1}"
    _verify(headers)
    headers[SIGNATURE_HEADER] = "v2=abcdef"
    with pytest.raises(BadSignature):
        _verify(headers)
    headers[SIGNATURE_HEADER] = "v1=" + "0" * 64 + ", v1=zz\u00e9"
    with pytest.raises(BadSignature):
        _verify(headers)


def test_errors_are_fatal_auth_errors() -> None:
    for cls in (MissingHeader, UnknownGateway, BadSignature, StaleTimestamp, GatewayMismatch):
        assert issubclass(cls, AuthError) and issubclass(cls, FatalError)


@pytest.mark.parametrize("gateway", ["", "gw.1", "gw\n1"])
def test_unsignable_gateway_ids(gateway: str) -> None:
    with pytest.raises(ValueError):
        sign_request(b"s" * 16, gateway, BODY, NOW)


@given(body=st.binary(max_size=256), flip=st.integers(min_value=0, max_value=255 * 8))
def test_any_single_bit_flip_is_detected(body: bytes, flip: int) -> None:
    headers = sign_request(SECRETS["gw-1"], "gw-1", body, NOW)
    _verify(headers, body=body)
    if body:
        i = (flip // 8) % len(body)
        altered = body[:i] + bytes([body[i] ^ (1 << (flip % 8))]) + body[i + 1:]
        with pytest.raises(BadSignature):
            _verify(headers, body=altered)
