"""edge.payload.decode: every encoding, every rejection reason, skew handling, fuzzing."""

from __future__ import annotations

import dataclasses
import json
import math

import cbor2
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge.errors import (
    FieldlinkError,
    MissingField,
    NonFinite,
    Oversize,
    PayloadError,
    TimestampOutOfRange,
    ValidationError,
    WrongType,
)
from edge.model import FLAG_CLOCK_SKEW, FLAG_TS_MISSING, MAX_TS_MS, MIN_TS_MS, Reading
from edge.payload.decode import (
    DecodeContext,
    Limits,
    decode_payload,
    decode_payload_partial,
)
from edge.payload.encode import encode_json, encode_json_batch, encode_msgpack

TS = 1_705_322_445_000
RECV = TS + 120  # the gateway received it 120 ms after the sensor stamped it
CTX = DecodeContext(received_ms=RECV)
SEED = {"device_id": "sensor_001_line1", "device_type": "temperature", "timestamp": TS,
        "value": 72.5, "unit": "celsius",
        "location": {"facility": "factory_a", "line": 1, "zone": "assembly"},
        "quality": "good", "battery_voltage": 4.8}
SEED_READING = Reading(device_id="sensor_001_line1", ts_ms=TS, value=72.5,
                       measurement="temperature", unit="celsius", facility="factory_a",
                       line="1", zone="assembly", quality="good", battery_voltage=4.8,
                       seq=None, received_ms=RECV, sensor_ts_ms=None, flags=0)


def msg(**changes: object) -> dict[str, object]:
    out = dict(SEED)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def dec(obj: object, ctx: DecodeContext = CTX) -> list[Reading]:
    return decode_payload(json.dumps(obj).encode(), ctx)


def one(obj: object, ctx: DecodeContext = CTX) -> Reading:
    [r] = dec(obj, ctx)
    return r


def reject(obj: object, cls: type[ValidationError], field: str | None,
           ctx: DecodeContext = CTX, reason: str | None = None) -> ValidationError:
    with pytest.raises(cls) as info:
        dec(obj, ctx)
    assert info.value.field == field
    if reason is not None:
        assert info.value.reason == reason
    return info.value


# --------------------------------------------------------------------------- the seed message


def test_seed_message_parses_exactly() -> None:
    assert one(SEED) == SEED_READING


def test_seed_message_with_seq_and_defaults() -> None:
    r = one({"device_id": "d1", "value": 1, "seq": 17, "timestamp": TS})
    assert (r.value, r.seq, r.quality, r.measurement, r.unit) == (1.0, 17, "good", "unknown", "")
    assert (r.facility, r.line, r.zone) == (None, None, None)
    assert isinstance(r.value, float)


def test_context_defaults_fill_only_what_the_message_lacks() -> None:
    ctx = DecodeContext(received_ms=RECV, measurement_hint="pressure", unit_hint="bar",
                        facility="plant_b", line="7", zone="press")
    r = one({"device_id": "d1", "value": 2.0, "location": {"zone": "paint"}}, ctx)
    assert (r.measurement, r.unit, r.facility, r.line, r.zone) == (
        "pressure", "bar", "plant_b", "7", "paint")
    assert one(SEED, ctx).measurement == "temperature"


def test_quality_is_case_insensitive_and_checked() -> None:
    assert one(msg(quality="UNCERTAIN")).quality == "uncertain"
    reject(msg(quality="great"), ValidationError, "quality", reason="invalid_value")
    reject(msg(quality=["good"]), WrongType, "quality")


def test_line_string_kept() -> None:
    assert one(msg(location={"line": "L2"})).line == "L2"
    reject(msg(location={"line": True}), WrongType, "location.line")


# --------------------------------------------------------------------------- error reasons


def test_missing_fields() -> None:
    reject(msg(device_id=...), MissingField, "device_id", reason="missing_field")
    reject(msg(value=...), MissingField, "value")
    reject(msg(value=None), MissingField, "value")


@pytest.mark.parametrize("value", ["72.5", True, False, [1], {"v": 1}])
def test_value_must_be_a_number(value: object) -> None:
    err = reject(msg(value=value), WrongType, "value", reason="wrong_type")
    assert "value must be a number" in err.message


