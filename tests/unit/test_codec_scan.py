"""scan_batch (columns without Reading objects) and the sub-frame encoder, against decode_batch.

Properties, over generated batches in every compression and over hostile frames:

* scan_batch accepts exactly what decode_batch accepts, raising the same DecodeError class
  and reason otherwise;
* its columns, put in batch order, are decode_batch's readings field by field (floats bit
  for bit), and `readings_of` rebuilds them;
* a frame re-encoded from the columns for any subset of runs or rows decodes to exactly
  those readings, in batch order; from a hostile-but-decodable frame it does that or raises
  Oversize, nothing else.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.codec import Batch, decode_batch, encode_batch, peek_header, scan_batch
from edge.codec.body import encode_body, readings_of
from edge.codec.columnar import Columns, rows_of_runs
from edge.codec.columns import decode_ints, pack_planes
from edge.codec.header import pack_header
from edge.codec.subframe import encode_rows, encode_runs, fast_ints
from edge.errors import DecodeError, Oversize
from edge.model import MAX_TS_MS, MIN_TS_MS, Event, Reading

T0 = 1_705_322_445_000
I64 = st.integers(-(2**63), 2**63 - 1)
TIMES = st.integers(MIN_TS_MS, MAX_TS_MS)
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "codec_v1"
PROPERTY = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(allow_nan=False, allow_infinity=False)
decimals = st.builds(lambda n, k: n / 10**k, st.integers(-10**7, 10**7), st.integers(0, 4))
values = st.one_of(decimals, decimals, finite, st.floats(),
                   st.sampled_from([-0.0, 0.0, 0.1 + 0.2, 5e-324, 1e308]))
names = st.one_of(st.sampled_from(["sensor_001_line1", "sensor_0002_line3", "hum-7", "Ω",
                                   "temperature", "good"]), st.text(max_size=8))
optional = st.one_of(st.none(), st.sampled_from(["1", "2", "03", "B", "plant_7"]), names)


@st.composite
def series(draw: st.DrawFn) -> list[Reading]:
    """A few sensors reporting in turn, optional fields mixed, arrival jitter."""
    sensors: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        sensors.append(dict(
            device_id=draw(names), measurement=draw(st.sampled_from(["temperature", "x y"])),
            unit=draw(st.sampled_from(["", "celsius", "%"])), facility=draw(optional),
            line=draw(optional), zone=draw(optional),
            quality=draw(st.sampled_from(["good", "bad", ""])),
            ts=draw(st.one_of(st.integers(T0, T0 + 10**6), TIMES)),
            battery=draw(st.sampled_from(["always", "never", "sometimes"])),
            seq=draw(st.sampled_from(["always", "never", "sometimes", "huge"])),
            sts=draw(st.sampled_from(["never", "sometimes"]))))
    out = []
    for i in range(draw(st.integers(0, 50))):
        s = sensors[draw(st.integers(0, len(sensors) - 1))]
        ts = s["ts"] + 1000 * i + draw(st.integers(-3, 3))
        maybe = draw(st.booleans())
        out.append(Reading(
            device_id=s["device_id"], ts_ms=ts, value=draw(values),
            measurement=s["measurement"], unit=s["unit"], facility=s["facility"],
            line=s["line"], zone=s["zone"], quality=s["quality"],
            battery_voltage=(None if s["battery"] == "never"
                             or (s["battery"] == "sometimes" and maybe) else draw(values)),
            seq=(None if s["seq"] == "never" or (s["seq"] == "sometimes" and maybe)
                 else draw(I64) if s["seq"] == "huge" else i),
            received_ms=draw(st.one_of(st.integers(ts, ts + 9), st.just(0), TIMES)),
            sensor_ts_ms=(draw(TIMES) if s["sts"] == "sometimes" and maybe else None),
            flags=draw(st.one_of(st.just(0), st.integers(0, 3), I64))))
    return out


events = st.builds(Event, kind=st.sampled_from(["aggregate", "alert"]),
                   key=st.binary(min_size=16, max_size=16), ts_ms=TIMES, device_id=names,
                   body=st.dictionaries(st.text(max_size=4), I64, max_size=2))
batches = st.builds(Batch, gateway_id=st.sampled_from(["gw-1", "gw-Ω"]),
                    sequence=st.integers(0, 2**64 - 1), created_ms=st.integers(0, 2**64 - 1),
                    readings=series(), events=st.lists(events, max_size=3))


def _bits(readings: list[Reading]) -> list[Any]:
    """Everything a reading holds, floats as their bits (-0.0 is not 0.0, NaN equals NaN)."""
    return [(r.device_id, r.ts_ms, struct.pack("<d", r.value), r.measurement, r.unit,
             r.facility, r.line, r.zone, r.quality,
             None if r.battery_voltage is None else struct.pack("<d", r.battery_voltage),
             r.seq, r.received_ms, r.sensor_ts_ms, r.flags) for r in readings]


def _in_batch_order(cols: Columns) -> list[tuple[Any, ...]]:
    """The columns' rows as tuples, moved to their batch positions."""
    run_of_row = cols.run_of_row()
    battery = cols.spread(cols.battery_presence, cols.battery)
    seq = cols.spread(cols.seq_presence, cols.seq)
    sts = cols.sensor_ts()
    out: list[Any] = [None] * cols.n
    for j, position in enumerate(cols.batch_positions()):
        run = run_of_row[j]
        out[position] = (cols.run_device[run], cols.ts[j], struct.pack("<d", cols.values[j]),
                         *cols.contexts[cols.run_context[run]],
                         None if battery[j] is None else struct.pack("<d", battery[j]),
                         seq[j], cols.received[j], sts[j], cols.flags[j])
    return out


