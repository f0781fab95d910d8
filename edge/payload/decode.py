"""Sensor bytes → validated `Reading`s: the only place in fieldlink where that happens.

Called by the gateway pipeline once per MQTT PUBLISH / CoAP POST / serial line with a
`DecodeContext` from the transport.  Pure: no I/O, no clock (`received_ms` is an argument).

Encodings, chosen by `DecodeContext.content_type` (parameters ignored), else sniffed:

* JSON (`application/json`; sniffed from `{` / `[`): a sensor message object or an array.
* msgpack (`application/msgpack`, `application/x-msgpack`, `application/vnd.msgpack`; sniffed
  from the map/array markers 0x80-0x9f, 0xdc-0xdf): a map or an array of maps.
* CBOR (`application/cbor` only — its first bytes overlap msgpack's, so never sniffed).
* bare number (ASCII `72.5`, `-3`, `1e3`, `nan`; or JSON that is a lone number): needs
  `device_hint`; the reading has no sensor time (`FLAG_TS_MISSING`).
* CSV (`text/csv`; sniffed when the text holds a comma): one reading per line, columns in
  this exact order: ``device_id,timestamp,value[,unit[,battery_voltage[,seq]]]``.  Blank
  device_id → `device_hint`; blank timestamp → no sensor time; blank unit/battery/seq →
  absent.  No quoting.  A first line starting with `device_id,` (a header) and blank lines
  are skipped.

`text/plain`, `application/octet-stream` and no content type sniff; any other content type
is a `PayloadError` (`unknown_encoding`).

The message (the seed's format; see `edge.payload.encode`)::

    {"device_id": "sensor_001_line1", "device_type": "temperature",
     "timestamp": 1705322445000, "value": 72.5, "unit": "celsius",
     "location": {"facility": "factory_a", "line": 1, "zone": "assembly"},
     "quality": "good", "battery_voltage": 4.8, "seq": 17}

Mapping: `device_type` → `measurement` (else `measurement_hint`, else "unknown"); `unit`
(else `unit_hint`, else ""); `location.line` becomes a string ("1"); location fields the
message lacks come from the context (registry defaults); `quality` is good|uncertain|bad
(any case), default "good"; unknown keys are ignored.  The transport's identity wins: with a
`device_hint`, a message naming another device is rejected as `device_mismatch` (this is how
the MQTT ACL extends to payload content).

Timestamps: int or float ms since the epoch, an ISO-8601 string (no zone means UTC), or a
numeric string.  A number below 1e11 is *seconds* and is multiplied by 1000 (1e11 ms is
1973-03-03, 1e11 s is the year 5138: no real time is ambiguous).  Floats round to the ms.
Outside [MIN_TS_MS, MAX_TS_MS] (2000..2100) the reading is rejected — a broken clock, not a
skew.  Further than `clock_skew_tolerance_ms` from `received_ms`: `ts_ms = received_ms`,
`sensor_ts_ms` = the claim, `FLAG_CLOCK_SKEW`.  Missing: `ts_ms = received_ms`,
`FLAG_TS_MISSING`.  Within tolerance the sensor's time is kept and `sensor_ts_ms` is None.

device_id: 1..128 characters (and ≤ `max_string_length`), printable, no whitespace, no `/`,
`+`, `#` or backslash (it is an MQTT topic level and an InfluxDB tag).  device_type, unit,
facility, line and zone must be printable strings ≤ `max_string_length` without a
backslash, and device_type must not start with `#`: they become InfluxDB measurements and
tags, where neither can be written faithfully — a reading the gateway acknowledged must be
storable everywhere downstream, so such input is refused here (`invalid_value`), before the
sensor is told it was stored.

Errors (`edge.errors`; every ValidationError has `.field`, `.reason`, `.value`):
`PayloadError` — not a message at all (`empty_payload`, `malformed_payload`: bad
JSON/msgpack/CBOR/UTF-8 or top-level shape, `unknown_encoding`); `Oversize` — bytes over
`max_payload_bytes` (checked before parsing), more than `max_readings`, a string too long;
`MissingField` (device_id, value); `WrongType` (bool is not a number; a batch element that is
not a map); `NonFinite` (value, battery_voltage, timestamp); `TimestampOutOfRange`; plain
`ValidationError` with reason `device_mismatch` or `invalid_value` (device_id characters,
quality, unparsable time, seq outside 0..2^63-1, CSV column count).  Nothing else escapes
for any input bytes (fuzzed in tests/unit/test_payload_decode.py).

Batches: `decode_payload_partial` returns the good readings (payload order) and
`(index, error)` per bad element, so the pipeline stores the good ones and dead-letters the
raw payload with each bad index and reason: nothing lost, everything counted.
`decode_payload` is all-or-nothing and raises the first bad element's error prefixed
"reading [i]:".  Payload-level problems (PayloadError, too many bytes or readings) raise in both.

JSON is parsed with orjson when it is installed (the gateway extra) and the payload cannot
hit one of its two differences from `json` (see `_load_json`); else, and whenever orjson
refuses the bytes, with `json` — so results and error messages are json's in every case.

Cost of the seed message (CPython 3.11, one core of the 2-core development VM, best of 40
timeit runs): `json.loads` 4.6 µs, `decode_payload` 10.0 µs — 5.4 µs on top, of which 2.3 µs
is constructing the frozen `Reading`; msgpack: `unpackb` 1.7 µs, `decode_payload` 6.9 µs.
In executed instructions (valgrind, the development venv's CPython): `json.loads` 39k,
`orjson.loads` 10k, `decode_payload_partial` 88k with json, 65k with orjson.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack

from edge.errors import MissingField, NonFinite, Oversize, PayloadError  # isort: skip
from edge.errors import TimestampOutOfRange, ValidationError, WrongType
from edge.model import FLAG_CLOCK_SKEW, FLAG_TS_MISSING, MAX_TS_MS, MIN_TS_MS, Reading

__all__ = ["DecodeContext", "Limits", "decode_payload", "decode_payload_partial",
           "is_valid_device_id", "DEVICE_ID_MAX_LENGTH", "DEFAULT_MEASUREMENT"]

#: hard cap on device ids, whatever `Limits.max_string_length` says
DEVICE_ID_MAX_LENGTH = 128
#: measurement when neither the message nor the context names one
DEFAULT_MEASUREMENT = "unknown"
#: integers below this are seconds, not milliseconds
_SECONDS_BELOW = 100_000_000_000
_QUALITIES = {"good": "good", "uncertain": "uncertain", "bad": "bad"}
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """What one payload may hold.  The gateway builds it from the `validation` config."""

    max_payload_bytes: int = 65_536
    max_readings: int = 1000
    max_string_length: int = 128
    clock_skew_tolerance_ms: int = 300_000
    min_ts_ms: int = MIN_TS_MS
    max_ts_ms: int = MAX_TS_MS


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """Everything the decoder knows besides the bytes.

    `received_ms` is the gateway's receive time (required).  `device_hint` is the device the
    transport authenticated or addressed (MQTT username/topic, CoAP resource, serial port
    map); when set it wins over the payload.  `measurement_hint`, `unit_hint`, `facility`,
    `line`, `zone` are defaults from the device registry, used only where the message is
    silent.  `content_type` is what the transport declared (None: sniff).
    """

    received_ms: int
    device_hint: str | None = None
    measurement_hint: str | None = None
    unit_hint: str | None = None
    facility: str | None = None
    line: str | None = None
    zone: str | None = None
    content_type: str | None = None
    limits: Limits = field(default=DEFAULT_LIMITS)


def decode_payload(payload: bytes | bytearray | memoryview, ctx: DecodeContext) -> list[Reading]:
    """All readings of `payload`, or raise: a FieldlinkError subclass naming the problem.

    For a batch, the first invalid element's error is raised with "reading [i]:" prefixed.
    """
    received = ctx.received_ms
    kind, items, batch = _parse(payload, ctx)
    if not batch and kind == "map":  # the hot path: one JSON/msgpack object
        return [_from_mapping(items[0], ctx, received)]
    out = []
    for i, item in enumerate(items):
        try:
            out.append(_build(kind, item, ctx, received))
        except ValidationError as exc:
            if not batch:
                raise
            raise _with_index(exc, i) from None
    return out


def decode_payload_partial(payload: bytes | bytearray | memoryview, ctx: DecodeContext, *,
                           received_ms: int | None = None
                           ) -> tuple[list[Reading], list[tuple[int, ValidationError]]]:
    """(good readings in payload order, [(index, error) for each invalid element]).

    Raises PayloadError / Oversize only for problems of the payload as a whole.  For a single
    message the index is 0.  `received_ms`, when given, stands for `ctx.received_ms` (so a
    caller can keep one context per source instead of building one per payload).
    """
    received = ctx.received_ms if received_ms is None else received_ms
    kind, items, _ = _parse(payload, ctx)
    good: list[Reading] = []
    bad: list[tuple[int, ValidationError]] = []
    for i, item in enumerate(items):
        try:
            good.append(_build(kind, item, ctx, received))
        except ValidationError as exc:
            bad.append((i, exc))
    return good, bad


def is_valid_device_id(s: str) -> bool:
    """The device_id rule above (config files and CLIs use it for ids they are given)."""
    return (0 < len(s) <= DEVICE_ID_MAX_LENGTH and s.isprintable()
            and _BAD_ID.search(s) is None)


#: content type → encoding; None means sniff
_CONTENT_TYPES: dict[str, str | None] = {
    "application/json": "json", "text/json": "json", "application/msgpack": "msgpack",
    "application/x-msgpack": "msgpack", "application/vnd.msgpack": "msgpack",
    "application/cbor": "cbor", "text/csv": "csv", "text/plain": None,
    "application/octet-stream": None}
_BARE = re.compile(rb"\s*[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|infinity)\s*",
                   re.IGNORECASE)
_WS = b" \t\r\n"


class _CsvRow(tuple[str, ...]):
    """One CSV line split into columns (a type of its own so batches can't confuse it)."""


def _parse(payload: bytes | bytearray | memoryview, ctx: DecodeContext
           ) -> tuple[str, list[Any], bool]:
    """(kind, items, is_batch) with kind in "map" | "bare" | "csv"."""
    if type(payload) is not bytes:
        if not isinstance(payload, (bytearray, memoryview)):
            raise PayloadError(f"payload must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
    limits = ctx.limits
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise Oversize(f"payload is {size} bytes, over the limit of {limits.max_payload_bytes}",
                       field="payload", value=size)
    encoding = None
    if ctx.content_type is not None:
        ct = ctx.content_type.split(";", 1)[0].strip().lower()
        if ct not in _CONTENT_TYPES:
            raise PayloadError(f"unknown content type {ctx.content_type!r}: expected JSON, "
                               f"msgpack, CBOR, CSV or text/plain", reason="unknown_encoding")
        encoding = _CONTENT_TYPES[ct]
    if not size or (payload[0] in _WS and not payload.strip(_WS)):
        raise PayloadError("empty payload: no reading in it", reason="empty_payload")
    if encoding is None:
        first = payload[0]
        if first in _WS:
            first = payload.lstrip(_WS)[0]
        if first in b"{[":
            encoding = "json"
        elif 0x80 <= first <= 0x9F or 0xDC <= first <= 0xDF:
            encoding = "msgpack"
        elif _BARE.fullmatch(payload):
            return "bare", [payload], False
        elif b"," in payload:
            encoding = "csv"
        else:
            raise PayloadError(f"not a sensor message: not JSON, msgpack, a number or CSV "
                               f"(starts with {payload[:16]!r})")
    if encoding == "json":
        return _shape(_load_json(payload), "JSON", limits)
    if encoding == "msgpack":
        return _shape(_load_msgpack(payload), "msgpack", limits)
    if encoding == "cbor":
        return _shape(_load_cbor(payload), "CBOR", limits)
    return _split_csv(payload, limits)


def _load_json(payload: bytes) -> Any:
    if _orjson is not None:
        # orjson parses a sensor message in a quarter of json's time, and for every input
        # it accepts gives json's result — except integer literals outside 64 bits (it
        # makes them floats) and nesting json's recursion limit refuses, so payloads that
        # may hold either go to json; whatever orjson refuses, json decides and words
        scan = payload.translate(_JSON_SCAN)
        if _DIGITS_19 not in scan and (len(scan) < _ORJSON_MAX_BRACKETS
                                       or scan.count(b"[") < _ORJSON_MAX_BRACKETS):
            try:
                return _orjson.loads(payload)
            except _orjson.JSONDecodeError:
                pass
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise PayloadError(f"invalid JSON: {exc}") from None


try:
    import orjson as _orjson  # in the gateway extra; without it, json alone
except ImportError:  # pragma: no cover - depends on the installation
    _orjson = None  # type: ignore[assignment]
#: digits -> "0", "[" and "{" -> "[", any other byte -> " " (one C pass over the payload)
_JSON_SCAN = bytes(48 if 48 <= b <= 57 else 91 if b in (91, 123) else 32 for b in range(256))
_DIGITS_19 = b"0" * 19  # 2**63 has 19 digits; orjson keeps integers below that exact
_ORJSON_MAX_BRACKETS = 512


def _load_msgpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, timestamp=3)
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError…)
        raise PayloadError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None


