"""The pure column encodings of batch format v1: zig-zag, byte planes, integer modes, decimal
scaling, the string table.  No frames here (test_codec_frame.py), no hypothesis fuzzing
(test_codec_roundtrip.py / test_codec_fuzz.py)."""

from __future__ import annotations

import math
import random
import struct

import msgpack
import pytest

from edge.codec import columns as C
from edge.codec import floats as F
from edge.codec.strings import STATIC, decode_strings, encode_strings
from edge.errors import MalformedFrame


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


# --------------------------------------------------------------------------- zig-zag, planes


def test_zigzag_maps_small_magnitudes_to_small_numbers() -> None:
    assert [C.zigzag(x) for x in (0, -1, 1, -2, 2, -3)] == [0, 1, 2, 3, 4, 5]
    for x in (0, 1, -1, 2**63 - 1, -(2**63), 2**200, -(2**200) - 7):
        assert C.unzigzag(C.zigzag(x)) == x
    # the inlined form the encoder uses agrees within its documented range
    for x in (5, -5, 2**100, -(2**100)):
        assert C._zz(x) == C.zigzag(x)


@pytest.mark.parametrize("values", [[], [0, 0, 0], [1, 255, 7], [256, 0, 65535],
                                    [2**64, 3, 2**71 - 1]])
def test_planes_round_trip_and_put_low_bytes_first(values: list[int]) -> None:
    planes = C.pack_planes(values)
    assert C.unpack_planes(bytes(planes), len(values)) == values
    width = len(planes) // len(values) if values else 0
    assert planes.width == width
    if width >= 2:
        assert planes[:len(values)] == bytes(v & 0xFF for v in values)


def test_unpack_planes_rejects_inconsistent_sizes() -> None:
    with pytest.raises(MalformedFrame):
        C.unpack_planes(b"\x01\x02\x03", 2)
    with pytest.raises(MalformedFrame):
        C.unpack_planes(b"\x01", 0)
    with pytest.raises(MalformedFrame):
        C.unpack_planes(bytes(10 * (C.MAX_WIDTH + 1)), 10)
    with pytest.raises(MalformedFrame):
        C.unpack_planes([1, 2], 2)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- integer columns


def _round_trip(xs: list[int], lengths: list[int] | None = None) -> object:
    spec, cost = C.encode_ints(xs, lengths)
    assert cost >= 0
    assert C.decode_ints(spec, len(xs), lengths) == xs
    return spec


def _mode(spec: object) -> int:
    return -1 if type(spec) is int else spec[0]  # type: ignore[index]


def test_constant_column_is_a_bare_int() -> None:
    assert _round_trip([7] * 500) == 7
    assert _round_trip([]) == 0


def test_small_columns_are_bit_packed() -> None:
    spec = _round_trip([3, 1, 4, 1, 5, 9, 2, 6])
    assert _mode(spec) == C.PACKED
    assert spec[2] == 4  # type: ignore[index]   # 0..8 from the minimum: 4 bits each


def test_a_sorted_snapshot_is_delta_coded() -> None:
    xs = list(accumulate_from(1_705_322_445_000, [random.Random(1).randint(0, 3)
                                                   for _ in range(999)]))
    assert _mode(_round_trip(xs)) == C.DELTA


def accumulate_from(first: int, steps: list[int]) -> list[int]:
    out = [first]
    for s in steps:
        out.append(out[-1] + s)
    return out


def test_noise_around_a_level_is_centred() -> None:
    rng = random.Random(2)
    assert _mode(_round_trip([3 + rng.randint(-2, 2) for _ in range(1000)])) == C.CENTRED


def test_a_skewed_spread_round_trips_either_way() -> None:
    rng = random.Random(3)
    # median near the bottom: zig-zagged around it, 240 needs two bytes; from the minimum, one
    xs = [330 + (rng.randint(0, 240) if i % 3 == 0 else rng.randint(0, 15)) for i in range(999)]
    assert _mode(_round_trip(xs)) in (C.RAW, C.CENTRED)


