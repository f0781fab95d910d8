"""Hostile payloads through the gateway pipeline (decode → dead-letter / commit): nothing
raises, nothing vanishes, every refusal is counted and dead-lettered — and whatever the
gateway accepts, the cloud can carry and store.

The buffer is a recording fake at the pipeline's `BufferLike` seam.  Payloads come from
hypothesis: arbitrary bytes, JSON / msgpack / CBOR messages with hostile field values,
batches, CSV lines and bare numbers, under every content type an ingress may declare.

Properties, per payload:

1. `Pipeline.ingest` returns (never raises: the fake buffer never refuses).
2. The payload is either taken (readings appended) or dead-lettered with its raw bytes —
   and a rejected outcome always has exactly one dead letter with the outcome's reason.
3. The pipeline's refusal counters equal the dead letters written.
4. Every appended reading passes cloud ingest's validation, survives the wire codec
   unchanged, and can be written as InfluxDB line protocol: a reading the gateway
   acknowledges must never be refused downstream.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.errors import PointRejected
from cloud.ingest.validate import check_readings
from cloud.sinks.influx.lineproto import LineBuilder
from edge.codec import Batch, decode_batch, encode_batch
from edge.model import Reading
from edge.payload.decode import Limits
from edge.testing import FakeClock
from gateway.buffer import AppendResult
from gateway.ingest import Origin
from gateway.pipeline import DeviceDefaults, Pipeline

NOW = 1_705_322_445_000
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class RecordingBuffer:
    appended: list[Reading] = field(default_factory=list)
    dead: list[tuple[bytes, str, str]] = field(default_factory=list)

    async def append(self, readings: Sequence[Reading], *, durable: bool = True
                     ) -> AppendResult:
        self.appended += readings
        return AppendResult(stored=len(readings))

    async def dead_letter(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                          detail: str = "", durable: bool = True) -> None:
        self.dead.append((raw, source, reason))


# --------------------------------------------------------------------------- strategies

text = st.text(st.characters(codec="utf-8"), max_size=12)
weird_text = st.one_of(text, st.sampled_from(
    ["dev\\", "a\\ b", "x,y", "a=b", 'q"', "#hash", "tab\tx", "nl\nx", "sp ace", "", "é",
     "\u200b", "\x00", "a/b", "+", "$SYS", "dev\\,x", "\\", "ok_device-1"]))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
                   st.sampled_from([1e308, -1e308, 5e-324, 1705322445000, 1705322445,
                                    "21.5", "nan", True, None]))
any_value = st.one_of(number, weird_text, st.lists(st.integers(), max_size=2),
                      st.dictionaries(text, st.integers(), max_size=2))
timestamp = st.one_of(st.integers(-2**63, 2**64), st.floats(allow_nan=True),
                      st.sampled_from([NOW, NOW / 1000, "2024-01-15T12:00:45Z", "2024-13-45",
                                       "1705322445000", str(NOW / 1000), None, True, ""]))
message = st.fixed_dictionaries({}, optional={
    "device_id": weird_text, "device_type": weird_text, "timestamp": timestamp,
    "value": number, "unit": weird_text, "quality": st.one_of(weird_text, st.sampled_from(
        ["good", "BAD", "Uncertain"])),
    "battery_voltage": number, "seq": st.one_of(st.integers(-2, 2**64), any_value),
    "location": st.one_of(any_value, st.fixed_dictionaries({}, optional={
        "facility": weird_text, "line": st.one_of(st.integers(-5, 10**20), weird_text),
        "zone": weird_text})),
    "extra": any_value})


def _encode(obj: Any, how: str) -> bytes:
    if how == "json":
        return json.dumps(obj, default=str).encode()
    if how == "msgpack":
        return msgpack.packb(obj, default=str)  # type: ignore[no-any-return]
    return cbor2.dumps(obj, default=lambda enc, v: enc.encode(str(v)))


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["bytes", "message", "batch", "csv", "bare"]))
    content_types = [None, "application/json", "application/msgpack", "application/cbor",
                     "text/csv", "text/plain", "application/octet-stream", "weird/type",
                     "application/json; charset=utf-8"]
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(st.sampled_from(content_types))
    if kind in ("message", "batch"):
        how = draw(st.sampled_from(["json", "msgpack", "cbor"]))
        obj: Any = draw(message) if kind == "message" else draw(
            st.lists(st.one_of(message, any_value), max_size=6))
        ctype = {"json": "application/json", "msgpack": "application/msgpack",
                 "cbor": "application/cbor"}[how]
        return _encode(obj, how), draw(st.sampled_from([ctype, None, ctype]))
    if kind == "csv":
        rows = draw(st.lists(st.lists(st.one_of(weird_text, number.map(str)), max_size=7),
                             max_size=5))
        return ("\n".join(",".join(map(str, r)) for r in rows)).encode(), draw(
            st.sampled_from(["text/csv", None]))
    return str(draw(number)).encode(), draw(st.sampled_from([None, "text/plain"]))


origins = st.builds(
    Origin, protocol=st.sampled_from(["mqtt", "coap", "serial"]),
    peer=st.just("10.0.0.7:41000"),
    device_hint=st.one_of(st.none(), st.sampled_from(["sensor_001", "dev\\", "a,b", "known"])),
    content_type=st.none())


def _pipeline(buffer: RecordingBuffer, reject_unknown: bool) -> Pipeline:
    limits = Limits(max_payload_bytes=2048, max_readings=8, max_string_length=64)
    return Pipeline(buffer, limits={"mqtt": limits, "coap": limits, "serial": limits},
                    registry={"known": DeviceDefaults(facility="plant a", line="l=1",
                                                      measurement="temperature", unit="C")},
                    known_device=(lambda d: d in ("known", "sensor_001")) if reject_unknown
                    else None, clock=FakeClock(NOW))


# --------------------------------------------------------------------------- properties


@FUZZ
@given(payload=payloads(), origin=origins, reject_unknown=st.booleans())
def test_every_payload_is_taken_or_dead_lettered_and_counted(
        payload: tuple[bytes, str | None], origin: Origin, reject_unknown: bool) -> None:
    raw, ctype = payload
    origin = Origin(origin.protocol, origin.peer, origin.device_hint, content_type=ctype)
    buffer = RecordingBuffer()
    pipeline = _pipeline(buffer, reject_unknown)
    outcome = asyncio.run(pipeline.ingest(raw, origin))

    assert outcome.accepted == len(buffer.appended)
    assert len(buffer.dead) <= 1, "one payload is dead-lettered at most once"
    if outcome.rejected is not None:
        assert not buffer.appended
        assert buffer.dead == [(raw, origin.protocol, outcome.rejected)]
    else:
        assert buffer.appended, "a payload taken into custody stored something"
    assert buffer.appended or buffer.dead, "the payload vanished: neither stored nor " \
                                           "dead-lettered"
    assert sum(pipeline.stats.rejected.values()) == len(buffer.dead)
    for dead_raw, _, reason in buffer.dead:
        assert dead_raw == raw and reason


@pytest.mark.parametrize("raw,ctype", [(b"[]", None), (b"\x90", None), (b"\xdc\x00\x00", None),
                                       (b"device_id,timestamp,value\n", "text/csv")])
def test_a_payload_without_readings_is_dead_lettered_and_counted(raw: bytes,
                                                                 ctype: str | None) -> None:
    # acknowledged like any refused payload, so it must not vanish silently either
    buffer = RecordingBuffer()
    pipeline = _pipeline(buffer, False)
    outcome = asyncio.run(pipeline.ingest(raw, Origin("mqtt", "p", "sensor_001",
                                                      content_type=ctype)))
    assert outcome.rejected == "no_readings"
    assert buffer.dead == [(raw, "mqtt", "no_readings")]
    assert pipeline.stats.rejected["no_readings"] == 1


@FUZZ
@given(payload=payloads(), origin=origins)
def test_what_the_gateway_accepts_the_cloud_can_carry_and_store(
        payload: tuple[bytes, str | None], origin: Origin) -> None:
    raw, ctype = payload
    origin = Origin(origin.protocol, origin.peer, origin.device_hint, content_type=ctype)
    buffer = RecordingBuffer()
    asyncio.run(_pipeline(buffer, False).ingest(raw, origin))
    if not buffer.appended:
        return
    readings = list(buffer.appended)
    accepted, refused, reasons = check_readings(readings)
    assert not refused, f"cloud ingest refuses what the gateway accepted: " \
                        f"{list(zip(refused, reasons))}"
    frame = encode_batch(Batch("gw-fuzz", 1, NOW, readings, []), "zstd")
    back = decode_batch(frame).readings
    assert len(back) == len(readings)
    for a, b in zip(readings, back):
        assert a.idempotency_key() == b.idempotency_key()
        assert a.value == b.value or (math.isnan(a.value) and math.isnan(b.value))
        assert (a.device_id, a.measurement, a.unit, a.facility, a.line, a.zone, a.seq) == \
            (b.device_id, b.measurement, b.unit, b.facility, b.line, b.zone, b.seq)
    builder = LineBuilder()
    for r in readings:
        try:
            builder.reading(r, "gw-fuzz")
        except PointRejected as exc:
            raise AssertionError(f"InfluxDB cannot store a reading the gateway acknowledged: "
                                 f"{r!r}: {exc}") from None


@pytest.mark.xfail(strict=True, reason=(
    "edge/config/gateway.py: DeviceEntry tags (the `Tag` type) and `measurement` accept a "
    "backslash and a leading '#'; the pipeline stamps registry defaults onto readings "
    "without the decoder's checks, so every reading of such a device is acknowledged and "
    "then refused by the InfluxDB sink.  Fix: validate DeviceEntry's facility/line/zone/"
    "unit/measurement like edge.payload.decode._text (printable, no backslash; measurement "
    "not starting with '#'), so the config is refused at load.  Remove this xfail then."))
def test_registry_defaults_the_cloud_cannot_store_are_refused_at_config_load() -> None:
    from edge.config import parse_config
    from edge.config.gateway import GatewayConfig
    from edge.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_config({"devices": {"registry": {"dev1": {"facility": "plant\\",
                                                        "measurement": "#temp"}}},
                      "uplink": {"enabled": False}}, GatewayConfig, file="gateway.yaml",
                     environ={})
