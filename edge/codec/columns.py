"""Integer columns of batch format v1 ("icol"): pure functions, no I/O.

A list of ints becomes a msgpack-ready *spec*.  The encoder costs every mode below and keeps
the cheapest (`_cost` estimates what zstd will pay); the decoder is told the value count by
the frame, never by the spec.

    v                                  CONST   every value is v (a bare int)
    [1, low, planes]                   RAW     x = z + low
    [2, mid, planes]                   CENTRED x = unzigzag(z) + mid
    [3, first, off, planes]            DELTA   x[0] = first, x[i] = x[i-1] + unzigzag(z) + off
    [4, first, d1, planes]             DOD     x[0] = first, x[1] = first + d1, then every
                                               delta is the previous one + unzigzag(z)
    [5, low, bits, bytes]              PACKED  x = low + the i-th `bits`-bit field of the
                                               little-endian integer `bytes` (<= 64 values)
    [6, heads, deltas]                 RUNS    per run: its first value, then in-run deltas
    [7, heads, period, offsets, res]   GRID    per run: x[0] = head, and for i >= 1
                                               x[i] = head + offset + i * period + res
    [8, base, k, positions, values]    SPARSE  every value is base except k listed ones

Mode numbers and layouts are part of format v1.  heads/deltas/offsets/res/positions/values
are nested icols.  RUNS and GRID need the run
lengths, which the caller knows (`edge.codec.body`); runs make consecutive values belong to
one sensor, so deltas are small, and GRID catches a sensor that samples on a clock: its
timestamps are the period plus a bounded jitter, cheaper than their deltas.

`z` are zig-zag encoded (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...) and stored as W byte *planes*:
the least significant byte of every value, then the next byte of every value, and so on (W =
len(planes) / count; 0 when every z is 0).  Planes rather than varints: a plane of small
values is a run of a few distinct bytes that zstd codes in a few bits each (the body puts each
plane in its own compression block), and decoding planes takes a few C-level list operations
where a varint decoder would be a Python loop per byte.

Every decoder validates shape, types and ranges and raises `MalformedFrame` (never
IndexError, struct.error, ...), so it can be fed hostile input.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate, chain, repeat
from operator import add
from typing import Any

from msgpack import packb

from edge.errors import MalformedFrame

RAW, CENTRED, DELTA, DOD, PACKED, RUNS, GRID, SPARSE = 1, 2, 3, 4, 5, 6, 7, 8
#: what zstd pays, roughly, for a literal between two matches
_SEQUENCE_BITS = 20
#: columns shorter than this are costed as stored
_SMALL = 64
#: columns this short may be bit-packed (decoding shifts one int of at most 64 x 64 bits)
_PACKED_MAX = 64

#: the widest zig-zag value a column may hold: 9 bytes covers a delta-of-delta of int64s
MAX_WIDTH = 9
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------- zig-zag, planes


def zigzag(x: int) -> int:
    """0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ...  (any size of int)."""
    return x << 1 if x >= 0 else ((-x) << 1) - 1


def unzigzag(z: int) -> int:
    return (z >> 1) ^ -(z & 1)


class Planes(bytes):
    """Byte planes that remember their width, so the body can put each plane in its own
    compression block (a plane of high bytes and a plane of low bytes compress apart)."""

    width: int = 0


def pack_planes(zs: Sequence[int]) -> Planes:
    """Non-negative ints -> W byte planes, least significant first (W from the largest)."""
    width = (max(zs).bit_length() + 7) // 8 if zs else 0
    if width == 1:
        out = Planes(bytes(zs))
    else:
        out = Planes(b"".join(bytes([(z >> shift) & 0xFF for z in zs])
                              for shift in range(0, 8 * width, 8)))
    out.width = width
    return out


def unpack_planes(blob: Any, count: int) -> list[int]:
    """Inverse of `pack_planes` for `count` values; the width is len(blob) / count."""
    if not isinstance(blob, bytes):
        raise MalformedFrame("column planes are not bytes")
    if count == 0 or not blob:
        if blob:
            raise MalformedFrame("column planes hold bytes for no values")
        return [0] * count
    width, rest = divmod(len(blob), count)
    if rest or width > MAX_WIDTH:
        raise MalformedFrame(f"column of {count} values cannot hold {len(blob)} bytes")
    if width == 1:
        return list(blob)
    if width == 2:
        return [lo | hi << 8 for lo, hi in zip(blob[:count], blob[count:])]
    values = list(blob[:count])
    for k in range(1, width):
        shift = 8 * k
        values = [v | b << shift for v, b in zip(values, blob[k * count:(k + 1) * count])]
    return values


_UNZIGZAG_BYTE = [unzigzag(z) for z in range(256)]


def _signed(blob: Any, count: int) -> list[int]:
    """unzigzag(unpack_planes(...)), table-driven for the common one-byte width."""
    if isinstance(blob, bytes) and len(blob) == count:
        return list(map(_UNZIGZAG_BYTE.__getitem__, blob))
    return [(z >> 1) ^ -(z & 1) for z in unpack_planes(blob, count)]


# --------------------------------------------------------------------------- integer columns


def _median(xs: Sequence[int]) -> int:
    return sorted(xs)[len(xs) // 2]


def _cost(zs: list[int], top: int) -> int:
    """Estimated bits once zstd has entropy-coded zig-zagged values `zs` (largest: `top`).

    A short column is paid as stored (too little for zstd to model).  Otherwise the low and
    the second byte planes are costed by their order-0 entropy plus a few bits per distinct
    byte (the code table) — or, when one byte value is nearly all of a plane, by a sequence
    per other byte — and higher bytes by their significant bits.  Rough, but it ranks the
    modes of a column and is cheap enough to run on every candidate.
    """
    n = len(zs)
    if not n:
        return 0
    if n < _SMALL:
        return 8 * n * ((top.bit_length() + 7) // 8)
    bits = _entropy(bytes(zs) if top <= 0xFF else bytes([z & 0xFF for z in zs]))
    if top > 0xFF:
        bits += _entropy(bytes([(z >> 8) & 0xFF for z in zs]))
    if top > 0xFFFF:
        bits += sum(map(int.bit_length, [z >> 16 for z in zs]))
    return round(bits)


def _entropy(plane: bytes) -> float:
    n = len(plane)
    counts = Counter(plane).values()
    bits = n * math.log2(n) - sum(c * math.log2(c) for c in counts) + 4 * len(counts)
    breaks = n - max(counts)
    if breaks * 16 < n:
        # nearly one byte value: zstd codes its runs as matches, and every other byte costs
        # a sequence, which order-0 entropy underestimates
        bits = max(bits, _SEQUENCE_BITS * breaks)
    return bits


def _zz(x: int) -> int:
    return (x << 1) ^ (x >> 127)


def _flat(xs: list[int]) -> tuple[Any, int]:
    """The cheapest of CONST, CENTRED, RAW, DELTA, DOD, SPARSE, PACKED (short columns)."""
    n = len(xs)
    if not n:
        return 0, 8
    ordered = sorted(xs)
    low, mid, high = ordered[0], ordered[n // 2], ordered[-1]
    if low < I64_MIN or high > I64_MAX:
        raise ValueError("integer column outside the signed 64-bit range")
    if low == high:
        return low, 8 * len(packb(low))
    # zig-zag is inlined in the comprehensions (they are most of the encoder's time); it is
    # exact for |x| < 2**127
    candidates: list[tuple[list[Any], list[int], int]] = [
        ([CENTRED, mid], [((d := x - mid) << 1) ^ (d >> 127) for x in xs],
         max(_zz(high - mid), _zz(low - mid)))]
    if n < _SMALL or (high - low).bit_length() + 7 < candidates[0][2].bit_length():
        # stored from the minimum without folding signs: a byte plane fewer for a spread of
        # 0..200, but centred columns share zstd's code table better, so only then
        candidates.append(([RAW, low], [x - low for x in xs], high - low))
    deltas = [b - a for a, b in zip(xs, xs[1:])]
    ordered = sorted(deltas)
    off = ordered[len(deltas) // 2]
    # parameters must fit msgpack's integers; planes may be 9 bytes wide, enough for the
    # zig-zagged delta-of-delta of any int64 column
    if I64_MIN <= off <= I64_MAX:
        candidates.append(([DELTA, xs[0], off],
                           [((e := d - off) << 1) ^ (e >> 127) for d in deltas],
                           max(_zz(ordered[0] - off), _zz(ordered[-1] - off))))
    if n >= 3 and I64_MIN <= deltas[0] <= I64_MAX:
        dods = [((e := b - a) << 1) ^ (e >> 127) for a, b in zip(deltas, deltas[1:])]
        candidates.append(([DOD, xs[0], deltas[0]], dods, max(dods)))
    best: Any = None
    best_cost = -1
    for head, zs, top in candidates:
        # parameters are paid in full: too few bytes for zstd to do anything with
        cost = _cost(zs, top) + 8 * len(packb(head))
        if best_cost < 0 or cost < best_cost:
            best, best_cost = [*head, zs], cost
    if (n - xs.count(mid)) * 8 < n:
        # mostly one value (a battery voltage that steps twice in a hundred readings)
        exceptions = [i for i, x in enumerate(xs) if x != mid]
        positions, position_cost = _flat(exceptions)
        values, value_cost = _flat([xs[i] for i in exceptions])
        cost = position_cost + value_cost + 8 * len(packb([SPARSE, mid, len(exceptions)]))
        if cost < best_cost:
            return [SPARSE, mid, len(exceptions), positions, values], cost
    best[-1] = pack_planes(best[-1])
    if n <= _PACKED_MAX:
        packed = _pack_bits(xs, low, high)
        size = 8 * len(packb(packed))
        if size <= 8 * len(packb(best)):
            return packed, size
    return best, best_cost


def _pack_bits(xs: Sequence[int], low: int, high: int) -> list[Any]:
    bits = max(1, (high - low).bit_length())
    big = 0
    for i, x in enumerate(xs):
        big |= (x - low) << (i * bits)
    return [PACKED, low, bits, big.to_bytes((len(xs) * bits + 7) // 8, "little")]


def _split(xs: Sequence[int], lengths: Sequence[int]) -> list[Sequence[int]]:
    runs = []
    start = 0
    for length in lengths:
        runs.append(xs[start:start + length])
        start += length
    return runs


def encode_ints(xs: list[int], lengths: Sequence[int] | None = None) -> tuple[Any, int]:
    """The cheapest icol spec for `xs` and its estimated cost in bits (deterministic).

    `xs` must lie in the signed 64-bit range (ValueError otherwise).  With `lengths` (runs of
    xs summing to len(xs); empty runs are ignored) the run-wise modes RUNS and GRID are
    costed too.
    """
    best, best_cost = _flat(xs)
    nonempty = [length for length in lengths if length] if lengths else []
    if not 1 < len(nonempty) < len(xs) or type(best) is int:
        return best, best_cost
    runs = _split(xs, nonempty)
    heads = [run[0] for run in runs]
    head_spec, head_cost = _flat(heads)
    deltas = [b - a for run in runs for a, b in zip(run, run[1:])]
    if not _in_i64(deltas):
        return best, best_cost
    spec, cost = _flat(deltas)
    if head_cost + cost < best_cost:
        best, best_cost = [RUNS, head_spec, spec], head_cost + cost
    # GRID: a sensor that samples on a clock is late by a bounded jitter, not by a random walk
    period = _median(deltas)
    offsets: list[int] = []
    residuals: list[int] = []
    for run in runs:
        late = [x - run[0] - i * period for i, x in enumerate(run)][1:]
        offset = _median(late) if late else (offsets[-1] if offsets else 0)
        offsets.append(offset)
        residuals += [v - offset for v in late]
    if not (_in_i64(offsets) and _in_i64(residuals)):
        return best, best_cost
    offset_spec, offset_cost = _flat(offsets)
    spec, cost = _flat(residuals)
    if head_cost + offset_cost + cost < best_cost:
        best = [GRID, head_spec, period, offset_spec, spec]
        best_cost = head_cost + offset_cost + cost
    return best, best_cost


def _in_i64(xs: list[int]) -> bool:
    return not xs or (I64_MIN <= min(xs) and max(xs) <= I64_MAX)


def _int(x: Any, what: str) -> int:
    if type(x) is not int:
        raise MalformedFrame(f"{what} must be an integer, got {type(x).__name__}")
    return x


def _run_lengths(lengths: Sequence[int] | None, count: int) -> list[int]:
    runs = [length for length in lengths or () if length]
    if lengths is None or sum(runs) != count:
        raise MalformedFrame("run-wise integer column where runs are not defined")
    return runs


def decode_ints(spec: Any, count: int, lengths: Sequence[int] | None = None) -> list[int]:
    """Inverse of `encode_ints`; `count` (and `lengths`) come from the frame, not from `spec`."""
    if type(spec) is int:
        return [spec] * count
    if type(spec) is not list or not spec:
        raise MalformedFrame("integer column is neither an integer nor a list")
    mode = spec[0]
    if mode == CENTRED and len(spec) == 3:
        mid = _int(spec[1], "centre")
        signed = _signed(spec[2], count)
        return list(map(add, signed, repeat(mid))) if mid else signed
    if mode == RAW and len(spec) == 3:
        low = _int(spec[1], "minimum")
        unsigned = unpack_planes(spec[2], count)
        return list(map(add, unsigned, repeat(low))) if low else unsigned
    if mode == DELTA and len(spec) == 4:
        first, off = _int(spec[1], "first value"), _int(spec[2], "offset")
        if count < 1:
            raise MalformedFrame("delta column with no values")
        signed = _signed(spec[3], count - 1)
        return list(accumulate(map(add, signed, repeat(off)) if off else signed, initial=first))
    if mode == DOD and len(spec) == 4:
        first, d1 = _int(spec[1], "first value"), _int(spec[2], "first delta")
        if count < 2:
            raise MalformedFrame("delta-of-delta column with fewer than 2 values")
        return list(accumulate(accumulate(_signed(spec[3], count - 2), initial=d1),
                               initial=first))
    if mode == PACKED and len(spec) == 4:
        low, bits, data = _int(spec[1], "minimum"), _int(spec[2], "bits"), spec[3]
        if not (count <= _PACKED_MAX and 1 <= bits <= MAX_WIDTH * 8 and isinstance(data, bytes)
                and len(data) == (count * bits + 7) // 8):
            raise MalformedFrame("bit-packed column of the wrong size")
        big = int.from_bytes(data, "little")
        mask = (1 << bits) - 1
        return [((big >> shift) & mask) + low for shift in range(0, count * bits, bits)]
    if mode == SPARSE and len(spec) == 5:
        base, k = _int(spec[1], "base"), _int(spec[2], "exception count")
        if not 0 <= k <= count:
            raise MalformedFrame("sparse column with more exceptions than values")
        positions = decode_ints(spec[3], k)
        if k and not (0 <= min(positions) and max(positions) < count):
            raise MalformedFrame("sparse column position out of range")
        out: list[int] = [base] * count
        for i, x in zip(positions, decode_ints(spec[4], k)):
            out[i] = x
        return out
    if mode == RUNS and len(spec) == 3:
        runs = _run_lengths(lengths, count)
        heads = decode_ints(spec[1], len(runs))
        step = spec[2]
        if type(step) is int:
            # one in-run delta for all (a counter): each run is an arithmetic range
            if not step:
                return expand(heads, runs)
            return list(chain.from_iterable(map(range, heads, map(
                add, heads, map(step.__mul__, runs)), repeat(step))))
        deltas = decode_ints(step, count - len(runs))
        out = []
        pos = 0
        for head, length in zip(heads, runs):
            out += accumulate(deltas[pos:pos + length - 1], initial=head)
            pos += length - 1
        return out
    if mode == GRID and len(spec) == 5:
        runs = _run_lengths(lengths, count)
        heads = decode_ints(spec[1], len(runs))
        period = _int(spec[2], "period")
        offsets = decode_ints(spec[3], len(runs))
        residuals = decode_ints(spec[4], count - len(runs))
        out = []
        pos = 0
        for head, offset, length in zip(heads, offsets, runs):
            out.append(head)
            base = head + offset
            rest = residuals[pos:pos + length - 1]
            # x[i] = base + i * period + res[i] for i >= 1, as one C-level pass per run
            out += (map(add, rest, repeat(base)) if period == 0 else
                    map(add, range(base + period, base + length * period, period), rest))
            pos += length - 1
        return out
    raise MalformedFrame(f"unknown integer column mode {mode!r} with {len(spec)} fields")


def expand(per_run: Sequence[Any], lengths: Sequence[int]) -> list[Any]:
    """[a, b], [2, 3] -> [a, a, b, b, b]."""
    return list(chain.from_iterable(map(repeat, per_run, lengths)))