def test_a_steady_acceleration_is_delta_of_delta() -> None:
    xs = [i * i * 3 + 11 for i in range(500)]
    assert _mode(_round_trip(xs)) == C.DOD


def test_a_mostly_constant_column_is_sparse() -> None:
    xs = [0] * 1000
    for i in range(7, 1000, 47):
        xs[i] = -1
    assert _mode(_round_trip(xs)) == C.SPARSE


def test_clock_driven_timestamps_use_the_grid() -> None:
    rng = random.Random(4)
    xs: list[int] = []
    for _device in range(10):
        phase = rng.randint(0, 999)
        xs += [1_705_322_445_000 + phase + 1000 * i + rng.randint(0, 4) for i in range(100)]
    assert _mode(_round_trip(xs, [100] * 10)) == C.GRID


def test_per_run_counters_use_runs() -> None:
    rng = random.Random(5)
    xs: list[int] = []
    for start in (rng.randint(0, 10**6) for _ in range(20)):
        xs += accumulate_from(start, [rng.choice((1, 1, 1, 2)) for _ in range(49)])
    spec = _round_trip(xs, [50] * 20)
    assert _mode(spec) in (C.RUNS, C.GRID)


def test_run_wise_modes_ignore_empty_runs() -> None:
    xs = [5, 6, 7, 100, 101, 102, 103]
    for lengths in ([3, 0, 4], [0, 3, 4, 0]):
        _round_trip(xs, lengths)


@pytest.mark.parametrize("xs", [[2**63 - 1, -(2**63), 0, 2**63 - 1],
                                [-(2**63)] * 3 + [2**63 - 1] * 70,
                                [(-1) ** i * (2**63 - 1) for i in range(100)],
                                list(range(-(2**63), -(2**63) + 200))])
