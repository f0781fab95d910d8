"""Frames of batch format v1: header layout, checksum, typed decode errors, limits, the
encoder's refusals, compression variants, determinism and the documented round-trip cases."""

from __future__ import annotations

import gzip
import struct
import zlib

import msgpack
import pytest
import zstandard

from edge.codec import (
    HEADER_SIZE,
    MAGIC,
    Batch,
    batch_id,
    decode_batch,
    encode_batch,
    peek_header,
)
from edge.codec.body import encode_body
from edge.codec.header import pack_header
from edge.errors import (
    ChecksumMismatch,
    DecodeError,
    MalformedFrame,
    Oversize,
    TimestampOutOfRange,
    Truncated,
    UnsupportedVersion,
    ValidationError,
    WrongType,
)
from edge.model import FLAG_CLOCK_SKEW, Event, Reading

T0 = 1_705_322_445_000
SEED = Reading(device_id="sensor_001_line1", measurement="temperature", ts_ms=T0, value=72.5,
               unit="celsius", facility="factory_a", line="1", zone="assembly", quality="good",
               battery_voltage=4.8, received_ms=T0 + 12)


def _batch(readings: list[Reading] | None = None, events: list[Event] | None = None,
           **kw: object) -> Batch:
    fields: dict[str, object] = {"gateway_id": "gw-1", "sequence": 42, "created_ms": T0 + 5000}
    fields.update(kw)
    return Batch(readings=[SEED] if readings is None else readings, events=events or [],
                 **fields)  # type: ignore[arg-type]


def _frame(body: bytes, *, compression: str = "none", raw_len: int | None = None,
           readings: int = 1, events: int = 0) -> bytes:
    """A frame around arbitrary body bytes, with a correct checksum."""
    data = {"none": body, "gzip": gzip.compress(body, mtime=0),
            "zstd": zstandard.ZstdCompressor().compress(body)}[compression]
    return pack_header(compression=compression, gateway_id="gw-1", sequence=1, created_ms=2,
                       reading_count=readings, event_count=events, body=data,
                       raw_len=len(body) if raw_len is None else raw_len) + data


# --------------------------------------------------------------------------- header


def test_header_layout_is_the_documented_one() -> None:
    frame = encode_batch(_batch(), "gzip")
    (magic, version, flags, gw_len, reserved, seq, created, n_readings, n_events, body_len,
     raw_len, crc) = struct.unpack_from(">4sBBBBQQIIIII", frame)
    assert (magic, version, flags, gw_len, reserved) == (MAGIC, 1, 2, 4, 0)
    assert (seq, created, n_readings, n_events) == (42, T0 + 5000, 1, 0)
    assert frame[HEADER_SIZE:HEADER_SIZE + gw_len] == b"gw-1"
    assert body_len == len(frame) - HEADER_SIZE - gw_len
    assert crc == zlib.crc32(frame[HEADER_SIZE:], zlib.crc32(frame[:40]))
    assert zlib.decompress(frame[HEADER_SIZE + gw_len:], wbits=31)[:0] == b""
    assert raw_len == len(zlib.decompress(frame[HEADER_SIZE + gw_len:], wbits=31))


def test_peek_header_reads_without_decompressing() -> None:
    frame = encode_batch(_batch(events=[Event("alert", b"k" * 16, T0, "d", {})]), "zstd")
    # a body that no decompressor could read: peek must not care
    header = peek_header(frame)
    assert (header.gateway_id, header.sequence, header.created_ms) == ("gw-1", 42, T0 + 5000)
    assert (header.reading_count, header.event_count) == (1, 1)
    assert (header.version, header.compression) == (1, "zstd")
    assert header.batch_id == batch_id("gw-1", 42) == "gw-1:42"
    assert header.frame_len == len(frame)


def test_batch_ids_identify_gateway_and_sequence() -> None:
    assert _batch().batch_id == "gw-1:42"
    assert batch_id("gw:with:colons", 7).rsplit(":", 1) == ["gw:with:colons", "7"]