def test_other_wrong_types() -> None:
    reject(msg(device_id=42), WrongType, "device_id")
    reject(msg(location="factory_a"), WrongType, "location")
    reject(msg(location={"facility": 3}), WrongType, "location.facility")
    reject(msg(device_type=5), WrongType, "device_type")
    reject(msg(unit=["c"]), WrongType, "unit")
    reject(msg(battery_voltage="4.8"), WrongType, "battery_voltage")
    reject(msg(battery_voltage=True), WrongType, "battery_voltage")
    reject(msg(seq=1.0), WrongType, "seq")
    reject(msg(timestamp=[TS]), WrongType, "timestamp")
    reject(msg(timestamp=True), WrongType, "timestamp")


def test_non_finite() -> None:
    for bad in (b"NaN", b"Infinity", b"-Infinity"):
        payload = json.dumps(msg(value=0)).replace('"value": 0', '"value": ' + bad.decode())
        with pytest.raises(NonFinite) as info:
            decode_payload(payload.encode(), CTX)
        assert info.value.field == "value" and info.value.reason == "non_finite"
    payload = json.dumps(msg(battery_voltage=0)).replace('"battery_voltage": 0',
                                                         '"battery_voltage": NaN')
    with pytest.raises(NonFinite, match="battery_voltage"):
        decode_payload(payload.encode(), CTX)
    reject(msg(value=10**400), NonFinite, "value")
    reject(msg(timestamp=float("inf")), NonFinite, "timestamp")


@pytest.mark.parametrize("ts", [MIN_TS_MS - 1, MAX_TS_MS + 1, -5, 0, 10**30,
                                "1999-12-31T23:59:59Z", "2100-01-01T00:00:00.001Z"])
def test_timestamp_out_of_range(ts: object) -> None:
    reject(msg(timestamp=ts), TimestampOutOfRange, "timestamp",
           reason="timestamp_out_of_range")


def test_bad_timestamp_string() -> None:
    err = reject(msg(timestamp="yesterday"), ValidationError, "timestamp",
                 reason="invalid_value")
    assert "yesterday" in err.message
    reject(msg(timestamp="9" * 70), Oversize, "timestamp")


def test_oversize() -> None:
    small = DecodeContext(received_ms=RECV, limits=Limits(max_payload_bytes=50))
    with pytest.raises(Oversize) as info:
        dec(SEED, small)
    assert info.value.field == "payload" and "over the limit of 50" in info.value.message
    few = DecodeContext(received_ms=RECV, limits=Limits(max_readings=2))
    with pytest.raises(Oversize, match="3 readings"):
        dec([SEED, SEED, SEED], few)
    reject(msg(device_id="d" * 129), Oversize, "device_id")
    reject(msg(unit="u" * 129), Oversize, "unit")
    short = DecodeContext(received_ms=RECV, limits=Limits(max_string_length=8))
    reject(msg(device_id="d1", device_type="t", unit="c", location={"zone": "z" * 9}),
           Oversize, "location.zone", short)
    reject(msg(device_id="d" * 9), Oversize, "device_id", short)


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "a#b", "a b", "a\tb", "a\x00b",
                                       "a\nb", "dev\\", "a\\,b"])
def test_device_id_charset(device_id: str) -> None:
    reject(msg(device_id=device_id), ValidationError, "device_id", reason="invalid_value")


def test_device_id_charset_allows_printable_unicode() -> None:
    assert one(msg(device_id="capteur-é_1.x:y")).device_id == "capteur-é_1.x:y"


def test_control_characters_in_tags() -> None:
    reject(msg(unit="c\x1b[31m"), ValidationError, "unit", reason="invalid_value")
    reject(msg(device_type=""), ValidationError, "device_type", reason="invalid_value")


def test_what_influxdb_cannot_store_is_refused_before_the_ack() -> None:
    # a backslash in a tag or a measurement starting with '#' cannot be written as line
    # protocol: the reading would be acknowledged here and dead-lettered by the sink
    reject(msg(unit="m\\"), ValidationError, "unit", reason="invalid_value")
    reject(msg(location={"facility": "a\\", "line": 1}), ValidationError,
           "location.facility", reason="invalid_value")
    reject(msg(location={"zone": "z\\ 1"}), ValidationError, "location.zone",
           reason="invalid_value")
    reject(msg(device_type="#temp"), ValidationError, "device_type", reason="invalid_value")