def _load_cbor(payload: bytes) -> Any:
    try:
        import cbor2  # the gateway extra ships it; a pure-edge install may not
    except ImportError:
        raise PayloadError("CBOR payloads need the cbor2 package "
                           "(pip install 'fieldlink[gateway]')",
                           reason="unknown_encoding") from None
    try:
        return cbor2.loads(payload)
    except Exception as exc:  # CBORDecodeError and whatever a hostile tag triggers
        raise PayloadError(f"invalid CBOR: {type(exc).__name__}: {exc}") from None


def _shape(obj: Any, what: str, limits: Limits) -> tuple[str, list[Any], bool]:
    if isinstance(obj, dict):
        return "map", [obj], False
    if isinstance(obj, list):
        if len(obj) > limits.max_readings:
            raise Oversize(f"payload holds {len(obj)} readings, over the limit of "
                           f"{limits.max_readings}", field="payload", value=len(obj))
        return "map", obj, True
    if type(obj) in (int, float):
        return "bare", [obj], False
    raise PayloadError(f"{what} payload must be an object (map) or an array of them, "
                       f"got {_type_name(obj)}")


def _split_csv(payload: bytes, limits: Limits) -> tuple[str, list[Any], bool]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"CSV payload is not UTF-8: {exc}") from None
    rows = []
    for n, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if not line or (n == 0 and line.startswith("device_id,")):
            continue
        rows.append(_CsvRow(col.strip() for col in line.split(",")))
    if len(rows) > limits.max_readings:
        raise Oversize(f"payload holds {len(rows)} readings, over the limit of "
                       f"{limits.max_readings}", field="payload", value=len(rows))
    return "csv", rows, len(rows) != 1