@pytest.mark.parametrize("offset", range(HEADER_SIZE + 4))
def test_any_corrupted_header_byte_is_caught(offset: int) -> None:
    frame = bytearray(encode_batch(_batch(), "zstd"))
    frame[offset] ^= 0x10
    expected: type[DecodeError] | tuple[type[DecodeError], ...]
    if offset < 4:
        expected = MalformedFrame            # not a frame at all
    elif offset == 4:
        expected = UnsupportedVersion
    elif 32 <= offset < 36 or offset == 6:
        # body_len / gateway id length: the frame no longer has the announced size
        expected = (Truncated, MalformedFrame)
    else:
        expected = ChecksumMismatch
    with pytest.raises(expected):
        decode_batch(bytes(frame))
    with pytest.raises(DecodeError):
        peek_header(bytes(frame))


def test_a_corrupted_body_byte_is_a_checksum_mismatch() -> None:
    frame = bytearray(encode_batch(_batch(), "none"))
    frame[-3] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        decode_batch(bytes(frame))


def test_verify_false_skips_only_the_checksum() -> None:
    frame = bytearray(encode_batch(_batch(), "none"))
    frame[-3] ^= 0x01
    assert peek_header(bytes(frame), verify=False).sequence == 42


def test_truncation_and_trailing_bytes() -> None:
    frame = encode_batch(_batch(), "zstd")
    for cut in (0, 2, 4, 5, 20, HEADER_SIZE, len(frame) - 1):
        with pytest.raises(Truncated):
            decode_batch(frame[:cut])
    with pytest.raises(MalformedFrame):
        decode_batch(frame + b"\x00")
    with pytest.raises(MalformedFrame):
        decode_batch(b"GARBAGE!" * 8)


def test_future_versions_are_rejected_by_version_alone() -> None:
    frame = bytearray(encode_batch(_batch(), "none"))
    frame[4] = 2
    with pytest.raises(UnsupportedVersion):
        decode_batch(bytes(frame))
    with pytest.raises(UnsupportedVersion):
        peek_header(bytes(frame[:5]))       # five bytes are enough to tell


def test_unknown_flags_and_reserved_bits_are_malformed() -> None:
    good = encode_batch(_batch(), "none")
    for offset, value in ((5, 3), (5, 0x80), (7, 1)):
        frame = bytearray(good)
        frame[offset] = value
        frame[40:44] = zlib.crc32(frame[HEADER_SIZE:], zlib.crc32(frame[:40])).to_bytes(4, "big")
        with pytest.raises(MalformedFrame):
            decode_batch(bytes(frame))


def test_non_bytes_input_is_a_decode_error() -> None:
    for junk in (None, 42, "FLNK", [1, 2]):
        with pytest.raises(MalformedFrame):
            decode_batch(junk)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- limits


def test_frame_size_limit() -> None:
    frame = encode_batch(_batch(), "none")
    with pytest.raises(MalformedFrame) as e:
        decode_batch(frame, max_frame_bytes=len(frame) - 1)
    assert e.value.reason == "oversize"


def test_absurd_counts_are_rejected_before_decoding() -> None:
    body = b"".join(encode_body([SEED], []))
    with pytest.raises(MalformedFrame) as e:
        decode_batch(_frame(body, readings=2**32 - 1))
    assert e.value.reason == "oversize"
    with pytest.raises(MalformedFrame):
        decode_batch(_frame(body, events=10**6))
    with pytest.raises(MalformedFrame):
        decode_batch(encode_batch(_batch([SEED] * 20)), max_readings=19)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_decompression_bombs_are_refused(compression: str) -> None:
    bomb = b"\x00" * 50_000_000
    # the header admits the true size: over the body limit before anything is inflated
    with pytest.raises(MalformedFrame) as e:
        decode_batch(_frame(bomb, compression=compression), max_body_bytes=10**6)
    assert e.value.reason == "oversize"
    # the header lies about the size: refused without inflating more than it announced
    with pytest.raises(MalformedFrame):
        decode_batch(_frame(bomb, compression=compression, raw_len=1000))


