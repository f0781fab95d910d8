"""The bytes a simulated sensor sends for a reading — the seed's sensor message, nothing new.

Well-formed payloads come from `edge.payload.encode` (`encode_json`, `encode_msgpack`).  The
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
from edge.payload.encode import encode_json, encode_msgpack, to_message

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


def encode(reading: Reading, fmt: str) -> bytes:
    """A well-formed payload (no trailing newline; the serial transport adds it)."""
    if fmt == "json":
        return encode_json(reading)
    if fmt == "msgpack":
        return encode_msgpack(reading)
    if fmt == "csv":
        return _csv(to_message(reading))
    raise ValueError(f"unknown payload format {fmt!r}")


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