def test_device_hint_wins_and_mismatch_is_rejected() -> None:
    ctx = DecodeContext(received_ms=RECV, device_hint="sensor_001_line1")
    assert one(SEED, ctx) == SEED_READING
    assert one(msg(device_id=...), ctx).device_id == "sensor_001_line1"
    err = reject(msg(device_id="sensor_999"), ValidationError, "device_id", ctx,
                 reason="device_mismatch")
    assert "sensor_999" in err.message and "sensor_001_line1" in err.message
    reject(msg(device_id=7), WrongType, "device_id", ctx)
    bad_hint = DecodeContext(received_ms=RECV, device_hint="a/b")
    reject(msg(device_id=...), ValidationError, "device_id", bad_hint, reason="invalid_value")


@pytest.mark.parametrize("payload,reason", [
    (b"", "empty_payload"), (b"  \r\n", "empty_payload"), (b"{not json", "malformed_payload"),
    (b"[1, 2", "malformed_payload"), (b'"a string"', "malformed_payload"),
    (b"\xff\xfe\x00garbage", "malformed_payload"), (b"hello", "malformed_payload"),
    (b"\x85\xa1a", "malformed_payload"),  # truncated msgpack map
    (b"[" * 100_000, "malformed_payload"),  # too deep for the parser
])
def test_not_a_message(payload: bytes, reason: str) -> None:
    big = DecodeContext(received_ms=RECV, device_hint="d1",
                        limits=Limits(max_payload_bytes=1 << 20))
    with pytest.raises(PayloadError) as info:
        decode_payload(payload, big)
    assert info.value.reason == reason
    assert info.value.message


def test_json_null_true_and_unknown_content_type() -> None:
    for body in (b"null", b"true"):
        with pytest.raises(PayloadError, match="object"):
            decode_payload(body, DecodeContext(received_ms=RECV, content_type="application/json"))
    with pytest.raises(PayloadError) as info:
        decode_payload(b"{}", DecodeContext(received_ms=RECV, content_type="image/png"))
    assert info.value.reason == "unknown_encoding"


# --------------------------------------------------------------------------- clock skew


def test_timestamp_missing_uses_receive_time() -> None:
    r = one(msg(timestamp=...))
    assert (r.ts_ms, r.sensor_ts_ms, r.flags) == (RECV, None, FLAG_TS_MISSING)
    assert one(msg(timestamp=None)).flags == FLAG_TS_MISSING


@pytest.mark.parametrize("offset_ms", [300_001, -300_001, 86_400_000])
def test_clock_skew_beyond_tolerance(offset_ms: int) -> None:
    claimed = RECV + offset_ms
    r = one(msg(timestamp=claimed))
    assert (r.ts_ms, r.sensor_ts_ms, r.flags) == (RECV, claimed, FLAG_CLOCK_SKEW)


@pytest.mark.parametrize("offset_ms", [0, 300_000, -300_000, -1])
def test_within_tolerance_keeps_sensor_time(offset_ms: int) -> None:
    r = one(msg(timestamp=RECV + offset_ms))
    assert (r.ts_ms, r.sensor_ts_ms, r.flags) == (RECV + offset_ms, None, 0)


def test_tolerance_is_configurable() -> None:
    tight = DecodeContext(received_ms=RECV, limits=Limits(clock_skew_tolerance_ms=100))
    assert one(SEED, tight).flags == FLAG_CLOCK_SKEW  # 120 ms off