def _build(kind: str, item: Any, ctx: DecodeContext, received: int) -> Reading:
    if kind == "map":
        if not isinstance(item, dict):
            raise WrongType(f"batch element must be a message object, got {_type_name(item)}",
                            field=None, value=item)
        return _from_mapping(item, ctx, received)
    if kind == "csv":
        return _from_csv(item, ctx, received)
    return _from_bare(item, ctx, received)


def _from_mapping(msg: dict[Any, Any], ctx: DecodeContext, received: int) -> Reading:
    # Each field is checked inline for its common form (a string seen valid before, a
    # finite float, an int in range) and otherwise by its checker, which accepts or raises
    # exactly as documented: the inline checks only skip work, never change a verdict.
    limits = ctx.limits
    max_len = limits.max_string_length
    raw = msg.get("device_id")
    hint = ctx.device_hint
    if (raw.__class__ is str and (hint is None or raw == hint) and raw in _VALID_IDS
            and len(raw) <= max_len):
        device_id: str = raw
    else:
        device_id = _device_id(raw, ctx)
    value = msg.get("value")
    if value.__class__ is not float or not _isfinite(value):
        if value is None:
            raise MissingField("value is missing", field="value")
        value = _number(value, "value")
    measurement = msg.get("device_type")
    if measurement.__class__ is str and measurement in _OK_TEXT and len(measurement) <= max_len \
            and measurement[0] != "#":
        pass
    elif measurement is None:
        measurement = ctx.measurement_hint or DEFAULT_MEASUREMENT
    elif not _text(measurement, "device_type", limits):
        raise ValidationError("device_type is empty", field="device_type",
                              reason="invalid_value", value=measurement)
    elif measurement[0] == "#":
        raise ValidationError(f"device_type {_show(measurement)} starts with '#', which "
                              "cannot be stored as an InfluxDB measurement",
                              field="device_type", reason="invalid_value", value=measurement)
    unit = msg.get("unit")
    if unit.__class__ is not str or unit not in _OK_TEXT or len(unit) > max_len:
        unit = ctx.unit_hint or "" if unit is None else _text(unit, "unit", limits)
    facility, line, zone = ctx.facility, ctx.line, ctx.zone
    loc = msg.get("location")
    if loc is not None:
        if not isinstance(loc, dict):
            raise WrongType(f"location must be a mapping, got {_type_name(loc)}",
                            field="location", value=loc)
        v = loc.get("facility")
        if v is not None:
            facility = v if v.__class__ is str and v in _OK_TEXT and len(v) <= max_len else \
                _text(v, "location.facility", limits)
        v = loc.get("line")
        if v is not None:
            line = _line(v, limits)
        v = loc.get("zone")
        if v is not None:
            zone = v if v.__class__ is str and v in _OK_TEXT and len(v) <= max_len else \
                _text(v, "location.zone", limits)
    quality = msg.get("quality")
    if quality is None:
        quality = "good"
    elif type(quality) is not str or quality not in _QUALITIES:
        quality = _quality(quality)
    battery = msg.get("battery_voltage")
    if battery is not None and (battery.__class__ is not float or not _isfinite(battery)):
        battery = _number(battery, "battery_voltage")
    seq = msg.get("seq")
    if seq is not None and (seq.__class__ is not int or not 0 <= seq <= _INT64_MAX):
        seq = _seq(seq)
    ts = msg.get("timestamp")
    if ts is None:
        return _reading(device_id, received, value, measurement, unit, facility, line, zone,
                        quality, battery, seq, received, None, FLAG_TS_MISSING)
    if not (ts.__class__ is int and _SECONDS_BELOW <= ts and limits.min_ts_ms <= ts
            <= limits.max_ts_ms):
        ts = _timestamp(ts, limits)
    if abs(ts - received) > limits.clock_skew_tolerance_ms:
        return _reading(device_id, received, value, measurement, unit, facility, line, zone,
                        quality, battery, seq, received, ts, FLAG_CLOCK_SKEW)
    return _reading(device_id, ts, value, measurement, unit, facility, line, zone, quality,
                    battery, seq, received, None, 0)


