"""Readings → the sensor message format (the seed's, our default on the wire from sensors).

    {"device_id": "sensor_001_line1", "device_type": "temperature",
     "timestamp": 1705322445000, "value": 72.5, "unit": "celsius",
     "location": {"facility": "factory_a", "line": 1, "zone": "assembly"},
     "quality": "good", "battery_voltage": 4.8, "seq": 17}

`line` is written as an integer when it is all digits (as the seed's sensors send it).
`seq` is written only when the reading has one; `timestamp` is omitted when the reading is
flagged as having none.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from edge.model import FLAG_TS_MISSING, Reading


def to_message(r: Reading) -> dict[str, Any]:
    msg: dict[str, Any] = {"device_id": r.device_id, "device_type": r.measurement}
    if not r.flags & FLAG_TS_MISSING:
        msg["timestamp"] = r.sensor_ts_ms if r.sensor_ts_ms is not None else r.ts_ms
    msg["value"] = r.value
    if r.unit:
        msg["unit"] = r.unit
    loc: dict[str, Any] = {}
    if r.facility is not None:
        loc["facility"] = r.facility
    if r.line is not None:
        loc["line"] = int(r.line) if r.line.isascii() and r.line.isdigit() else r.line
    if r.zone is not None:
        loc["zone"] = r.zone
    if loc:
        msg["location"] = loc
    msg["quality"] = r.quality
    if r.battery_voltage is not None:
        msg["battery_voltage"] = r.battery_voltage
    if r.seq is not None:
        msg["seq"] = r.seq
    return msg


def encode_json(r: Reading) -> bytes:
    return json.dumps(to_message(r), separators=(",", ":")).encode()


def encode_msgpack(r: Reading) -> bytes:
    return msgpack.packb(to_message(r), use_bin_type=True)


def encode_json_batch(readings: list[Reading]) -> bytes:
    """A JSON array of messages (CoAP batched POSTs, serial bursts)."""
    return json.dumps([to_message(r) for r in readings], separators=(",", ":")).encode()
