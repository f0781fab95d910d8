"""The pure parts of cloud ingest: record planning, validation, reading de-duplication."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest.recent import RecentKeys, _add, _inside, _overlaps, reading_identity
from cloud.ingest.records import (
    KEY_MODES,
    deadletter_frame,
    deadletter_items,
    plan_columns,
    plan_records,
)
from cloud.ingest.validate import check_events, check_readings, columns_pass
from edge.codec import Batch, Columns, decode_batch, encode_batch, peek_header, scan_batch
from edge.errors import ValidationError
from edge.model import FLAG_CLOCK_SKEW, FLAG_TS_MISSING, Event, Reading

T0 = 1_705_322_445_000


def _readings(n: int, lines: int = 3, devices: int = 6) -> list[Reading]:
    return [Reading(device_id=f"dev-{i % devices}", ts_ms=T0 + i, value=20.0 + i / 100,
                    unit="celsius", facility="plant-a", line=str((i % devices) % lines),
                    seq=i // devices, received_ms=T0 + i + 3) for i in range(n)]


def _frame(readings: list[Reading], events: list[Event] | None = None, seq: int = 7) -> bytes:
    return encode_batch(Batch("gw-1", seq, T0, readings, events or []), "zstd")


def _decode_all(records) -> list[Reading]:  # type: ignore[no-untyped-def]
    return [r for _, value, _ in records for r in decode_batch(value).readings]


def test_readings_grouped_by_facility_line_in_batch_order() -> None:
    readings = _readings(60)
    frame = _frame(readings)
    plan = plan_records(peek_header(frame), frame, readings, [], key_mode="facility_line")
    assert not plan.passthrough
    assert sorted(k or b"" for k, _, _ in plan.readings) == [b"plant-a/0", b"plant-a/1", b"plant-a/2"]
    for key, value, headers in plan.readings:
        batch = decode_batch(value)
        assert (batch.gateway_id, batch.sequence, batch.created_ms) == ("gw-1", 7, T0)
        assert batch.readings == [r for r in readings if f"plant-a/{r.line}".encode() == key]
        h = dict(headers)
        assert h["fl-batch"] == b"gw-1:7" and h["fl-gateway"] == b"gw-1"
        assert h["fl-format"] == b"1" and h["fl-count"] == str(len(batch.readings)).encode()
    assert [dict(h)["fl-part"] for _, _, h in plan.readings] == [b"1/3", b"2/3", b"3/3"]
    assert sorted(_decode_all(plan.readings), key=lambda r: r.ts_ms) == readings


def test_device_keys_and_deterministic_records() -> None:
    readings = _readings(30)
    frame = _frame(readings)
    a = plan_records(peek_header(frame), frame, readings, [], key_mode="device")
    b = plan_records(peek_header(frame), frame, readings, [], key_mode="device")
    assert a.readings == b.readings
    assert sorted(k or b"" for k, _, _ in a.readings) == [f"dev-{i}".encode() for i in range(6)]


def test_untagged_readings_are_keyed_by_device() -> None:
    readings = [Reading("d1", T0, 1.0), Reading("d2", T0, 2.0, line="7")]
    frame = _frame(readings)
    plan = plan_records(peek_header(frame), frame, readings, [])
    assert sorted(k or b"" for k, _, _ in plan.readings) == [b"-/7", b"d1"]


def test_single_key_batch_is_forwarded_as_received() -> None:
    readings = _readings(40, lines=1)
    frame = _frame(readings)
    plan = plan_records(peek_header(frame), frame, readings, [], unchanged=True)
    assert plan.passthrough
    assert plan.readings == [(b"plant-a/0", frame, [
        ("fl-format", b"1"), ("fl-gateway", b"gw-1"), ("fl-batch", b"gw-1:7"),
        ("fl-part", b"1/1"), ("fl-count", b"40")])]
    # not when something was dropped: then the frame is re-encoded
    changed = plan_records(peek_header(frame), frame, readings[1:], [], unchanged=False)
    assert not changed.passthrough and _decode_all(changed.readings) == readings[1:]


def test_oversized_groups_are_split_in_order() -> None:
    readings = _readings(400, lines=1)
    frame = _frame(readings)
    plan = plan_records(peek_header(frame), frame, readings, [], max_record_bytes=600,
                        compression="none", unchanged=True)
    assert len(plan.readings) > 2
    assert all(len(v) <= 600 for _, v, _ in plan.readings)
    assert {k for k, _, _ in plan.readings} == {b"plant-a/0"}
    assert _decode_all(plan.readings) == readings


def test_events_go_to_their_topics_keyed_by_device() -> None:
    events = [Event("aggregate", b"k" * 16, T0, "dev-1", {"mean": 1.5}),
              Event("alert", b"a" * 16, T0 + 1, "dev-2", {"state": "firing"}),
              Event("aggregate", b"j" * 16, T0 + 2, "dev-3", {"mean": 2.5})]
    frame = _frame([], events)
    plan = plan_records(peek_header(frame), frame, [], events)
    assert plan.readings == []
    assert sorted(k or b"" for k, _, _ in plan.aggregates) == [b"dev-1", b"dev-3"]
    assert [decode_batch(v).events for _, v, _ in plan.alerts] == [[events[1]]]


def test_dead_letters_keep_the_body_or_the_refused_items() -> None:
    body = b"\x00" * 100
    key, value, headers = deadletter_frame(body, reason="malformed", detail="bad magic",
                                           gateway_id="gw-1", batch_id=None,
                                           max_record_bytes=64)
    h = dict(headers)
    assert key == b"gw-1" and value == body[:64] and h["fl-truncated"] == b"100"
    assert h["fl-reason"] == b"malformed" and h["fl-stage"] == b"frame"
    bad = [Reading("dev-1", 5, 1.0), Reading("dev-2", T0, math.inf)]
    frame = _frame(bad)
    (record,) = deadletter_items(peek_header(frame), frame, bad, [],
                                 ["timestamp_out_of_range", "non_finite"], detail="x",
                                 compression="none", max_record_bytes=10_000)
    h = dict(record[2])
    assert decode_batch(record[1]).readings == bad
    assert json.loads(h["fl-reasons"]) == ["timestamp_out_of_range", "non_finite"]
    assert h["fl-stage"] == b"reading"


def test_validation_refuses_per_item() -> None:
    good = _readings(5)
    bad = [Reading("dev-1", 5, 1.0), Reading("dev-2", T0, math.nan),
           Reading("bad id/x#", T0, 1.0), Reading("dev-3", T0, 1.0, quality="great"),
           Reading("dev-4", T0, 1.0, battery_voltage=-math.inf)]
    accepted, refused, reasons = check_readings([good[0], *bad, *good[1:]])
    assert accepted == good and refused == bad
    assert reasons == ["timestamp_out_of_range", "non_finite", "invalid_device_id",
                       "invalid_quality", "non_finite"]
    assert check_readings(good) == (good, [], [])
    events = [Event("aggregate", b"k" * 16, T0, "dev-1"), Event("oops", b"k", T0, "dev-1"),
              Event("alert", b"", T0, "dev-1"), Event("alert", b"k", 1, "dev-1")]
    accepted_e, refused_e, reasons_e = check_events(events)
    assert accepted_e == events[:1] and refused_e == events[1:]
    assert reasons_e == ["unknown_event_kind", "invalid_key", "timestamp_out_of_range"]


def test_recent_keys_drop_repeats_within_and_across_batches() -> None:
    keys = RecentKeys(capacity=10)
    a = _readings(4)
    fresh, dups = keys.split("gw-1", a + a[:1])
    assert fresh == a and dups == 1
    # not remembered until produced: a retry after a failure is not a duplicate
    assert keys.split("gw-1", a)[1] == 0
    keys.remember_readings("gw-1", fresh)
    fresh, dups = keys.split("gw-1", a[2:] + _readings(6)[4:])
    assert fresh == _readings(6)[4:] and dups == 2
    assert keys.split("gw-2", a)[1] == 0  # per gateway
    # bounded: two generations of capacity / 2
    for n in range(5):
        keys.remember_readings("gw-1", [Reading(f"x{n}", T0, 1.0, seq=i) for i in range(5)])
    assert keys.size("gw-1") <= 10
    assert keys.split("gw-1", a)[1] == 0  # forgotten beyond the horizon


_text = st.text(st.sampled_from("ab"), min_size=1, max_size=2)
_readings_st = st.builds(
    Reading, device_id=_text, ts_ms=st.integers(T0, T0 + 3),
    value=st.sampled_from([0.0, 1.5, 2.0]), measurement=_text,
    seq=st.none() | st.integers(0, 2), received_ms=st.integers(T0, T0 + 2),
    sensor_ts_ms=st.none() | st.integers(T0, T0 + 2),
    flags=st.sampled_from([0, FLAG_TS_MISSING, FLAG_CLOCK_SKEW]))


@given(a=_readings_st, b=_readings_st)
def test_identity_has_the_equality_of_the_idempotency_key(a: Reading, b: Reading) -> None:
    assert (reading_identity(a) == reading_identity(b)) == (
        a.idempotency_key() == b.idempotency_key())


def test_identity_tells_negative_zero_apart_like_the_key() -> None:
    a, b = Reading("d", T0, 0.0), Reading("d", T0, -0.0)
    assert a.idempotency_key() != b.idempotency_key()
    assert reading_identity(a) != reading_identity(b)


@pytest.mark.parametrize("mode", KEY_MODES)
def test_plan_accepts_every_key_mode(mode: str) -> None:
    readings = _readings(10)
    frame = _frame(readings)
    assert _decode_all(plan_records(peek_header(frame), frame, readings, [],
                                    key_mode=mode).readings)


# --------------------------------------------------------------------------- column path


def _cols(readings: list[Reading], events: list[Event] | None = None) -> tuple[Columns, bytes]:
    frame = _frame(readings, events)
    return scan_batch(frame), frame


def _by_key(records) -> dict[bytes, str]:  # type: ignore[no-untyped-def]
    """Each key's readings (as their repr: NaN equals NaN, -0.0 is not 0.0)."""
    out: dict[bytes, list[Reading]] = {}
    for key, value, _ in records:
        out.setdefault(key, []).extend(decode_batch(value).readings)
    return {key: repr(readings) for key, readings in out.items()}