def _outcome(fn: Any, frame: bytes) -> Any:
    try:
        fn(frame)
    except DecodeError as e:
        return type(e), e.reason
    return "ok"


# --------------------------------------------------------------------------- scan_batch


@PROPERTY
@given(batches, st.sampled_from(["zstd", "gzip", "none"]))
def test_scan_gives_decode_batch_readings_column_wise(batch: Batch, compression: str) -> None:
    frame = encode_batch(batch, compression)
    decoded = decode_batch(frame)
    cols = scan_batch(frame)
    assert cols.header == peek_header(frame) and cols.n == len(batch.readings)
    assert cols.events == decoded.events == batch.events
    assert _in_batch_order(cols) == _bits(decoded.readings)
    assert _bits(readings_of(cols)) == _bits(decoded.readings)
    runs = [cols.run_of_row()[j] for j in sorted(range(cols.n),
                                                  key=cols.batch_positions().__getitem__)]
    assert cols.batch_order() == runs
    assert sum(cols.lengths) == cols.n and len(cols.run_device) == cols.n_runs
    counting = cols.seq_presence is True and all(
        cols.seq[s:s + n] == list(range(cols.seq[s], cols.seq[s] + n))
        for s, n in zip(cols.starts, cols.lengths))
    assert cols.seq_counts_up() == counting


def test_a_counting_seq_column_is_known_without_a_pass() -> None:
    readings = [Reading(f"d{d}", T0 + 1000 * i, 1.0, seq=100 * d + i, received_ms=T0 + i)
                for i in range(20) for d in range(3)]
    cols = scan_batch(encode_batch(Batch("gw", 1, T0, readings)))
    assert cols._seq_counting is True and cols.seq_counts_up()
    cols._seq_counting = None  # as for a column in another mode: one pass decides
    assert cols.seq_counts_up() is True
    gap = scan_batch(encode_batch(Batch("gw", 1, T0, readings[:30] + readings[31:])))
    assert not gap.seq_counts_up()
    assert not scan_batch(encode_batch(Batch("gw", 1, T0, readings[::-1]))).seq_counts_up()


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.bin")))
def test_scan_reads_every_golden_frame(name: str) -> None:
    frame = (GOLDEN / f"{name}.bin").read_bytes()
    cols = scan_batch(frame)
    batch = decode_batch(frame)
    assert _in_batch_order(cols) == _bits(batch.readings)
    assert cols.events == batch.events
    for run in range(cols.n_runs):
        part = decode_batch(encode_runs(cols, [run]))
        device, context = cols.run_device[run], cols.contexts[cols.run_context[run]]
        assert part.readings == [r for r in batch.readings if r.device_id == device and (
            r.measurement, r.unit, r.facility, r.line, r.zone, r.quality) == context]