class _Draft:
    """A `Reading` under construction: the same slots, but writable.

    A frozen dataclass sets each of its 14 fields through `object.__setattr__` (21.6k
    instructions per reading here, the single largest cost of decoding a message); plain slot
    stores and one `__class__` switch to `Reading` take 4k.  The result is an ordinary
    `Reading` (same type, fields, equality, hash, immutability).  Used only while `Reading`
    has no `__post_init__` and the switch is checked to work at import (`_reading`).
    """

    __slots__ = Reading.__slots__  # type: ignore[attr-defined]
    device_id: str
    ts_ms: int
    value: float
    measurement: str
    unit: str
    facility: str | None
    line: str | None
    zone: str | None
    quality: str
    battery_voltage: float | None
    seq: int | None
    received_ms: int
    sensor_ts_ms: int | None
    flags: int


def _draft_reading(device_id: str, ts_ms: int, value: float, measurement: str, unit: str,
                   facility: str | None, line: str | None, zone: str | None, quality: str,
                   battery_voltage: float | None, seq: int | None, received_ms: int,
                   sensor_ts_ms: int | None, flags: int) -> Reading:
    r = _Draft()
    r.device_id = device_id
    r.ts_ms = ts_ms
    r.value = value
    r.measurement = measurement
    r.unit = unit
    r.facility = facility
    r.line = line
    r.zone = zone
    r.quality = quality
    r.battery_voltage = battery_voltage
    r.seq = seq
    r.received_ms = received_ms
    r.sensor_ts_ms = sensor_ts_ms
    r.flags = flags
    r.__class__ = Reading  # type: ignore[assignment]
    return r  # type: ignore[return-value]