def _headers_but_value(records) -> list[tuple[bytes, list[tuple[str, bytes]]]]:  # type: ignore[no-untyped-def]
    return [(key, headers) for key, _, headers in records]


@pytest.mark.parametrize("mode", ["facility_line", "device", "gateway"])
def test_column_plan_has_the_records_of_the_reading_plan(mode: str) -> None:
    events = [Event("aggregate", b"k" * 16, T0, "dev-1", {"mean": 1.5})]
    readings = _readings(90, lines=3)[::-1] + [Reading("untagged", T0, 1.0)]
    cols, frame = _cols(readings, events)
    by_columns = plan_columns(cols, frame, events, key_mode=mode, unchanged=True)
    by_readings = plan_records(peek_header(frame), frame, readings, events, key_mode=mode,
                               unchanged=True)
    assert _headers_but_value(by_columns.readings) == _headers_but_value(by_readings.readings)
    assert _by_key(by_columns.readings) == _by_key(by_readings.readings)
    assert by_columns.aggregates == by_readings.aggregates
    assert not by_columns.passthrough  # the frame holds an event: readings are re-encoded


def test_gateway_key_forwards_any_batch_as_received() -> None:
    readings = _readings(60, lines=3)
    cols, frame = _cols(readings)
    for plan in (plan_columns(cols, frame, [], key_mode="gateway", unchanged=True),
                 plan_records(peek_header(frame), frame, readings, [], key_mode="gateway",
                              unchanged=True)):
        assert plan.passthrough and [(k, v) for k, v, _ in plan.readings] == [(b"gw-1", frame)]
    assert "gateway" in KEY_MODES