def test_scan_checks_the_limits_like_decode() -> None:
    frame = encode_batch(Batch("gw", 1, 1, [Reading("d", T0 + i, 1.0) for i in range(5)]))
    for limits in ({"max_readings": 4}, {"max_frame_bytes": 20}, {"max_body_bytes": 10}):
        with pytest.raises(DecodeError) as scanned:
            scan_batch(frame, **limits)  # type: ignore[arg-type]
        with pytest.raises(DecodeError) as decoded:
            decode_batch(frame, **limits)  # type: ignore[arg-type]
        assert (type(scanned.value), scanned.value.reason) == \
            (type(decoded.value), decoded.value.reason)


BASE = Batch("gw-h", 3, T0, [
    Reading(f"sensor_{d:02d}", T0 + 1000 * i + d, 20 + (i * d % 13) / 10, unit="celsius",
            facility="f", line=str(d % 3), battery_voltage=None if i % 4 == 0 else 3.7,
            seq=i if d else None, received_ms=T0 + 1000 * i + d + (i * 7) % 5,
            sensor_ts_ms=T0 if d == 2 and i % 3 == 0 else None, flags=d % 2)
    for i in range(12) for d in range(5)][::-1], [Event("alert", bytes(16), T0, "x", {})])
BASE_BODY = b"".join(encode_body(BASE.readings, BASE.events))


def _seal(body: bytes, readings: int = len(BASE.readings), events: int = 1) -> bytes:
    return pack_header(compression="none", gateway_id="gw-h", sequence=3, created_ms=T0,
                       reading_count=readings, event_count=events, body=body,
                       raw_len=len(body)) + body


def _mutate(node: Any, rng: random.Random, value: Any) -> Any:
    if isinstance(node, list) and node and rng.random() < 0.8:
        copy = list(node)
        i = rng.randrange(len(copy))
        copy[i] = _mutate(copy[i], rng, value)
        return copy
    return value


hostile = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.integers(-3, 70), st.floats(), st.text(max_size=4),
                    st.binary(max_size=70), st.lists(st.integers(-2, 70), max_size=5),
                    st.builds(msgpack.ExtType, st.integers(0, 2), st.binary(max_size=2)))


def _same_outcome_and_subframes(frame: bytes) -> None:
    outcome = _outcome(decode_batch, frame)
    assert _outcome(scan_batch, frame) == outcome
    if outcome != "ok":
        return
    cols = scan_batch(frame)
    readings = decode_batch(frame).readings
    assert _bits(readings_of(cols)) == _bits(readings)
    by_run = [cols.run_of_row()[j] for j in sorted(range(cols.n),
                                                   key=cols.batch_positions().__getitem__)]
    for runs in ([r] for r in range(cols.n_runs)):
        try:
            part = encode_runs(cols, runs)
        except Oversize:
            continue
        assert _bits(decode_batch(part).readings) == _bits(
            [r for r, run in zip(readings, by_run) if run in runs])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), hostile, st.integers(1, 3))