def _choose_constructor() -> Any:
    probe = ("d", 1, 2.0, "m", "u", "f", "1", "z", "good", 3.5, 7, 9, None, 0)
    try:
        if not hasattr(Reading, "__post_init__") and _draft_reading(*probe) == Reading(*probe):
            return _draft_reading
    except (TypeError, AttributeError):  # a layout the switch does not support
        pass
    return Reading


#: builds the `Reading`s of decoded messages (positional, in field order)
_reading = _choose_constructor()


def _from_bare(item: bytes | int | float, ctx: DecodeContext, received: int) -> Reading:
    if ctx.device_hint is None:
        raise MissingField("a bare number carries no device_id: it must arrive on a topic or "
                           "resource that names the device", field="device_id")
    # _BARE matched, so float() accepts the bytes; _from_mapping checks finiteness
    value = float(item) if isinstance(item, bytes) else item
    return _from_mapping({"value": value}, ctx, received)


_CSV_FIELDS = ("device_id", "timestamp", "value", "unit", "battery_voltage", "seq")


def _from_csv(row: _CsvRow, ctx: DecodeContext, received: int) -> Reading:
    if not 3 <= len(row) <= len(_CSV_FIELDS):
        raise ValidationError(f"CSV line has {len(row)} columns; expected 3 to 6: "
                              f"{','.join(_CSV_FIELDS)}", field="csv", reason="invalid_value",
                              value=",".join(row)[:80])
    msg: dict[str, Any] = {}
    for name, col in zip(_CSV_FIELDS, row):
        if col:
            msg[name] = col
    if "value" in msg:
        msg["value"] = _csv_number(msg["value"], "value")
    if "battery_voltage" in msg:
        msg["battery_voltage"] = _csv_number(msg["battery_voltage"], "battery_voltage")
    if "seq" in msg:
        s = msg["seq"]
        if not (s.isascii() and s.isdigit() and len(s) <= 19):
            raise WrongType(f"seq must be a non-negative integer, got {_show(s)}",
                            field="seq", value=s)
        msg["seq"] = int(s)
    return _from_mapping(msg, ctx, received)


