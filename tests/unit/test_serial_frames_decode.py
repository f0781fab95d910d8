"""The serial framer's promises hold against the real decoder (edge.payload.decode): every
frame that must never become a reading is refused, with the reason the docs name."""

from __future__ import annotations

import pytest

from edge.errors import FieldlinkError, Oversize, PayloadError
from edge.payload.decode import DecodeContext, Limits, decode_payload
from gateway.serialport import PARTIAL_LINE_CONTENT_TYPE, LineFramer
from gateway.serialport.ingress import CONTENT_TYPES, PortSettings

NOW = 1_705_322_445_000


def ctx(content_type: str | None, hint: str | None = "s1") -> DecodeContext:
    return DecodeContext(received_ms=NOW, device_hint=hint, content_type=content_type)


def test_defaults_keep_the_line_cap_at_the_pipeline_payload_limit() -> None:
    # an over-long frame is max_line_bytes + 1 bytes: over the decoder's limit by one
    assert PortSettings("/dev/ttyS0").max_line_bytes == Limits().max_payload_bytes


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_an_overlong_line_is_refused_as_oversize_even_if_its_prefix_would_parse(
        fmt: str) -> None:
    limit = Limits().max_payload_bytes
    line = b"s1,1705322445000," + b"7" * (limit + 100) if fmt == "csv" else \
        b'{"device_id":"s1","value":72.5,"unit":"' + b"c" * (limit + 100) + b'"}'
    [frame] = LineFramer(limit).feed(line + b"\n")
    with pytest.raises(Oversize):
        decode_payload(frame.data, ctx(CONTENT_TYPES[fmt]))


def test_a_line_cut_off_by_a_disconnect_is_never_decoded() -> None:
    framer = LineFramer(1024)
    framer.feed(b"s1,1705322445000,72")  # the sensor meant 72.5 when it was unplugged
    rest = framer.flush()
    assert rest is not None
    assert len(decode_payload(rest.data, ctx("text/csv"))) == 1  # why it must not be tried
    with pytest.raises(PayloadError) as info:
        decode_payload(rest.data, ctx(PARTIAL_LINE_CONTENT_TYPE))
    assert info.value.reason == "unknown_encoding"


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00\x9c", b"\x00\x01\x02binary", b"{not json"])
def test_garbage_lines_are_refused_by_the_decoder(garbage: bytes) -> None:
    [frame] = LineFramer(1024).feed(garbage + b"\n")
    with pytest.raises(FieldlinkError):
        decode_payload(frame.data, ctx("application/json"))


def test_good_lines_decode_with_the_port_hints() -> None:
    frames = LineFramer(1024).feed(b'{"device_id":"s1","timestamp":1705322445000,"value":1}\r\n'
                                   b",1705322445000,2.5,celsius\n")
    [json_reading] = decode_payload(frames[0].data, ctx(CONTENT_TYPES["json"]))
    [csv_reading] = decode_payload(frames[1].data, ctx(CONTENT_TYPES["csv"]))
    assert (json_reading.device_id, json_reading.value) == ("s1", 1.0)
    assert (csv_reading.device_id, csv_reading.value, csv_reading.unit) == ("s1", 2.5, "celsius")