def test_structurally_mutated_bodies_same_outcome(seed: int, value: Any, times: int) -> None:
    rng = random.Random(seed)
    tree = msgpack.unpackb(BASE_BODY, raw=False, strict_map_key=False)
    for _ in range(times):
        tree = _mutate(tree, rng, value)
    _same_outcome_and_subframes(_seal(msgpack.packb(tree, use_bin_type=True)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupt_bytes_and_counts_same_outcome(data: st.DataObject) -> None:
    body = bytearray(BASE_BODY)
    for _ in range(data.draw(st.integers(0, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _same_outcome_and_subframes(_seal(bytes(body[:cut] if data.draw(st.booleans()) else body),
                                      readings=data.draw(st.sampled_from(
                                          [len(BASE.readings), 0, 59, 61])),
                                      events=data.draw(st.integers(0, 2))))
    frame = bytearray(encode_batch(BASE))
    frame[data.draw(st.integers(0, len(frame) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _same_outcome_and_subframes(bytes(frame))


def test_an_order_that_misplaces_a_run_is_refused() -> None:
    tree = msgpack.unpackb(BASE_BODY, raw=False, strict_map_key=False)
    n = len(BASE.readings)
    order = [0] * n  # every reading in run 0: more than run 0 holds
    tree[4] = [0, [1, 0, bytes(order)]]
    frame = _seal(msgpack.packb(tree, use_bin_type=True))
    assert _outcome(scan_batch, frame) == _outcome(decode_batch, frame) != "ok"


# --------------------------------------------------------------------------- sub-frames


@PROPERTY
@given(batches, st.data())
def test_subframes_of_runs_and_rows_decode_to_those_readings(batch: Batch,
                                                             data: st.DataObject) -> None:
    frame = encode_batch(batch, data.draw(st.sampled_from(["zstd", "none"])))
    cols = scan_batch(frame)
    readings = decode_batch(frame).readings
    if not readings:
        return
    run_of_row = cols.run_of_row()
    runs_in_order = [run_of_row[j] for j in sorted(range(cols.n),
                                                   key=cols.batch_positions().__getitem__)]
    runs = data.draw(st.sets(st.integers(0, cols.n_runs - 1), min_size=1))
    compression = data.draw(st.sampled_from(["none", "zstd", "gzip"]))
    part = decode_batch(encode_runs(cols, sorted(runs), compression))
    assert (part.gateway_id, part.sequence, part.created_ms, part.events) == \
        (batch.gateway_id, batch.sequence, batch.created_ms, [])
    assert _bits(part.readings) == _bits(
        [r for r, run in zip(readings, runs_in_order) if run in runs])
    # the general path (any rows) agrees with the batch-shared one (whole runs)
    general = decode_batch(encode_rows(cols, rows_of_runs(cols, sorted(runs)), compression))
    assert _bits(general.readings) == _bits(part.readings)
    # any rows: e.g. the first half of a key's readings in batch order
    positions = cols.batch_positions()
    rows = sorted(data.draw(st.sets(st.integers(0, cols.n - 1), min_size=1)))
    chosen = sorted(positions[j] for j in rows)
    assert _bits(decode_batch(encode_rows(cols, rows)).readings) == \
        _bits([readings[p] for p in chosen])
    assert encode_rows(cols, rows) == encode_rows(scan_batch(frame), rows)  # deterministic


def test_subframes_refuse_bad_rows_and_columns_without_header() -> None:
    cols = scan_batch(encode_batch(BASE))
    for rows in ([], [3, 2], [0, 0], [-1], [cols.n]):
        with pytest.raises(ValueError):
            encode_rows(cols, rows)
    cols.header = None
    with pytest.raises(ValueError):
        encode_rows(cols, [0])
    assert rows_of_runs(scan_batch(encode_batch(BASE)), []) == []


def test_values_beyond_int64_still_round_trip_and_a_2_64_span_is_oversize() -> None:
    # decodable frames whose received_ms encode_batch would refuse
    tree = msgpack.unpackb(BASE_BODY, raw=False, strict_map_key=False)
    n = len(BASE.readings)
    tree[5] = [0, tree[5][1], 2**64 - 1]
    frame = _seal(msgpack.packb(tree, use_bin_type=True))
    cols = scan_batch(frame)
    part = decode_batch(encode_runs(cols, range(cols.n_runs)))
    assert _bits(part.readings) == _bits(decode_batch(frame).readings)
    tree[5] = [0, tree[5][1], [1, 0, pack_planes([0] * (n - 1) + [2**65])]]
    cols = scan_batch(_seal(msgpack.packb(tree, use_bin_type=True)))
    with pytest.raises(Oversize):
        encode_runs(cols, [0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(I64, st.integers(-5, 5), st.integers(10**12, 10**12 + 9)),
                max_size=40), st.data())
def test_fast_ints_round_trip(xs: list[int], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(xs)), max_size=6)) | {0, len(xs)})
    lengths = [b - a for a, b in zip(cuts, cuts[1:])] + [0]
    assert decode_ints(fast_ints(xs), len(xs)) == xs
    assert decode_ints(fast_ints(xs, lengths), len(xs), lengths) == xs
    with pytest.raises(ValueError):
        fast_ints([2**63])
