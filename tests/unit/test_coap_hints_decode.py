"""Every content-type hint the CoAP ingress hands over is one the real decoder understands."""

from __future__ import annotations

import json

import cbor2
import msgpack
import pytest

from edge.errors import PayloadError
from edge.payload.decode import DecodeContext, decode_payload
from gateway.coap.mapping import content_type_for

MESSAGE = {"device_id": "s1", "timestamp": 1_705_322_445_000, "value": 72.5}


@pytest.mark.parametrize(("content_format", "payload"), [
    (50, json.dumps(MESSAGE).encode()), (60, cbor2.dumps(MESSAGE)),
    (65001, msgpack.packb(MESSAGE)), (0, b"72.5"), (0, json.dumps(MESSAGE).encode()),
    (None, b"72.5"), (None, msgpack.packb(MESSAGE))])
def test_hint_decodes(content_format: int | None, payload: bytes) -> None:
    ctx = DecodeContext(received_ms=1_705_322_445_000, device_hint="s1",
                        content_type=content_type_for(content_format))
    [reading] = decode_payload(payload, ctx)
    assert reading.device_id == "s1" and reading.value == 72.5


def test_a_format_the_decoder_cannot_read_is_refused_not_guessed() -> None:
    ctx = DecodeContext(received_ms=1_705_322_445_000, device_hint="s1",
                        content_type=content_type_for(41))  # application/xml
    with pytest.raises(PayloadError) as info:
        decode_payload(b"72.5", ctx)
    assert info.value.reason == "unknown_encoding"