@pytest.mark.parametrize("ts,expected", [
    (TS // 1000, TS),                      # seconds
    (TS / 1000 + 0.25, TS + 250),          # float seconds
    (TS + 0.4, TS),                        # float ms, rounded
    ("2024-01-15T12:40:45Z", TS),
    ("2024-01-15T12:40:45.000+00:00", TS),
    ("2024-01-15T13:40:45.120+01:00", TS + 120),
    ("2024-01-15T12:40:45", TS),           # no zone: UTC
    (str(TS), TS),
])
def test_timestamp_forms(ts: object, expected: int) -> None:
    r = one(msg(timestamp=ts))
    assert r.ts_ms == expected and r.flags == 0


# --------------------------------------------------------------------------- other encodings


def test_msgpack_map_and_array() -> None:
    assert decode_payload(msgpack.packb(SEED), CTX) == [SEED_READING]
    assert decode_payload(msgpack.packb([SEED, SEED]), CTX) == [SEED_READING] * 2
    ctx = DecodeContext(received_ms=RECV, content_type="application/x-msgpack")
    assert decode_payload(msgpack.packb(SEED), ctx) == [SEED_READING]


def test_cbor_only_when_declared() -> None:
    ctx = DecodeContext(received_ms=RECV, content_type="application/cbor")
    assert decode_payload(cbor2.dumps(SEED), ctx) == [SEED_READING]
    assert decode_payload(cbor2.dumps([SEED]), ctx) == [SEED_READING]
    with pytest.raises(PayloadError):
        decode_payload(b"\xa1", ctx)  # truncated CBOR


def test_bare_number_needs_a_device_hint() -> None:
    ctx = DecodeContext(received_ms=RECV, device_hint="sensor_7", measurement_hint="humidity",
                        unit_hint="%")
    for body, value in ((b"72.5", 72.5), (b"-3", -3.0), (b"1e3\n", 1000.0), (b" .5 ", 0.5)):
        [r] = decode_payload(body, ctx)
        assert (r.device_id, r.value, r.measurement, r.unit) == ("sensor_7", value,
                                                                  "humidity", "%")
        assert (r.ts_ms, r.flags) == (RECV, FLAG_TS_MISSING)
    with pytest.raises(NonFinite):
        decode_payload(b"nan", ctx)
    with pytest.raises(MissingField) as info:
        decode_payload(b"72.5", CTX)
    assert info.value.field == "device_id"
    plain = DecodeContext(received_ms=RECV, device_hint="sensor_7", content_type="text/plain")
    assert decode_payload(b"21", plain)[0].value == 21.0


def test_csv_lines() -> None:
    ctx = DecodeContext(received_ms=RECV, content_type="text/csv")
    body = (b"device_id,timestamp,value,unit,battery_voltage,seq\r\n"
            b"sensor_1,1705322445000,72.5,celsius,4.8,17\n"
            b"\n"
            b"sensor_2,,1.5\n"
            b"sensor_3,2024-01-15T12:40:45Z,-2,bar,,\n")
    r1, r2, r3 = decode_payload(body, ctx)
    assert (r1.device_id, r1.ts_ms, r1.value, r1.unit, r1.battery_voltage, r1.seq) == (
        "sensor_1", TS, 72.5, "celsius", 4.8, 17)
    assert (r2.device_id, r2.value, r2.flags, r2.unit) == ("sensor_2", 1.5, FLAG_TS_MISSING, "")
    assert (r3.ts_ms, r3.unit, r3.battery_voltage, r3.seq) == (TS, "bar", None, None)
    # sniffed without a content type; a blank device id takes the port's device
    port = DecodeContext(received_ms=RECV, device_hint="sensor_9")
    [r] = decode_payload(b",1705322445,3.25\n", port)
    assert (r.device_id, r.ts_ms, r.value) == ("sensor_9", TS, 3.25)


def test_csv_line_errors() -> None:
    ctx = DecodeContext(received_ms=RECV, content_type="text/csv")
    cases = [(b"s1,,abc", WrongType, "value"), (b"s1,,inf", NonFinite, "value"),
             (b"s1,,1,c,x", WrongType, "battery_voltage"), (b"s1,,1,c,4,-1", WrongType, "seq"),
             (b"s1,,", MissingField, "value"), (b"s1,1", ValidationError, "csv"),
             (b"s1,,1,c,4,1,extra", ValidationError, "csv"),
             (b"s1,yesterday,1", ValidationError, "timestamp")]
    for body, cls, field in cases:
        with pytest.raises(cls) as info:
            decode_payload(body, ctx)
        assert info.value.field == field, body
    with pytest.raises(PayloadError):
        decode_payload(b"s1,,1\xff", ctx)


# --------------------------------------------------------------------------- batches


def test_batch_all_or_nothing_names_the_index() -> None:
    with pytest.raises(WrongType, match=r"reading \[1\]: value must be a number") as info:
        dec([SEED, msg(value="x"), SEED])
    assert info.value.field == "value"
    with pytest.raises(WrongType, match=r"reading \[2\]: batch element"):
        dec([SEED, SEED, 5])
    assert dec([]) == []


def test_batch_partial_keeps_good_and_reports_bad() -> None:
    payload = json.dumps([SEED, msg(value="x"), msg(seq=5), msg(device_id=...)]).encode()
    good, bad = decode_payload_partial(payload, CTX)
    assert good == [SEED_READING, one(msg(seq=5))]
    assert [(i, type(e), e.field) for i, e in bad] == [(1, WrongType, "value"),
                                                       (3, MissingField, "device_id")]
    good, bad = decode_payload_partial(json.dumps(msg(value=True)).encode(), CTX)
    assert good == [] and bad[0][0] == 0 and bad[0][1].reason == "wrong_type"
    with pytest.raises(PayloadError):
        decode_payload_partial(b"{", CTX)


def test_bytearray_and_memoryview() -> None:
    payload = json.dumps(SEED).encode()
    assert decode_payload(bytearray(payload), CTX) == [SEED_READING]
    assert decode_payload(memoryview(payload), CTX) == [SEED_READING]


# --------------------------------------------------------------------------- round trip

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF,
                              blacklist_characters="/+#\\", blacklist_categories=("Z", "C")),
                min_size=1, max_size=20)
