"""Hostile input: whatever the bytes, decode_batch and peek_header raise DecodeError
subclasses and nothing else (no IndexError, struct.error, zstd errors, MemoryError ...).

Random bytes and bit flips mostly stop at the magic or the checksum, so the deeper tests
re-seal mutated bodies with a correct checksum: that is what reaches the decompressors and
every validator of the body.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.codec import Batch, decode_batch, encode_batch, peek_header
from edge.codec.body import encode_body
from edge.codec.header import HEADER_SIZE, MAGIC, pack_header
from edge.errors import DecodeError
from edge.model import Event, Reading

T0 = 1_705_322_445_000
READINGS = ([Reading(f"sensor_{d:03d}_line{d % 3}", T0 + 1000 * i + d, 20 + (i * d % 17) / 100,
                     unit="celsius", facility="factory_a", line=str(d % 3), zone="assembly",
                     battery_voltage=4.8 if i % 5 else None, seq=i, received_ms=T0 + 1000 * i + 9)
             for i in range(30) for d in range(4)]
            + [Reading("odd", T0, 0.1 + 0.2, sensor_ts_ms=T0 - 99, flags=2)])
EVENTS = [Event("alert", bytes(16), T0, "odd", {"rule": "r", "v": [1, 2.5]})]
BATCH = Batch("gw-fuzz", 9, T0, READINGS[::-1][:50] + READINGS, EVENTS)
FRAMES = {c: encode_batch(BATCH, c) for c in ("zstd", "gzip", "none")}
BODY = b"".join(encode_body(BATCH.readings, BATCH.events))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_raises_decode_error(frame: bytes) -> None:
    try:
        decode_batch(frame, max_readings=10_000, max_body_bytes=2**20)
    except DecodeError:
        pass
    try:
        peek_header(frame)
    except DecodeError:
        pass


def _seal(body: bytes, readings: int = len(BATCH.readings), events: int = 1) -> bytes:
    return pack_header(compression="none", gateway_id="gw-fuzz", sequence=1, created_ms=1,
                       reading_count=readings, event_count=events, body=body,
                       raw_len=len(body)) + body


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _decodes_or_raises_decode_error(data)
    _decodes_or_raises_decode_error(MAGIC + b"\x01" + data)


@FUZZ
@given(st.sampled_from(sorted(FRAMES)), st.data())
def test_truncations_and_bit_flips(compression: str, data: st.DataObject) -> None:
    frame = bytearray(FRAMES[compression])
    cut = data.draw(st.integers(0, len(frame)))
    _decodes_or_raises_decode_error(bytes(frame[:cut]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] ^= 1 << data.draw(st.integers(0, 7))
    _decodes_or_raises_decode_error(bytes(frame))


@FUZZ
@given(st.data())
def test_resealed_corrupt_bodies(data: st.DataObject) -> None:
    body = bytearray(BODY)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _decodes_or_raises_decode_error(_seal(bytes(body)))
    _decodes_or_raises_decode_error(_seal(bytes(body[:cut])))
    _decodes_or_raises_decode_error(_seal(bytes(body), readings=data.draw(st.integers(0, 500)),
                                          events=data.draw(st.integers(0, 3))))


hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.integers(-3, 300),
    st.floats(), st.text(max_size=5), st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 3), st.binary(max_size=4)),
    st.lists(st.integers(-2, 70), max_size=6))


def _mutate(node: Any, rng: random.Random, value: Any) -> Any:
    """Replace one node of the section tree (chosen by rng) with `value`."""
    if isinstance(node, list) and node and rng.random() < 0.8:
        i = rng.randrange(len(node))
        copy = list(node)
        copy[i] = _mutate(node[i], rng, value)
        if rng.random() < 0.1:
            del copy[rng.randrange(len(copy))]
        return copy
    return value


@FUZZ
@given(st.integers(0, 2**32), hostile_values, st.integers(1, 3))
def test_structurally_mutated_bodies(seed: int, value: Any, times: int) -> None:
    """Well-formed msgpack with wrong shapes, types, counts and ranges inside the sections."""
    rng = random.Random(seed)
    tree = msgpack.unpackb(BODY, raw=False, strict_map_key=False)
    for _ in range(times):
        tree = _mutate(tree, rng, value)
    _decodes_or_raises_decode_error(_seal(msgpack.packb(tree, use_bin_type=True)))


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_every_single_byte_of_the_compressed_body_resealed(compression: str) -> None:
    frame = FRAMES[compression]
    start = HEADER_SIZE + len(b"gw-fuzz")
    for i in range(start, len(frame)):
        for bit in (0x01, 0x80):
            data = bytearray(frame[start:])
            data[i - start] ^= bit
            header = peek_header(frame)
            sealed = pack_header(compression=compression, gateway_id="gw-fuzz",
                                 sequence=1, created_ms=1, reading_count=header.reading_count,
                                 event_count=header.event_count, body=bytes(data),
                                 raw_len=header.raw_len) + bytes(data)
            _decodes_or_raises_decode_error(sealed)