def test_column_plan_forwards_a_single_key_batch_and_splits_oversize_in_order() -> None:
    readings = _readings(400, lines=1)
    cols, frame = _cols(readings)
    plan = plan_columns(cols, frame, [], unchanged=True)
    assert plan.passthrough and plan.readings[0][1] == frame
    cut = plan_columns(cols, frame, [], unchanged=True, max_record_bytes=900)
    assert not cut.passthrough and len(cut.readings) > 2
    assert all(len(v) <= 900 for _, v, _ in cut.readings)
    assert _decode_all(cut.readings) == readings
    assert [dict(h)["fl-part"] for _, _, h in cut.readings][-1] == \
        f"{len(cut.readings)}/{len(cut.readings)}".encode()
    with pytest.raises(ValueError):
        plan_columns(cols, frame, [], key_mode="random")


def test_column_plan_keys_untagged_devices_by_device() -> None:
    readings = [Reading("d1", T0, 1.0), Reading("d2", T0, 2.0, line="7"),
                Reading("d3", T0, 3.0, facility="f")]
    cols, frame = _cols(readings)
    assert sorted(_by_key(plan_columns(cols, frame, []).readings)) == [b"-/7", b"d1", b"f/-"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 40), st.integers(0, 6)), max_size=12),
       st.integers(-3, 45))
