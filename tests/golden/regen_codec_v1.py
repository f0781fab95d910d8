"""Regenerate the golden frames of batch format v1 — deliberately, never from a test.

    .venv/bin/python tests/golden/regen_codec_v1.py          # rewrite tests/golden/codec_v1/
    .venv/bin/python tests/golden/regen_codec_v1.py --check  # exit 1 if any file would change

Each case is written as NAME.json (the batch, the compression, the header a decoder must
report, and the libzstd / zlib versions that produced the bytes) and NAME.bin (the frame).
tests/unit/test_codec_golden.py checks on every run that decoding each .bin gives the JSON's
batch and that encoding the JSON's batch gives the .bin byte for byte.  Regenerating is a
format change unless only the compression library changed: say which in the commit.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import zlib
from typing import Any

import zstandard

from edge.codec import Batch, decode_batch, encode_batch
from edge.model import FLAG_CLOCK_SKEW, FLAG_TS_MISSING, Event, Reading

HERE = pathlib.Path(__file__).resolve().parent / "codec_v1"
T0 = 1_705_322_445_000

#: the seed's message {"device_id": "sensor_001_line1", "device_type": "temperature",
#: "timestamp": 1705322445000, "value": 72.5, "unit": "celsius", "location": {"facility":
#: "factory_a", "line": 1, "zone": "assembly"}, "quality": "good", "battery_voltage": 4.8}
SEED = Reading(device_id="sensor_001_line1", measurement="temperature", ts_ms=T0, value=72.5,
               unit="celsius", facility="factory_a", line="1", zone="assembly", quality="good",
               battery_voltage=4.8, received_ms=T0 + 37)


def _multi_device() -> list[Reading]:
    out = []
    for i in range(12):
        for d, (line, zone) in enumerate([("1", "assembly"), ("2", "paint"), ("3", "press")]):
            out.append(Reading(
                device_id=f"sensor_{d + 1:03d}_line{line}", measurement="temperature",
                ts_ms=T0 + 1000 * i + 7 * d + i % 3, value=(2150 + 3 * d + (i * 7) % 5) / 100,
                unit="celsius", facility="factory_a", line=line, zone=zone, quality="good",
                battery_voltage=(480 - i // 5) / 100, seq=100 * d + i,
                received_ms=T0 + 1000 * i + 7 * d + 20 + i % 4))
    # a humidity sensor without battery or seq, and the awkward values: -0.0, 0.1 + 0.2,
    # an integer, a huge and a tiny magnitude, a clock-skewed and a time-less reading
    specials = [-0.0, 0.1 + 0.2, 55.0, 1e300, -2.5e-310, 48.25]
    for i, v in enumerate(specials):
        flags = FLAG_CLOCK_SKEW if i == 3 else FLAG_TS_MISSING if i == 4 else 0
        received = T0 + 503 + 1000 * i
        out.insert(5 * i + 2, Reading(
            device_id="hum-Ω-7", measurement="humidity",
            ts_ms=received if flags else received - 3, value=v, unit="percent",
            facility="factory_b", line=None, zone="cold store",
            quality="uncertain" if i == 2 else "good", received_ms=received,
            sensor_ts_ms=T0 - 86_400_000 if flags == FLAG_CLOCK_SKEW else None, flags=flags))
    return out


def _fleet() -> list[Reading]:
    """Enough readings for the byte-plane modes: 8 clock-driven sensors for 40 s in arrival
    order (grid timestamps, random walks, battery steps, counters), then a 120-device
    snapshot."""
    rng = random.Random(20240115)
    out = []
    for d in range(8):
        phase, centi, battery, seq = rng.randint(0, 999), rng.randint(2000, 2600), 480, d * 1000
        for i in range(40):
            ts = T0 + phase + 1000 * i + rng.randint(0, 4)
            centi += rng.randint(-3, 3)
            battery -= rng.random() < 0.05
            out.append(Reading(
                device_id=f"sensor_{d + 1:04d}_line{1 + d % 3}", measurement="temperature",
                ts_ms=ts, value=centi / 100, unit="celsius", facility="factory_a",
                line=str(1 + d % 3), zone=["assembly", "paint", "press"][d % 3],
                quality="good", battery_voltage=battery / 100, seq=seq + i,
                received_ms=ts + rng.randint(1, 5)))
    out.sort(key=lambda r: (r.received_ms, r.device_id))
    snapshot = []
    for d in range(120):
        ts = T0 + 60_000 + rng.randint(0, 999)
        snapshot.append(Reading(
            device_id=f"sensor_{d + 101:04d}_line{rng.randint(1, 5)}", measurement="humidity",
            ts_ms=ts, value=rng.randint(3000, 6000) / 100, unit="percent",
            facility="factory_b", line=None, zone="warehouse", quality="good",
            battery_voltage=rng.randint(330, 480) / 100, seq=3600 - rng.randint(0, 9),
            received_ms=ts + rng.randint(1, 5)))
    snapshot.sort(key=lambda r: r.received_ms)
    return out + snapshot


def _events() -> list[Event]:
    return [
        Event(kind="aggregate", key=bytes(range(16)), ts_ms=T0 + 10_000,
              device_id="sensor_001_line1",
              body={"window_ms": 10_000, "count": 10, "min": 72.1, "max": 73.0, "mean": 72.55,
                    "late": 0}),
        Event(kind="alert", key=bytes(range(16, 32)), ts_ms=T0 + 12_345,
              device_id="sensor_002_line2",
              body={"rule": "overheat", "state": "firing", "value": 81.5, "threshold": 80,
                    "tags": ["line2", "paint"], "ack": None}),
    ]


CASES: dict[str, tuple[Batch, str]] = {
    "seed_single_zstd": (Batch("gw-factory-a-01", 1, T0 + 60_000, [SEED]), "zstd"),
    "seed_single_gzip": (Batch("gw-factory-a-01", 1, T0 + 60_000, [SEED]), "gzip"),
    "seed_single_none": (Batch("gw-factory-a-01", 1, T0 + 60_000, [SEED]), "none"),
    "multi_device_zstd": (Batch("gw-factory-a-01", 2, T0 + 61_000, _multi_device()), "zstd"),
    "multi_device_gzip": (Batch("gw-factory-a-01", 2, T0 + 61_000, _multi_device()), "gzip"),
    "fleet_zstd": (Batch("gw-factory-a-01", 4, T0 + 120_000, _fleet()), "zstd"),
    "with_events_zstd": (Batch("gw-factory-a-01", 3, T0 + 62_000, [SEED], _events()), "zstd"),
    "events_only_none": (Batch("gw-factory-a-01", 2**64 - 1, T0 + 63_000, [], _events()),
                         "none"),
    "empty_zstd": (Batch("gw-ü", 0, 0), "zstd"),
}


def reading_to_json(r: Reading) -> dict[str, Any]:
    return {name: getattr(r, name) for name in Reading.__dataclass_fields__}


def reading_from_json(d: dict[str, Any]) -> Reading:
    return Reading(**d)


def event_to_json(e: Event) -> dict[str, Any]:
    return {"kind": e.kind, "key": e.key.hex(), "ts_ms": e.ts_ms, "device_id": e.device_id,
            "body": e.body}


def event_from_json(d: dict[str, Any]) -> Event:
    return Event(kind=d["kind"], key=bytes.fromhex(d["key"]), ts_ms=d["ts_ms"],
                 device_id=d["device_id"], body=d["body"])


def batch_to_json(b: Batch) -> dict[str, Any]:
    return {"gateway_id": b.gateway_id, "sequence": b.sequence, "created_ms": b.created_ms,
            "readings": [reading_to_json(r) for r in b.readings],
            "events": [event_to_json(e) for e in b.events]}


def batch_from_json(d: dict[str, Any]) -> Batch:
    return Batch(gateway_id=d["gateway_id"], sequence=d["sequence"], created_ms=d["created_ms"],
                 readings=[reading_from_json(r) for r in d["readings"]],
                 events=[event_from_json(e) for e in d["events"]])


def library_versions() -> dict[str, str]:
    return {"libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "zlib": zlib.ZLIB_RUNTIME_VERSION}


def render(batch: Batch, compression: str) -> tuple[str, bytes]:
    frame = encode_batch(batch, compression)
    header = decode_batch(frame).header
    assert header is not None
    description = {
        "format_version": header.version,
        "compression": compression,
        "libraries": library_versions(),
        "header": {"gateway_id": header.gateway_id, "sequence": header.sequence,
                   "created_ms": header.created_ms, "reading_count": header.reading_count,
                   "event_count": header.event_count, "batch_id": header.batch_id},
        "batch": batch_to_json(batch),
    }
    return _dumps(description) + "\n", frame


def _dumps(description: dict[str, Any]) -> str:
    """Indented JSON with one line per reading and per event (readable, diffable, compact)."""
    batch = description["batch"]
    shell = {**description, "batch": {**batch, "readings": [], "events": []}}
    text = json.dumps(shell, indent=1, ensure_ascii=False)
    for key in ("readings", "events"):
        rows = ",\n".join("   " + json.dumps(row, ensure_ascii=False) for row in batch[key])
        text = text.replace(f'"{key}": []', f'"{key}": [\n{rows}\n  ]' if rows else f'"{key}": []')
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a diff")
    args = parser.parse_args(argv)
    HERE.mkdir(exist_ok=True)
    changed = []
    for name, (batch, compression) in CASES.items():
        text, frame = render(batch, compression)
        json_path, bin_path = HERE / f"{name}.json", HERE / f"{name}.bin"
        if (not json_path.exists() or json_path.read_text() != text
                or not bin_path.exists() or bin_path.read_bytes() != frame):
            changed.append(name)
            if not args.check:
                json_path.write_text(text)
                bin_path.write_bytes(frame)
    verb = "differ" if args.check else "rewritten"
    print(f"{len(changed)} of {len(CASES)} golden frames {verb}: {', '.join(changed) or '-'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