def test_zstd_frame_declaring_another_size_is_refused() -> None:
    body = b"".join(encode_body([SEED], []))
    with pytest.raises(MalformedFrame):
        decode_batch(_frame(body, compression="zstd", raw_len=len(body) + 1))


def test_gzip_trailing_garbage_is_refused() -> None:
    body = b"".join(encode_body([SEED], []))
    data = gzip.compress(body, mtime=0) + b"junk"
    frame = pack_header(compression="gzip", gateway_id="g", sequence=1, created_ms=1,
                        reading_count=1, event_count=0, body=data, raw_len=len(body)) + data
    with pytest.raises(MalformedFrame):
        decode_batch(frame)


def test_a_body_inconsistent_with_its_header_is_malformed() -> None:
    body = b"".join(encode_body([SEED, SEED], []))
    for readings, events in ((1, 0), (3, 0), (2, 1)):
        with pytest.raises(MalformedFrame):
            decode_batch(_frame(body, readings=readings, events=events))
    for junk in (b"", msgpack.packb([]), msgpack.packb(list(range(12))), b"\xc1"):
        with pytest.raises(MalformedFrame):
            decode_batch(_frame(junk))


# --------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("kw, error", [
    ({"gateway_id": ""}, WrongType), ({"gateway_id": 7}, WrongType),
    ({"gateway_id": "g" * 256}, Oversize), ({"gateway_id": "ü" * 128}, Oversize),
    ({"sequence": -1}, ValidationError), ({"sequence": 2**64}, ValidationError),
    ({"created_ms": 1.5}, ValidationError), ({"gateway_id": "gw-\ud800"}, WrongType),
])
def test_encoder_refuses_bad_batch_fields(kw: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        encode_batch(_batch(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("change, error", [
    ({"value": "72.5"}, WrongType), ({"value": None}, WrongType),
    ({"ts_ms": 1.0}, WrongType), ({"ts_ms": 2**62}, TimestampOutOfRange),
    ({"received_ms": -(2**62) - 1}, TimestampOutOfRange), ({"seq": 2**63}, Oversize),
    ({"seq": "1"}, WrongType), ({"battery_voltage": "4.8"}, WrongType),
    ({"line": 1}, WrongType), ({"device_id": None}, WrongType), ({"unit": None}, WrongType),
    ({"flags": None}, WrongType), ({"sensor_ts_ms": 1.5}, WrongType),
    ({"value": True}, WrongType), ({"seq": False}, WrongType),
    ({"value": 2**60 + 1}, Oversize), ({"value": 10**400}, Oversize),
    ({"battery_voltage": -(2**60) - 1}, Oversize), ({"value": -(10**400)}, Oversize),
    ({"device_id": "bad-\ud800"}, WrongType), ({"zone": "\udfff"}, WrongType),
])
def test_encoder_refuses_readings_it_cannot_carry(change: dict[str, object],
                                                  error: type) -> None:
    fields = {name: getattr(SEED, name) for name in Reading.__dataclass_fields__}
    fields.update(change)
    with pytest.raises(ValidationError) as e:
        encode_batch(_batch([SEED, Reading(**fields)]))  # type: ignore[arg-type]
    assert type(e.value) is error
    assert e.value.field == next(iter(change))


def test_encoder_refuses_what_is_not_a_reading() -> None:
    with pytest.raises(WrongType):
        encode_batch(_batch([SEED, {"device_id": "d"}]))  # type: ignore[list-item]
    with pytest.raises(WrongType):
        encode_batch(_batch([Reading(["d"], T0, 1.0)]))  # type: ignore[arg-type]


def test_encoder_refuses_bad_events() -> None:
    with pytest.raises(WrongType):
        encode_batch(_batch(events=[Event("alert", "not bytes", T0, "d")]))  # type: ignore[arg-type]
    with pytest.raises(WrongType):
        encode_batch(_batch(events=[Event("alert", b"k" * 16, T0, "d", {"x": object()})]))
    with pytest.raises(WrongType):
        encode_batch(_batch(events=[Event("alert", b"k" * 16, T0, "\ud800", {})]))
    with pytest.raises(ValueError):
        encode_batch(_batch(), compression="lz4")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_every_compression_round_trips_and_is_reported(compression: str) -> None:
    batch = _batch([SEED, SEED], [Event("aggregate", bytes(16), T0, "sensor_001_line1",
                                        {"mean": 72.5, "n": [1, 2], "none": None})])
    frame = encode_batch(batch, compression)
    decoded = decode_batch(frame)
    assert decoded == batch
    assert decoded.header is not None and decoded.header.compression == compression
    assert encode_batch(batch, compression) == frame           # deterministic


def test_empty_batch_round_trips() -> None:
    batch = Batch("gw", 0, 0)
    assert decode_batch(encode_batch(batch)) == batch


def test_floats_round_trip_bit_for_bit() -> None:
    values = [-0.0, 0.0, 0.1 + 0.2, 1 / 3, 5e-324, -1e308, 2.0**53 + 2, 72.5, 1e-7]
    readings = [Reading("d", T0 + i, v, battery_voltage=v if i % 2 else None)
                for i, v in enumerate(values)]
    out = decode_batch(encode_batch(_batch(readings))).readings
    assert [struct.pack("<d", r.value) for r in out] == [struct.pack("<d", v) for v in values]
    assert [r.battery_voltage for r in out] == [r.battery_voltage for r in readings]
    assert str(out[0].value) == "-0.0"


def test_original_order_is_kept_across_interleaved_devices() -> None:
    readings = [Reading(f"dev-{i % 7}", T0 + 1000 * (i // 7) + (-1) ** i * 3, i / 4,
                        received_ms=T0 + 40 * i, seq=i // 7) for i in range(300)]
    readings[10], readings[200] = readings[200], readings[10]   # out of order in time, too
    assert decode_batch(encode_batch(_batch(readings))).readings == readings


def test_every_reading_field_is_carried() -> None:
    reading = Reading(device_id="ü-sensor 1", ts_ms=T0, value=-12.125, measurement="vibration",
                      unit="mm/s", facility=None, line="B", zone=None, quality="bad",
                      battery_voltage=3.0, seq=2**63 - 1, received_ms=T0 + 10_000,
                      sensor_ts_ms=T0 - 10**9, flags=FLAG_CLOCK_SKEW | 0x40)
    (out,) = decode_batch(encode_batch(_batch([reading]))).readings
    assert out == reading
    assert out.idempotency_key() == reading.idempotency_key()


def test_integer_values_come_back_as_equal_floats() -> None:
    (out,) = decode_batch(encode_batch(_batch([Reading("d", T0, 7, battery_voltage=4)]))).readings
    assert (out.value, out.battery_voltage) == (7.0, 4.0)
    assert type(out.value) is float


def test_a_thousand_readings_compress_far_below_json() -> None:
    readings = [Reading(f"sensor_{d:04d}_line{d % 5}", T0 + 1000 * i + d, 20 + (i % 7) / 100,
                        unit="celsius", facility="factory_a", line=str(d % 5), zone="assembly",
                        battery_voltage=4.5, seq=i, received_ms=T0 + 1000 * i + d + 3)
                for i in range(100) for d in range(10)]
    frame = encode_batch(_batch(readings))
    assert len(frame) < 3 * len(readings)       # JSON is ~230 bytes per reading


def test_slot_filled_readings_equal_constructed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.codec import body

    batch = _batch([SEED, Reading("d", T0, -1.25, seq=3, sensor_ts_ms=T0 - 5, flags=2)])
    frame = encode_batch(batch)
    fast = decode_batch(frame).readings
    monkeypatch.setattr(body, "_SLOT_FILL", False)
    slow = decode_batch(frame).readings
    assert fast == slow == batch.readings
    assert [hash(r) for r in fast] == [hash(r) for r in slow]
    with pytest.raises(AttributeError):
        fast[0].value = 1.0  # type: ignore[misc]   # still frozen