def test_seq_intervals_hold_exactly_the_seqs_added(ranges: list[tuple[int, int]],
                                                    probe: int) -> None:
    bounds: list[int] = []
    model: set[int] = set()
    for low, width in ranges:
        _add(bounds, low, low + width)
        model.update(range(low, low + width + 1))
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert _inside(bounds, probe) == (probe in model)
    assert _overlaps(bounds, probe, probe + 3) == bool(model & set(range(probe, probe + 4)))


@st.composite
def _sensor_batches(draw: st.DrawFn) -> list[list[Reading]]:
    """Batches of a few sensors counting up, with what a gateway does after a crash:
    re-sent readings, repeats inside a batch, gaps, a unit that changes, no seq at all."""
    batches = []
    for b in range(draw(st.integers(1, 4))):
        rows = []
        for i in range(draw(st.integers(1, 12))):
            d = draw(st.integers(0, 2))
            seq = draw(st.one_of(st.integers(0, 30), st.none()))
            rows.append(Reading(f"dev-{d}", T0 + 1000 * (seq or i), float(draw(st.integers(0, 3))),
                                unit=draw(st.sampled_from(["celsius", "celsius", "kelvin"])),
                                seq=seq, received_ms=T0 + 1000 * i + b,
                                flags=draw(st.sampled_from([0, FLAG_TS_MISSING]))))
        if draw(st.booleans()):
            rows.sort(key=lambda r: (r.device_id, r.seq or 0))  # sensors counting up
        batches.append(rows)
    return batches


@st.composite
def _counting_batches(draw: st.DrawFn) -> list[list[Reading]]:
    """Sensors counting up, interleaved as a gateway drains them; a batch may start where
    the last one ended or re-send part of it (a gateway that crashed)."""
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        devices = draw(st.integers(1, 3))
        starts = [draw(st.integers(0, 12)) for _ in range(devices)]
        count = draw(st.integers(1, 6))
        batches.append([Reading(f"dev-{d}", T0 + 1000 * (starts[d] + i), 1.0, unit="celsius",
                                seq=starts[d] + i, received_ms=T0 + 1000 * i + d)
                        for i in range(count) for d in range(devices)])
    return batches


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_sensor_batches(), _counting_batches()), st.booleans())
def test_all_new_on_columns_agrees_with_split_on_readings(batches: list[list[Reading]],
                                                          by_columns: bool) -> None:
    keys = RecentKeys(capacity=1000)
    for rows in batches:
        cols, _ = _cols(rows)
        fresh, dups = keys.split("gw-1", rows)
        assert keys.all_new("gw-1", cols) == (dups == 0)
        if dups == 0 and by_columns:
            keys.remember("gw-1", cols)
        else:
            keys.remember_readings("gw-1", fresh)
    assert keys.size("gw-1") <= sum(map(len, batches))


def test_all_new_sees_repeats_and_remembered_readings() -> None:
    keys = RecentKeys(capacity=100)
    a = _readings(12)
    cols, _ = _cols(a)
    assert keys.all_new("gw-1", cols)
    assert not keys.all_new("gw-1", _cols(a + a[:1])[0])   # a repeat inside the batch
    keys.remember_readings("gw-1", a[:3])
    assert not keys.all_new("gw-1", cols) and keys.split("gw-1", a)[1] == 3
    assert keys.all_new("gw-1", _cols(a[3:])[0]) and keys.all_new("gw-2", cols)
    keys.remember("gw-1", _cols(a[3:])[0])
    assert keys.split("gw-1", a) == ([], 12)


_maybe_bad = st.one_of(st.just(None), st.sampled_from(["nan", "ts", "device", "quality",
                                                       "received", "seq", "inf_battery"]))


