"""Golden frames pin batch format v1 byte for byte (tests/golden/codec_v1, regenerated only by
tests/golden/regen_codec_v1.py).

(a) decoding each .bin gives the batch its .json describes, and the header it lists;
(b) encoding that batch gives the .bin again — so an encoder change that alters bytes fails
    here even when it still round-trips.  Compressed bytes depend on the compression library
    too: where the installed libzstd / zlib is not the one recorded in the .json, (b) compares
    the header and the decompressed body instead of the compressed bytes.
"""

from __future__ import annotations

import json
import pathlib
import zlib
from typing import Any

import pytest
import zstandard

from edge.codec import Batch, decode_batch, encode_batch, peek_header
from edge.codec.compression import decompress
from edge.codec.header import HEADER_SIZE
from edge.model import Event, Reading

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "codec_v1"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))


def _batch(d: dict[str, Any]) -> Batch:
    return Batch(gateway_id=d["gateway_id"], sequence=d["sequence"], created_ms=d["created_ms"],
                 readings=[Reading(**r) for r in d["readings"]],
                 events=[Event(kind=e["kind"], key=bytes.fromhex(e["key"]), ts_ms=e["ts_ms"],
                               device_id=e["device_id"], body=e["body"])
                         for e in d["events"]])


def _load(name: str) -> tuple[dict[str, Any], bytes]:
    return (json.loads((GOLDEN / f"{name}.json").read_text()),
            (GOLDEN / f"{name}.bin").read_bytes())


def _same_library(description: dict[str, Any]) -> bool:
    recorded = description["libraries"]
    if description["compression"] == "zstd":
        return bool(recorded["libzstd"] == ".".join(map(str, zstandard.ZSTD_VERSION)))
    if description["compression"] == "gzip":
        return bool(recorded["zlib"] == zlib.ZLIB_RUNTIME_VERSION)
    return True


def _body(frame: bytes) -> bytes:
    header = peek_header(frame)
    start = HEADER_SIZE + len(header.gateway_id.encode())
    return decompress(frame[start:], header.compression, header.raw_len)


def test_the_fixtures_exist() -> None:
    # every compression and the shapes the format has to carry
    assert {"seed_single_zstd", "seed_single_gzip", "seed_single_none", "multi_device_zstd",
            "fleet_zstd", "with_events_zstd"} <= set(CASES)


def test_the_fleet_fixture_exercises_every_column_mode() -> None:
    import msgpack

    from edge.codec import columns as C

    description, frame = _load("fleet_zstd")
    body = msgpack.unpackb(_body(frame), raw=False)
    modes: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            if len(node) >= 3 and type(node[0]) is int and C.RAW <= node[0] <= C.SPARSE:
                modes.add(node[0])
            for item in node:
                walk(item)

    walk(body[1:-1])
    assert modes >= {C.RAW, C.CENTRED, C.DELTA, C.PACKED, C.RUNS, C.GRID, C.SPARSE}


@pytest.mark.parametrize("name", CASES)
def test_decoding_the_golden_frame_gives_the_described_batch(name: str) -> None:
    description, frame = _load(name)
    batch = decode_batch(frame)
    assert batch == _batch(description["batch"])
    assert [repr(r.value) for r in batch.readings] == \
        [repr(r["value"]) for r in description["batch"]["readings"]]   # -0.0 is not 0.0
    assert batch.header is not None
    assert batch.header.version == description["format_version"] == 1
    assert batch.header.compression == description["compression"]
    for key, value in description["header"].items():
        assert getattr(batch.header, key) == value, key


@pytest.mark.parametrize("name", CASES)
def test_encoding_the_described_batch_gives_the_golden_bytes(name: str) -> None:
    description, frame = _load(name)
    encoded = encode_batch(_batch(description["batch"]), description["compression"])
    if _same_library(description):
        assert encoded == frame, (
            f"encoder output for {name} changed: a format change needs a new version, an "
            f"intended byte change needs tests/golden/regen_codec_v1.py (see the docstring)")
    else:
        ours, theirs = peek_header(encoded), peek_header(frame)
        for key in ("version", "compression", "gateway_id", "sequence", "created_ms",
                    "reading_count", "event_count", "raw_len"):
            assert getattr(ours, key) == getattr(theirs, key), key
        assert _body(encoded) == _body(frame)


def test_seed_message_fixture_matches_the_seed() -> None:
    description, _ = _load("seed_single_zstd")
    (seed,) = _batch(description["batch"]).readings
    assert (seed.device_id, seed.measurement, seed.ts_ms, seed.value, seed.unit) == \
        ("sensor_001_line1", "temperature", 1705322445000, 72.5, "celsius")
    assert (seed.facility, seed.line, seed.zone, seed.quality, seed.battery_voltage) == \
        ("factory_a", "1", "assembly", "good", 4.8)