def _device_id(raw: Any, ctx: DecodeContext) -> str:
    hint = ctx.device_hint
    if raw is None:
        if hint is None:
            raise MissingField("device_id is missing and the transport names no device",
                               field="device_id")
        raw = hint
    elif type(raw) is not str:
        raise WrongType(f"device_id must be a string, got {_type_name(raw)}",
                        field="device_id", value=raw)
    elif hint is not None and raw != hint:
        raise ValidationError(f"device_id {_show(raw)} does not match the device the transport "
                              f"authenticated ({_show(hint)})", field="device_id",
                              reason="device_mismatch", value=raw)
    n = len(raw)
    if raw in _VALID_IDS and n <= ctx.limits.max_string_length:
        return raw
    if n > DEVICE_ID_MAX_LENGTH or n > ctx.limits.max_string_length:
        raise Oversize(f"device_id is {n} characters, over the limit of "
                       f"{min(DEVICE_ID_MAX_LENGTH, ctx.limits.max_string_length)}",
                       field="device_id", value=raw[:40])
    if not n or not raw.isprintable() or _BAD_ID.search(raw):
        raise ValidationError(f"device_id {_show(raw)} is invalid: it must be 1-128 printable "
                              f"characters without whitespace, '/', '+', '#' or backslash",
                              field="device_id", reason="invalid_value", value=raw)
    if len(_VALID_IDS) >= _VALID_IDS_MAX:  # bounded: a flood of fake ids cannot grow it
        _VALID_IDS.clear()
    _VALID_IDS.add(raw)
    return raw


_BAD_ID = re.compile(r"[\s/+#\\]")
#: ids that passed the checks above (a fleet's ids repeat ~10,000×/s; the regex is the cost)
_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 65_536


def _number(v: Any, name: str) -> float:
    t = type(v)
    if t is float:
        if math.isfinite(v):
            return v  # type: ignore[no-any-return]
        raise NonFinite(f"{name} must be a finite number, got {v}", field=name, value=v)
    if t is int:
        try:
            return float(v)
        except OverflowError:
            raise NonFinite(f"{name} {_show(v)} is too large for a float", field=name,
                            value=v) from None
    raise WrongType(f"{name} must be a number, got {_type_name(v)} {_show(v)}",
                    field=name, value=v)


def _csv_number(s: str, name: str) -> float:
    try:
        return _number(float(s), name)
    except ValueError:
        raise WrongType(f"{name} must be a number, got {_show(s)}", field=name,
                        value=s) from None