def test_extreme_int64_values_round_trip(xs: list[int]) -> None:
    _round_trip(xs)
    _round_trip(xs, [1, len(xs) - 1])
    _round_trip(xs, [2] * (len(xs) // 2) + [1] * (len(xs) % 2))


def test_encode_ints_refuses_values_beyond_int64() -> None:
    with pytest.raises(ValueError):
        C.encode_ints([0, 2**63])


def test_random_columns_round_trip() -> None:
    rng = random.Random(6)
    for _ in range(200):
        n = rng.randint(0, 300)
        scale = rng.choice([1, 10, 1000, 2**40])
        xs = [rng.randint(-scale, scale) for _ in range(n)]
        lengths: list[int] = []
        left = n
        while left:
            lengths.append(rng.randint(1, left))
            left -= lengths[-1]
        _round_trip(xs, lengths)
        _round_trip(sorted(xs), lengths)


@pytest.mark.parametrize("spec", [
    "x", [], [99, 1, b""], [C.CENTRED, 1.5, b"\x00\x00"], [C.CENTRED, 0, b"\x00"],
    [C.DELTA, 0, 0, bytes(2 * C.MAX_WIDTH + 2)], [C.PACKED, 0, 0, b""], [C.PACKED, 0, 4, b"\x00" * 50],
    [C.SPARSE, 0, 5, 0, 0], [C.SPARSE, 0, 1, -1, 0], [C.RUNS, 0, 0], [C.GRID, 0, 1, 0, 0],
    [C.DOD, 0, 0, b"\x00"], [C.PACKED, 0, 4, "x"], [C.RAW, None, b"\x00\x00"],
])
def test_decode_ints_rejects_malformed_specs(spec: object) -> None:
    with pytest.raises(MalformedFrame):
        C.decode_ints(spec, 2)


# --------------------------------------------------------------------------- float columns


@pytest.mark.parametrize("values, k", [([72.5, 4.8], 1), ([21.53, 21.5], 2), ([3.0, -7.0], 0),
                                       ([0.1 + 0.2], -1), ([-0.0], -1), ([math.nan], -1),
                                       ([math.inf], -1), ([1e300], -1), ([0.001, 0.0], 3)])
def test_scale_is_the_smallest_exact_one(values: list[float], k: int) -> None:
    assert F.scale_of(values) == k


@pytest.mark.parametrize("values", [
    [72.5, 72.51, 72.49, 73.0],
    [-0.0, 0.0, -0.0],
    [0.1 + 0.2, 0.3, 1 / 3],
    [1e300, -1e-300, 5e-324, 2.0**53, 2.0**53 + 2, -(2.0**60)],
    [math.inf, -math.inf, math.nan],
])
def test_floats_round_trip_bit_for_bit(values: list[float]) -> None:
    lengths = [len(values)]
    spec, _ = F.encode_floats(values, lengths)
    out = F.decode_floats(spec, lengths)
    assert [_bits(v) for v in out] == [_bits(v) for v in values]


def test_mixed_runs_scaled_and_raw() -> None:
    values = [21.5, 21.53, 0.1 + 0.2, 7.0, 4.8, 4.79, -0.0]
    lengths = [2, 1, 0, 2, 2]
    spec, _ = F.encode_floats(values, lengths)
    assert [_bits(v) for v in F.decode_floats(spec, lengths)] == [_bits(v) for v in values]


def test_runs_at_mixed_resolution_share_one_scale() -> None:
    values = [21.5, 21.53, 22.0, 21.47]
    spec, _ = F.encode_floats(values, [1, 1, 1, 1])
    assert spec[0] == 2   # one constant scale for all four runs
    assert F.decode_floats(spec, [1, 1, 1, 1]) == values


def test_decode_floats_rejects_inconsistent_columns() -> None:
    with pytest.raises(MalformedFrame):
        F.decode_floats([-1, 0, b"\x00" * 8], [2])     # one raw float for two values
    with pytest.raises(MalformedFrame):
        F.decode_floats([F.MAX_SCALE + 1, 0, b""], [1])
    with pytest.raises(MalformedFrame):
        F.decode_floats([-1, 0, b"\x00" * 7], [1])


# --------------------------------------------------------------------------- strings


def _strings_round_trip(strings: list[str]) -> list[object]:
    spec, order = encode_strings(strings)
    assert sorted(order) == sorted(strings)
    assert decode_strings(spec, len(strings), 10**6) == order
    return spec


def test_numbered_ids_become_a_template_with_integer_fields() -> None:
    ids = [f"sensor_{i:04d}_line{1 + i % 5}" for i in range(1, 1001)]
    spec = _strings_round_trip(ids)
    assert spec[0] == [] and spec[1] == [["sensor_", "_line", ""]]
    assert len(msgpack.packb(spec)) < 1100       # a byte per line number, not 17 per id


def test_leading_zeros_odd_characters_and_long_digit_runs_survive() -> None:
    _strings_round_trip(["007", "7", "0", "00", "a%db{0}c", "100%", "x{}y", "Ω-12-β",
                         "1" * 19, "id-" + "9" * 30, "", "12345678901234567890x", "a1b22c333"])


def test_common_words_are_sent_as_static_indices() -> None:
    spec = _strings_round_trip(["temperature", "celsius", "good", "factory_a"])
    assert spec[0] == [STATIC.index("temperature"), STATIC.index("celsius"),
                       STATIC.index("good"), "factory_a"]


@pytest.mark.parametrize("spec", [
    [["a"], [], 0], [[1000], [], 0, []], [[-1], [], 0, []], [[b"x"], [], 0, []],
    [[], [["a"]], 1, []], [[], [["a", "b"]], 1, []],
    [[], [["a", "b"]], 1, [[0, 50]]], [[], [["a", "b"]], -1, [[0, 1]]],
])
def test_decode_strings_rejects_malformed_tables(spec: object) -> None:
    with pytest.raises(MalformedFrame):
        decode_strings(spec, 100, 10**6)


def test_decode_strings_is_bounded() -> None:
    spec, _ = encode_strings([f"s{i}" for i in range(100)])
    with pytest.raises(MalformedFrame):
        decode_strings(spec, 99, 10**6)
    with pytest.raises(MalformedFrame):
        decode_strings(spec, 100, 50)
