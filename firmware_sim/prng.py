"""Counter-based random numbers: a draw is a pure function of (stream key, counter).

Why not `random.Random` per device: 10,000 devices × several streams of Mersenne-Twister
state is tens of megabytes, and a stateful generator makes "what does device d do at tick k"
depend on every earlier draw.  Here `uniform(key, k)` is splitmix64 of the key and counter,
so any draw can be recomputed on its own (tests compute the exact fault schedule), enabling
one fault kind never shifts another's schedule, and a device costs one integer per stream.
"""

from __future__ import annotations

import hashlib
import math

_M64 = 0xFFFF_FFFF_FFFF_FFFF
_GOLDEN = 0x9E37_79B9_7F4A_7C15
_COUNTER_MUL = 0xD1B5_4A32_D192_ED03
_TWO_PI = 2.0 * math.pi
_INV_2_53 = 1.0 / (1 << 53)


def stream_key(seed: int, *parts: str) -> int:
    """A 64-bit key for one named stream of one seed, e.g. (seed, device_id, "faults")."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(seed).encode())
    for part in parts:
        h.update(b"\0")
        h.update(part.encode())
    return int.from_bytes(h.digest(), "big")


def mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers with good avalanche."""
    z = (x + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & _M64
    return z ^ (z >> 31)


def uniform(key: int, counter: int) -> float:
    """A float in [0, 1) determined by (key, counter)."""
    return (mix64(key ^ ((counter * _COUNTER_MUL) & _M64)) >> 11) * _INV_2_53


_INV_2_32 = 1.0 / (1 << 32)


def gauss_pair(key: int, counter: int) -> tuple[float, float]:
    """Two independent standard normal draws from one 64-bit hash (Box–Muller over its
    two 32-bit halves: resolution 2**-32 is far finer than any simulated sensor)."""
    x = mix64(key ^ ((counter * _COUNTER_MUL) & _M64))
    u1 = ((x >> 32) + 1) * _INV_2_32  # (0, 1]: log() is finite
    u2 = (x & 0xFFFF_FFFF) * _INV_2_32
    r = math.sqrt(-2.0 * math.log(u1))
    a = _TWO_PI * u2
    return r * math.cos(a), r * math.sin(a)


def gauss(key: int, counter: int) -> float:
    """A standard normal draw determined by (key, counter)."""
    return gauss_pair(key, counter)[0]
