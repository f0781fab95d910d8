"""The CoAP ingress's pure decisions: content-format hints, response codes, limits."""

from __future__ import annotations

import pytest
from aiocoap.numbers.codes import Code

from edge.errors import ConfigError
from gateway.coap import CoapSettings
from gateway.coap.mapping import (
    MAX_DIAGNOSTIC_BYTES,
    code_for_rejection,
    content_type_for,
    diagnostic,
    exceeds_limit,
)


@pytest.mark.parametrize(("number", "hint"), [
    (None, None), (0, "text/plain"), (50, "application/json"), (60, "application/cbor"),
    (65001, "application/msgpack"), (110, "application/senml+json"),
    (11050, "application/json; encoding=deflate"), (12345, "application/x-coap-cf-12345")])
def test_content_format_hints(number: int | None, hint: str | None) -> None:
    assert content_type_for(number) == hint


def test_msgpack_content_format_is_configurable() -> None:
    assert content_type_for(65100, msgpack_formats=(65100,)) == "application/msgpack"
    assert content_type_for(65001, msgpack_formats=(65100,)) == "application/x-coap-cf-65001"


@pytest.mark.parametrize(("reason", "code"), [
    ("unknown_device", Code.FORBIDDEN), ("device_mismatch", Code.FORBIDDEN),
    ("unauthorized", Code.UNAUTHORIZED), ("oversize", Code.REQUEST_ENTITY_TOO_LARGE),
    ("unsupported_content_type", Code.UNSUPPORTED_CONTENT_FORMAT),
    ("unknown_encoding", Code.UNSUPPORTED_CONTENT_FORMAT),
    ("malformed_payload", Code.BAD_REQUEST), ("missing_field", Code.BAD_REQUEST),
    ("something_new", Code.BAD_REQUEST)])
def test_rejection_codes(reason: str, code: Code) -> None:
    assert code_for_rejection(reason) == code


def test_diagnostic_names_reason_and_detail_and_fits_a_datagram() -> None:
    assert diagnostic("missing_field", "value is required") == b"missing_field: value is required"
    assert diagnostic("oversize") == b"oversize"
    long = diagnostic("invalid", "é" * 1000)
    assert len(long) <= MAX_DIAGNOSTIC_BYTES and long.endswith(b"...")
    long.decode("utf-8")  # never cut inside a character


def test_limit_for_single_datagrams_and_block1_transfers() -> None:
    assert not exceeds_limit(100, 100)
    assert exceeds_limit(101, 100)
    # block 3 of 1024-byte blocks starts at offset 3072
    assert not exceeds_limit(1024, 4096, block_number=3, block_size=1024)
    assert exceeds_limit(1024, 4096, block_number=4, block_size=1024)
    # an announced total over the limit is refused at the first block
    assert exceeds_limit(1024, 4096, block_number=0, block_size=1024, size1=5000)


def test_settings_refuse_an_ack_delay_that_could_ack_before_commit() -> None:
    with pytest.raises(ConfigError) as info:
        CoapSettings(empty_ack_delay=5.0, ingest_timeout=10.0)
    assert "coap.empty_ack_delay" in str(info.value)
    with pytest.raises(ConfigError, match="coap.port"):
        CoapSettings(port=70000)
    CoapSettings(empty_ack_delay=2.0, ingest_timeout=1.0)