tags = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\\",
                             blacklist_categories=("C", "Z")), max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    recv = draw(st.integers(MIN_TS_MS + 10**6, MAX_TS_MS - 10**6))
    mode = draw(st.sampled_from(["ok", "missing", "skew"]))
    ts, sensor_ts, flags = recv - draw(st.integers(0, 300_000)), None, 0
    if mode == "missing":
        ts, flags = recv, FLAG_TS_MISSING
    elif mode == "skew":
        ts, sensor_ts, flags = recv, recv + draw(st.sampled_from([-1, 1])) * draw(
            st.integers(300_001, 10**6)), FLAG_CLOCK_SKEW
    # a non-ASCII "digit" such as "²" is not an integer the encoder can write
    line = draw(st.none() | st.integers(0, 10**6).map(str)
                | tags.filter(lambda s: s != "" and (s.isascii() or not s.isdigit())))
    return Reading(
        device_id=draw(names), ts_ms=ts, value=draw(finite),
        measurement=draw(tags.filter(lambda t: t != "" and t[0] != "#")), unit=draw(tags),
        facility=draw(st.none() | tags), line=line, zone=draw(st.none() | tags),
        quality=draw(st.sampled_from(["good", "uncertain", "bad"])),
        battery_voltage=draw(st.none() | finite), seq=draw(st.none() | st.integers(0, 2**63 - 1)),
        received_ms=recv, sensor_ts_ms=sensor_ts, flags=flags)


def _normalise(r: Reading) -> Reading:
    # a line of digits travels as an integer, so "007" comes back as "7"
    if r.line is not None and r.line.isdigit():
        return dataclasses.replace(r, line=str(int(r.line)))
    return r


@settings(max_examples=300, deadline=None)
@given(readings())
def test_encode_decode_round_trip(r: Reading) -> None:
    ctx = DecodeContext(received_ms=r.received_ms)
    expected = _normalise(r)
    assert decode_payload(encode_json(r), ctx) == [expected]
    assert decode_payload(encode_msgpack(r), ctx) == [expected]
    assert decode_payload(encode_json_batch([r, r]), ctx) == [expected, expected]


# --------------------------------------------------------------------------- fuzzing

CONTENT_TYPES = [None, "application/json", "application/msgpack", "application/cbor",
                 "text/csv", "text/plain", "application/json; charset=utf-8", "x/unknown"]
HINTS = [None, "sensor_001_line1"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=6),
    max_leaves=30)
message_like = st.fixed_dictionaries({}, optional={
    "device_id": json_values | names, "device_type": json_values, "value": json_values,
    "timestamp": json_values | st.integers(MIN_TS_MS, MAX_TS_MS), "unit": json_values,
    "location": json_values | st.fixed_dictionaries({}, optional={
        "facility": json_values, "line": json_values, "zone": json_values}),
    "quality": json_values | st.sampled_from(["good", "bad"]), "battery_voltage": json_values,
    "seq": json_values})


def _check_decodes_or_raises_fieldlink_error(payload: bytes, ctx: DecodeContext) -> None:
    for fn in (decode_payload, decode_payload_partial):
        try:
            out = fn(payload, ctx)
        except FieldlinkError as exc:
            assert exc.reason and exc.message
            continue
        readings_ = out if isinstance(out, list) else out[0]
        for r in readings_:
            assert isinstance(r, Reading) and math.isfinite(r.value)
            assert MIN_TS_MS <= r.ts_ms <= MAX_TS_MS or r.flags
        if isinstance(out, tuple):
            assert all(isinstance(e, ValidationError) for _, e in out[1])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(CONTENT_TYPES), st.sampled_from(HINTS))
def test_fuzz_random_bytes(payload: bytes, ct: str | None, hint: str | None) -> None:
    _check_decodes_or_raises_fieldlink_error(
        payload, DecodeContext(received_ms=RECV, device_hint=hint, content_type=ct))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | message_like | st.lists(message_like | json_values, max_size=4),
       st.sampled_from(["json", "msgpack", "cbor"]), st.sampled_from(HINTS))