def _text(v: Any, name: str, limits: Limits) -> str:
    if type(v) is not str:
        raise WrongType(f"{name} must be a string, got {_type_name(v)}", field=name, value=v)
    if len(v) > limits.max_string_length:
        raise Oversize(f"{name} is {len(v)} characters, over the limit of "
                       f"{limits.max_string_length}", field=name, value=v[:40])
    if not v.isprintable():
        raise ValidationError(f"{name} {_show(v)} holds control characters",
                              field=name, reason="invalid_value", value=v)
    if "\\" in v:
        raise ValidationError(f"{name} {_show(v)} holds a backslash, which cannot be stored "
                              "as an InfluxDB tag", field=name, reason="invalid_value", value=v)
    if v:
        if len(_OK_TEXT) >= _VALID_IDS_MAX:  # bounded like _VALID_IDS
            _OK_TEXT.clear()
        _OK_TEXT.add(v)
    return v


#: non-empty strings `_text` accepted (units, measurements, tags repeat with every message);
#: the length limit is checked on every use, it depends on the context
_OK_TEXT: set[str] = set()
_isfinite = math.isfinite


def _line(v: Any, limits: Limits) -> str:
    if type(v) is int:
        return str(v)
    return _text(v, "location.line", limits)


def _quality(v: Any) -> str:
    if type(v) is not str:
        raise WrongType(f"quality must be a string, got {_type_name(v)}", field="quality",
                        value=v)
    q = _QUALITIES.get(v.lower())
    if q is None:
        raise ValidationError(f"quality {_show(v)} is not one of good, uncertain, bad",
                              field="quality", reason="invalid_value", value=v)
    return q


def _seq(v: Any) -> int:
    if type(v) is not int:
        raise WrongType(f"seq must be an integer, got {_type_name(v)} {_show(v)}",
                        field="seq", value=v)
    if not 0 <= v <= _INT64_MAX:
        raise ValidationError(f"seq {v} is outside 0..2^63-1", field="seq",
                              reason="invalid_value", value=v)
    return v  # type: ignore[no-any-return]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUM_STR = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
_FRACTION = re.compile(r"[.eE]")


def _timestamp(v: Any, limits: Limits) -> int:
    """Sensor time in ms since the epoch, range-checked (see the module docstring)."""
    t = type(v)
    if t is int:
        ms = v * 1000 if v < _SECONDS_BELOW else v
    elif t is float:
        if not math.isfinite(v):
            raise NonFinite(f"timestamp must be finite, got {v}", field="timestamp", value=v)
        ms = round(v * 1000 if abs(v) < _SECONDS_BELOW else v)
    elif t is str:
        if len(v) > 64:
            raise Oversize(f"timestamp string is {len(v)} characters, too long for a time",
                           field="timestamp", value=v[:40])
        s = v.strip()
        if _NUM_STR.fullmatch(s):  # CSV columns and lenient JSON senders
            return _timestamp(float(s) if _FRACTION.search(s) else int(s), limits)
        ms = _iso_ms(s)
    elif isinstance(v, datetime):  # CBOR tags 0/1, msgpack timestamp extension
        ms = _datetime_ms(v, v)
    else:
        raise WrongType(f"timestamp must be a number of ms, seconds or an ISO-8601 string, "
                        f"got {_type_name(v)}", field="timestamp", value=v)
    if not limits.min_ts_ms <= ms <= limits.max_ts_ms:
        raise TimestampOutOfRange(f"timestamp {_show(v)} is outside 2000-01-01..2100-01-01",
                                  field="timestamp", value=v)
    return ms  # type: ignore[no-any-return]


def _iso_ms(s: str) -> int:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValidationError(f"timestamp {_show(s)} is neither a number nor an ISO-8601 time",
                              field="timestamp", reason="invalid_value", value=s) from None
    return _datetime_ms(dt, s)


def _datetime_ms(dt: datetime, shown: Any) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        delta = dt - _EPOCH
    except OverflowError:
        raise TimestampOutOfRange(f"timestamp {_show(shown)} is outside 2000-01-01..2100-01-01",
                                  field="timestamp", value=shown) from None
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _type_name(v: Any) -> str:
    """The value's type in the sender's terms (JSON names where they exist)."""
    if v is None or isinstance(v, bool):
        return "null" if v is None else "boolean"
    return "mapping" if isinstance(v, Mapping) else "array" if isinstance(
        v, (list, tuple)) else type(v).__name__


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _with_index(exc: ValidationError, index: int) -> ValidationError:
    out = type(exc)(f"reading [{index}]: {exc.message}", field=exc.field, reason=exc.reason,
                    value=exc.value)
    out.index = index  # type: ignore[attr-defined]
    return out