@st.composite
def _batch_readings(draw: st.DrawFn) -> list[Reading]:
    """A few sensors in turn; sometimes one reading made invalid, seq sometimes absent."""
    n_devices = draw(st.integers(1, 4))
    out = []
    for i in range(draw(st.integers(1, 30))):
        d = i % n_devices
        has_seq = draw(st.booleans()) if d == 0 else True
        r = Reading(f"dev-{d}", T0 + 1000 * i, 20 + draw(st.integers(-50, 50)) / 10,
                    measurement=draw(st.sampled_from(["temperature", "humidity"])),
                    unit="celsius", facility=draw(st.sampled_from(["p", None])),
                    line=str(d % 2), battery_voltage=draw(st.sampled_from([None, 3.7])),
                    seq=i // n_devices if has_seq else None, received_ms=T0 + 1000 * i + 3,
                    sensor_ts_ms=draw(st.sampled_from([None, T0 - 7])),
                    flags=draw(st.sampled_from([0, FLAG_TS_MISSING, FLAG_CLOCK_SKEW])))
        bad = draw(_maybe_bad)
        if bad == "nan":
            r = replace(r, value=math.nan)
        elif bad == "ts":
            r = replace(r, ts_ms=5, received_ms=5)
        elif bad == "device":
            r = replace(r, device_id="bad id/x#")
        elif bad == "quality":
            r = replace(r, quality="great")
        elif bad == "received":
            r = replace(r, received_ms=2**62)
        elif bad == "seq":
            r = replace(r, seq=2**63)
        elif bad == "inf_battery":
            r = replace(r, battery_voltage=math.inf)
        out.append(r)
    return out


def _hand_made(readings: list[Reading]) -> bytes:
    """A frame even of readings `encode_batch` refuses (integers beyond what it carries):
    their columns are written raw, as a hand-made frame could."""
    try:
        return _frame(readings)
    except ValidationError:
        tamed = [replace(r, received_ms=min(r.received_ms, 2**62 - 1),
                         seq=None if r.seq is None else min(r.seq, 2**63 - 1))
                 for r in readings]
        return _frame(tamed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batch_readings())
def test_columns_pass_agrees_with_the_reading_checks(readings: list[Reading]) -> None:
    frame = _hand_made(readings)
    cols = scan_batch(frame)
    decoded = decode_batch(frame).readings
    assert columns_pass(cols) == (check_readings(decoded)[1] == [])
    keys = RecentKeys()
    assert keys.all_new("gw-1", cols) == (keys.split("gw-1", decoded)[1] == 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batch_readings(), st.sampled_from(["facility_line", "device", "gateway"]))
def test_column_plan_matches_the_reading_plan(readings: list[Reading], mode: str) -> None:
    frame = _hand_made(readings)
    cols = scan_batch(frame)
    decoded = decode_batch(frame).readings
    by_columns = plan_columns(cols, frame, [], key_mode=mode, unchanged=True)
    by_readings = plan_records(peek_header(frame), frame, decoded, [], key_mode=mode,
                               unchanged=True)
    assert _headers_but_value(by_columns.readings) == _headers_but_value(by_readings.readings)
    assert _by_key(by_columns.readings) == _by_key(by_readings.readings)
    assert by_columns.passthrough == by_readings.passthrough


def test_out_of_range_integers_are_refused() -> None:
    good = _readings(2)
    bad = [replace(good[0], received_ms=2**62), replace(good[0], seq=-(2**63) - 1),
           replace(good[0], flags=2**63), replace(good[0], sensor_ts_ms=-(2**62) - 1)]
    accepted, refused, reasons = check_readings([*bad, good[1]])
    assert accepted == [good[1]] and refused == bad
    assert reasons == ["out_of_range"] * 4


def test_a_hand_made_frame_with_out_of_range_integers_takes_the_refusing_path() -> None:
    import msgpack

    from edge.codec import readings_of
    from edge.codec.body import encode_body
    from edge.codec.header import pack_header

    readings = _readings(12)
    tree = msgpack.unpackb(b"".join(encode_body(readings, [])), raw=False,
                           strict_map_key=False)
    tree[5] = [0, tree[5][1], 2**63 - 1]   # every received_ms beyond +-2**62
    body = msgpack.packb(tree, use_bin_type=True)
    frame = pack_header(compression="none", gateway_id="gw-1", sequence=1, created_ms=T0,
                        reading_count=12, event_count=0, body=body, raw_len=len(body)) + body
    cols = scan_batch(frame)
    assert not columns_pass(cols)
    accepted, refused, reasons = check_readings(readings_of(cols))
    assert not accepted and len(refused) == 12 and set(reasons) == {"out_of_range"}
