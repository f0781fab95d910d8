"""Float columns of batch format v1 ("fcol"): decimal scaling, exact or not at all.

Values come in runs (one per series, see `edge.codec.body`).  Each run gets a decimal scale k
in 0..MAX_SCALE when every value v of the run satisfies `round(v * 10**k) / 10**k == v`
bit-for-bit and |v * 10**k| < 2**53 (so -0.0, NaN and inf never scale): the run is then the
integers `round(v * 10**k)` inside one shared integer column (`edge.codec.columns`, with runs,
so a slowly changing temperature costs its small deltas).  Otherwise k = -1 and the run is raw
little-endian float64.  Decoding divides the int by 10**k (int / int, correctly rounded: the
very operation the encoder checked), so every float comes back bit-for-bit.

    spec: [k icol (one per run), ints icol (scaled runs, with their lengths), raw f64 bytes]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from itertools import repeat
from operator import truediv
from typing import Any

from edge.codec.columns import decode_ints, encode_ints
from edge.errors import MalformedFrame

#: largest decimal scale tried for a run
MAX_SCALE = 9
#: scaled integers stay below 2**53, where every integer is an exact double
_SCALED_LIMIT = float(2**53)
_POW10 = [10**k for k in range(MAX_SCALE + 1)]
#: above this many runs, a scale common to all is tried first (per-run search is per-call)
_PER_RUN_MAX = 64


def _exact_at(values: Sequence[float], k: int) -> bool:
    s = _POW10[k]
    limit = _SCALED_LIMIT / s
    for v in values:
        # the range test is False for NaN and inf too
        if not -limit < v < limit:
            return False
        if round(v * s) / s != v or (v == 0 and math.copysign(1.0, v) < 0):
            return False
    return True


def scale_of(values: Sequence[float]) -> int:
    """The smallest k in 0..MAX_SCALE that stores every value exactly as an int, or -1."""
    for k in range(MAX_SCALE + 1):
        if _exact_at(values, k):
            return k
    return -1


def _float_spec(runs: list[Sequence[float]], scales: list[int]) -> tuple[list[Any], int]:
    ints: list[int] = []
    int_lengths: list[int] = []
    raw: list[float] = []
    for run, k in zip(runs, scales):
        if not run:
            continue
        if k < 0:
            raw.extend(run)
        else:
            s = _POW10[k]
            ints.extend([round(v * s) for v in run])
            int_lengths.append(len(run))
    k_spec, k_cost = encode_ints(scales)
    i_spec, i_cost = encode_ints(ints, int_lengths)
    blob = struct.pack(f"<{len(raw)}d", *raw)
    return [k_spec, i_spec, blob], k_cost + i_cost + 64 * len(raw)


def encode_floats(values: Sequence[float], lengths: Sequence[int]) -> tuple[list[Any], int]:
    """fcol spec for `values` cut into runs of `lengths`; also its cost in bits.

    Each run gets its smallest exact scale, unless one scale (the largest of those) is exact
    for every scalable run: then all use it, since ints at one scale difference well across
    runs (21.5 next to 21.53 is cheaper as 2150 next to 2153).  With many runs the common
    scale is looked for first, in one pass.
    """
    runs: list[Sequence[float]] = []
    start = 0
    for length in lengths:
        runs.append(values[start:start + length])
        start += length
    if len(runs) > _PER_RUN_MAX:
        # many short runs (a fleet snapshot): one pass over all values finds the common scale
        k = scale_of(values)
        if k >= 0:
            return _float_spec(runs, [k] * len(runs))
    scales: list[int] = []
    prev = 0
    for run in runs:
        # an empty run repeats the scale before it, which keeps the scale column constant
        prev = scale_of(run) if run else prev
        scales.append(prev)
    scaled = [k for k, run in zip(scales, runs) if k >= 0 and run]
    if scaled and min(scaled) != max(scaled):
        top = max(scaled)
        if all(k < 0 or k == top or _exact_at(run, top) for k, run in zip(scales, runs)):
            scales = [top if k >= 0 else k for k in scales]
    return _float_spec(runs, scales)


def decode_floats(spec: Any, lengths: Sequence[int]) -> list[float]:
    """Inverse of `encode_floats`."""
    values, scales, ints = decode_float_parts(spec, lengths)
    return scaled_values(scales, ints) if values is None else values


def scaled_values(scales: list[int], ints: list[int]) -> list[float]:
    """The values of an fcol whose runs all share one scale (`decode_float_parts`)."""
    # int / int is correctly rounded: exactly the operation the encoder checked
    return list(map(truediv, ints, repeat(_POW10[scales[0]] if scales else 1)))


def decode_float_parts(spec: Any, lengths: Sequence[int]
                       ) -> tuple[list[float] | None, list[int], list[int]]:
    """(values, scale of each run, scaled int of each value) of an fcol.

    values is None in the common case, every run scaled by one scale: `scaled_values` gives
    them, and they are all finite (no decodable column holds an int near 10**308), so a
    reader that only needs to know that does not compute them.  The ints are aligned with
    the values (0 where the run is raw, scale -1): a value of a scaled run is exactly
    `ints[i] / 10**scales[run]`, so a re-encoder that copies scales and ints
    (`edge.codec.subframe`) gives back the same floats bit for bit without checking them.
    Raises MalformedFrame like `decode_floats` (it is the same decoder).
    """
    if type(spec) is not list or len(spec) != 3:
        raise MalformedFrame("float column is not a 3-item list")
    scales = decode_ints(spec[0], len(lengths))
    if scales and not (-1 <= min(scales) and max(scales) <= MAX_SCALE):
        raise MalformedFrame("decimal scale out of range")
    blob = spec[2]
    if not isinstance(blob, bytes) or len(blob) % 8:
        raise MalformedFrame("raw float column is not a whole number of float64")
    n_raw = len(blob) // 8
    total = sum(lengths)
    if n_raw == 0 and len(set(scales)) <= 1 and (not scales or scales[0] >= 0):
        return None, scales, decode_ints(spec[1], total, lengths)
    scaled_lengths = [length for k, length in zip(scales, lengths) if k >= 0]
    n_scaled = sum(scaled_lengths)
    if n_raw + n_scaled != total:
        raise MalformedFrame("float column sizes do not add up")
    ints = decode_ints(spec[1], n_scaled, scaled_lengths)
    raws = iter(struct.unpack(f"<{n_raw}d", blob))
    scaled = iter(ints)
    out: list[float] = []
    aligned: list[int] = []
    for k, length in zip(scales, lengths):
        if k < 0:
            out.extend(next(raws) for _ in range(length))
            aligned += [0] * length
        else:
            s = _POW10[k]
            run = [next(scaled) for _ in range(length)]
            aligned += run
            out.extend(n / s for n in run)
    return out, scales, aligned
