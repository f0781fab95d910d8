"""The bytes a simulated sensor sends for a reading — the seed's sensor message, nothing new.

Well-formed payloads come from `edge.payload.encode`: `to_message` serialised exactly as
`encode_json` does (same separators; the encoder object is reused), or `encode_msgpack`.  The
serial CSV line follows the column order `edge.payload.decode` documents,
``device_id,timestamp,value,unit,battery_voltage,seq`` (blank timestamp: the sensor has
none), built from the same `to_message` mapping.

Malformed payloads (fault `malformed`) are derived from a good one, so each is wrong in
exactly the one way its variant names:

* ``bad_json`` — the encoding is cut short and ends in garbage (for msgpack: truncated
  bytes; for CSV: a line with too few columns);
* ``wrong_type`` — `value` is the string ``"n/a"``;
* ``oversize`` — `unit` is padded so the payload is at least `oversize_bytes` long.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from edge.model import Reading
from edge.payload.encode import encode_msgpack, to_message

FORMATS = ("json", "msgpack", "csv")
VARIANTS = ("bad_json", "wrong_type", "oversize")


def _csv(msg: dict[str, Any]) -> bytes:
    def cell(key: str) -> str:
        v = msg.get(key)
        return "" if v is None else str(v)

    return ",".join((cell("device_id"), cell("timestamp"), cell("value"), cell("unit"),
                     cell("battery_voltage"), cell("seq"))).encode()


def _dump(msg: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(msg, separators=(",", ":")).encode()
    if fmt == "msgpack":
        return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]
    return _csv(msg)


#: the encoder `encode_json` builds per call, built once (10,000 payloads a second); a unit
#: test holds the bytes equal to encode_json's
_JSON = json.JSONEncoder(separators=(",", ":"))


def encode(reading: Reading, fmt: str) -> bytes:
    """A well-formed payload (no trailing newline; the serial transport adds it)."""
    if fmt == "json":
        return _JSON.encode(to_message(reading)).encode()
    if fmt == "msgpack":
        return encode_msgpack(reading)
    if fmt == "csv":
        return _csv(to_message(reading))
    raise ValueError(f"unknown payload format {fmt!r}")


#: stand-ins for the per-reading fields while a JSON template is cut; NUL never appears in
#: the printable strings of a message, so they cannot collide with its text
_HOLES = ("\x00ts", "\x00value", "\x00battery", "\x00seq")


class MessageTemplate:
    """One device's sensor message for one measurement, with the per-reading fields to fill.

    It is `to_message` of a prototype reading of the device.  For JSON it is cut once into
    the constant text around timestamp, value, battery_voltage and seq, and `render` joins
    the pieces with the numbers as `json` writes them (`repr` of the finite float, the int);
    other formats copy the mapping and set the fields in place.  Either way key order and
    every byte are what `encode` gives for the full `Reading` (held equal by a unit test).
    Why: building a frozen `Reading`, its message and running the JSON encoder costs several
    times more than this, and it runs 10,000 times a second.  Only readings with a timestamp
    and a finite value take this path; the device model sends the others through `encode`.
    """

    __slots__ = ("msg", "fmt", "parts", "battery")

    def __init__(self, prototype: Reading, fmt: str):
        if prototype.seq is None:
            raise ValueError("the prototype needs a seq")
        self.msg = to_message(prototype)
        self.fmt = fmt
        self.battery = "battery_voltage" in self.msg
        self.parts: tuple[str, ...] = ()
        if fmt == "json":
            holed = dict(self.msg, timestamp=_HOLES[0], value=_HOLES[1], seq=_HOLES[3])
            if self.battery:
                holed["battery_voltage"] = _HOLES[2]
            text = _JSON.encode(holed)
            parts = []
            for hole in _HOLES:
                if hole == _HOLES[2] and not self.battery:
                    continue
                before, sep, text = text.partition(_JSON.encode(hole))
                if not sep:
                    raise ValueError("message keys out of the expected order")
                parts.append(before)
            parts.append(text)
            self.parts = tuple(parts)

    def render(self, ts_ms: int, value: float, battery_voltage: float | None, seq: int) -> bytes:
        if self.parts:
            p = self.parts
            if self.battery:
                return (f"{p[0]}{ts_ms}{p[1]}{value!r}{p[2]}{battery_voltage!r}{p[3]}{seq}"
                        f"{p[4]}").encode()
            return f"{p[0]}{ts_ms}{p[1]}{value!r}{p[2]}{seq}{p[3]}".encode()
        msg = self.msg.copy()
        msg["timestamp"] = ts_ms
        msg["value"] = value
        if battery_voltage is not None:
            msg["battery_voltage"] = battery_voltage
        msg["seq"] = seq
        return _dump(msg, self.fmt)


def malformed(reading: Reading, fmt: str, variant: str, oversize_bytes: int) -> bytes:
    """A payload for `reading` that a correct gateway must reject, in the named way."""
    msg = to_message(reading)
    if variant == "bad_json":
        good = _dump(msg, fmt)
        if fmt == "csv":
            return good.split(b",", 2)[0] + b",\x01garbage"
        return good[: max(1, len(good) // 2)] + b"\x00}{garbage"
    if variant == "wrong_type":
        msg["value"] = "n/a"
        return _dump(msg, fmt)
    if variant == "oversize":
        base = len(_dump(msg, fmt))
        msg["unit"] = str(msg.get("unit", "")) + "x" * max(1, oversize_bytes - base + 1)
        return _dump(msg, fmt)
    raise ValueError(f"unknown malformed variant {variant!r}")
