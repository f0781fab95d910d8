"""Property: encode -> decode is the identity for any valid batch, in every compression.

Readings with arbitrary finite floats (negative, huge, tiny, -0.0, sums that are not short
decimals), optional fields present or absent, unicode ids, out-of-order timestamps and
duplicate devices interleaved; events with nested bodies.  Equality is dataclass equality
plus the float bits (so -0.0 is not accepted for 0.0).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.codec import Batch, decode_batch, encode_batch
from edge.model import MAX_TS_MS, MIN_TS_MS, Event, Reading

T0 = 1_705_322_445_000
I64 = st.integers(-(2**63), 2**63 - 1)
TIMES = st.integers(MIN_TS_MS, MAX_TS_MS)

finite = st.floats(allow_nan=False, allow_infinity=False)
# mostly the values sensors send: short decimals around a level, sometimes anything finite
decimals = st.builds(lambda n, k: n / 10**k, st.integers(-10**7, 10**7), st.integers(0, 4))
values = st.one_of(decimals, finite, st.sampled_from([-0.0, 0.0, 0.1 + 0.2, 5e-324, 1e308]))
names = st.one_of(st.sampled_from(["sensor_001_line1", "sensor_0002_line3", "hum-7", "Ω"]),
                  st.text(min_size=0, max_size=12))
optional_names = st.one_of(st.none(), names)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    ts = draw(st.one_of(st.integers(T0, T0 + 10**6), TIMES))
    return Reading(
        device_id=draw(names), ts_ms=ts, value=draw(values),
        measurement=draw(st.sampled_from(["temperature", "humidity", "x y"])),
        unit=draw(st.sampled_from(["", "celsius", "%", "°F"])),
        facility=draw(optional_names), line=draw(st.one_of(st.none(), st.sampled_from(
            ["1", "2", "03", "B"]))), zone=draw(optional_names),
        quality=draw(st.sampled_from(["good", "uncertain", "bad", ""])),
        battery_voltage=draw(st.one_of(st.none(), decimals, finite)),
        seq=draw(st.one_of(st.none(), st.integers(0, 10**6), I64)),
        received_ms=draw(st.one_of(st.just(0), st.integers(ts - 5, ts + 5000), TIMES)),
        sensor_ts_ms=draw(st.one_of(st.none(), TIMES)),
        flags=draw(st.one_of(st.just(0), st.integers(0, 3), I64)))


@st.composite
def series(draw: st.DrawFn) -> list[Reading]:
    """A few devices reporting in turn, shuffled a little: the shape a gateway sends."""
    devices = draw(st.lists(readings(), min_size=1, max_size=5))
    out = []
    for i in range(draw(st.integers(0, 60))):
        base = devices[draw(st.integers(0, len(devices) - 1))]
        step = draw(st.integers(-3, 3))
        out.append(Reading(
            device_id=base.device_id, ts_ms=base.ts_ms + 1000 * i + step,
            value=draw(st.one_of(decimals, values)), measurement=base.measurement,
            unit=base.unit, facility=base.facility, line=base.line, zone=base.zone,
            quality=base.quality, battery_voltage=base.battery_voltage,
            seq=None if base.seq is None else (base.seq + i) % 2**63,
            received_ms=base.ts_ms + 1000 * i + draw(st.integers(0, 9)),
            sensor_ts_ms=base.sensor_ts_ms, flags=base.flags))
    return out


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), finite,
                         st.text(max_size=8))
bodies = st.dictionaries(st.text(max_size=8), st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                          st.dictionaries(st.text(max_size=6), inner,
                                                          max_size=4)),
    max_leaves=10), max_size=5)
events = st.builds(Event, kind=st.sampled_from(["aggregate", "alert"]),
                   key=st.binary(min_size=16, max_size=16), ts_ms=TIMES, device_id=names,
                   body=bodies)

batches = st.builds(
    Batch, gateway_id=st.text(min_size=1, max_size=40).filter(lambda g: len(g.encode()) < 256),
    sequence=st.integers(0, 2**64 - 1), created_ms=st.integers(0, 2**64 - 1),
    readings=st.one_of(st.lists(readings(), max_size=40), series()),
    events=st.lists(events, max_size=4))


def _float_bits(batch: Batch) -> list[bytes]:
    out = []
    for r in batch.readings:
        out.append(struct.pack("<d", r.value))
        if r.battery_voltage is not None:
            out.append(struct.pack("<d", r.battery_voltage))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.sampled_from(["zstd", "gzip", "none"]))
def test_encode_then_decode_is_the_identity(batch: Batch, compression: str) -> None:
    frame = encode_batch(batch, compression)
    decoded = decode_batch(frame)
    assert decoded == batch
    assert _float_bits(decoded) == _float_bits(batch)
    assert decoded.header is not None
    assert (decoded.header.reading_count, decoded.header.event_count) == \
        (len(batch.readings), len(batch.events))
    assert encode_batch(decoded, compression) == frame     # deterministic


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-0.0, 0.0, 0.1, 0.2, 0.1 + 0.2, 72.5, -72.5, 1e-320]),
                min_size=1, max_size=30))
def test_awkward_floats_in_one_run_keep_their_bits(vals: list[float]) -> None:
    batch = Batch("gw", 1, 1, [Reading("d", T0 + i, v) for i, v in enumerate(vals)])
    assert _float_bits(decode_batch(encode_batch(batch))) == _float_bits(batch)