def test_fuzz_structured_values(obj: object, enc: str, hint: str | None) -> None:
    if enc == "json":
        payload, ct = json.dumps(obj).encode(), None
    elif enc == "msgpack":
        try:
            payload, ct = msgpack.packb(obj), None
        except OverflowError:  # an integer msgpack cannot represent: not the decoder's input
            assume(False)
            return
    else:
        payload, ct = cbor2.dumps(obj), "application/cbor"
    _check_decodes_or_raises_fieldlink_error(
        payload, DecodeContext(received_ms=RECV, device_hint=hint, content_type=ct))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=8), st.sampled_from(HINTS))
def test_fuzz_csv_columns(cols: list[str], hint: str | None) -> None:
    payload = ",".join(cols).encode()
    _check_decodes_or_raises_fieldlink_error(
        payload, DecodeContext(received_ms=RECV, device_hint=hint, content_type="text/csv"))


# ------------------------------------------------- the orjson fast path against json itself

def _outcome(payload: bytes, ctx: DecodeContext, *, orjson: bool = True) -> object:
    import edge.payload.decode as decode

    saved = decode._orjson
    if not orjson:
        decode._orjson = None
    try:
        return _outcome_now(payload, ctx)
    finally:
        decode._orjson = saved


def _outcome_now(payload: bytes, ctx: DecodeContext) -> object:
    try:
        good, bad = decode_payload_partial(payload, ctx)
    except FieldlinkError as exc:
        return (type(exc).__name__, exc.reason, exc.message)
    return (repr(good), [(i, type(e).__name__, e.reason, e.message) for i, e in bad])


json_numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?",
                  fullmatch=True))
number_fields = st.sampled_from(["value", "timestamp", "seq", "battery_voltage"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | message_like | st.lists(message_like | json_values, max_size=4),
       st.sampled_from(HINTS))
def test_json_fast_path_decodes_exactly_like_json(obj: object, hint: str | None) -> None:
    ctx = DecodeContext(received_ms=RECV, device_hint=hint)
    for payload in (json.dumps(obj).encode(), json.dumps(obj, ensure_ascii=False).encode(
            "utf-8", "surrogatepass")):
        assert _outcome(payload, ctx) == _outcome(payload, ctx, orjson=False)


@settings(max_examples=300, deadline=None)
@given(number_fields, json_numbers, st.sampled_from(HINTS))
def test_json_fast_path_numbers_exactly_like_json(name: str, number: object,
                                                  hint: str | None) -> None:
    """Number literals orjson reads differently (integers beyond 64 bits, overflowing
    exponents) must still decode as json reads them."""
    text = number if isinstance(number, str) else json.dumps(number)
    payload = (b'{"device_id":"sensor_001_line1","value":1.5,"location":{"line":%s},"%s":%s}'
               % (text.encode(), name.encode(), text.encode()))
    ctx = DecodeContext(received_ms=RECV, device_hint=hint)
    assert _outcome(payload, ctx) == _outcome(payload, ctx, orjson=False)


def test_json_fast_path_is_used_when_orjson_is_installed() -> None:
    import edge.payload.decode as decode

    pytest.importorskip("orjson")
    assert decode._orjson is not None
    ctx = DecodeContext(received_ms=RECV)
    for depth in (600, 1010, 5000):  # json's recursion limit decides, not orjson's
        deep = b"[" * depth + b"]" * depth
        assert _outcome(deep, ctx) == _outcome(deep, ctx, orjson=False)
    with pytest.raises(PayloadError):
        decode_payload(b"[" * 5000 + b"]" * 5000, ctx)


def test_decoded_readings_are_ordinary_frozen_readings() -> None:
    import edge.payload.decode as decode

    assert decode._reading is not Reading  # the slot-store constructor is in use
    (r,) = decode_payload(json.dumps(SEED).encode(), DecodeContext(received_ms=RECV))
    plain = Reading(*(getattr(r, f.name) for f in dataclasses.fields(Reading)))
    assert type(r) is Reading and r == plain and hash(r) == hash(plain)
    assert repr(r) == repr(plain) and r.idempotency_key() == plain.idempotency_key()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 1.0  # type: ignore[misc]
    assert dataclasses.replace(r, value=1.0).value == 1.0
