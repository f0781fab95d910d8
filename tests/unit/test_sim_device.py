"""Simulated devices: deterministic payloads in the seed's format, and each fault doing what it
claims — checked with the gateway's own decoder (edge.payload.decode) where it matters."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from edge.config import parse_config
from edge.config.sim import SimConfig
from edge.errors import Oversize, PayloadError, ValidationError, WrongType
from edge.model import FLAG_TS_MISSING
from edge.payload.decode import DecodeContext, decode_payload
from firmware_sim.device import DeviceModel, Emission, expand_fleet, generate

T0 = 1_705_322_445_000


def _cfg(faults: dict[str, Any] | None = None, **group: Any) -> SimConfig:
    g = {"count": 1, "id_template": "dev_{n}", "lines": [2], "zone": "assembly", **group}
    return parse_config({"seed": 42, "fleet": [g], "faults": faults or {}}, SimConfig,
                        environ={})


def _model(faults: dict[str, Any] | None = None, **group: Any) -> DeviceModel:
    cfg = _cfg(faults, **group)
    return DeviceModel(expand_fleet(cfg)[0], cfg, T0)


def _run(model: DeviceModel, ticks: int) -> list[Emission]:
    out: list[Emission] = []
    for k in range(ticks):
        out += model.tick(k)
    return out


def _decode(e: Emission, received_ms: int | None = None, **ctx: Any):
    rs = decode_payload(e.payload, DecodeContext(received_ms=received_ms or e.tick_ms, **ctx))
    assert len(rs) == 1
    return rs[0]


def test_fleet_expansion_ids_topics_lines_and_phases() -> None:
    cfg = parse_config({"fleet": [
        {"count": 4, "kind": "temperature", "lines": [1, 2, 3]},
        {"count": 2, "kind": "pressure", "id_template": "p_{n}_{line}", "lines": ["7"],
         "rate_hz": 2}]}, SimConfig, environ={})
    specs = expand_fleet(cfg)
    assert [s.device_id for s in specs] == ["sensor_0000_line1", "sensor_0001_line2",
                                            "sensor_0002_line3", "sensor_0003_line1",
                                            "p_0_7", "p_1_7"]
    assert specs[1].topic == "factory/line2/temperature/sensor_0001_line2"
    assert specs[4].topic == "factory/line7/pressure/p_0_7"
    assert specs[4].coap_path == "r/p_0_7"
    assert specs[4].period_ms == 500.0
    assert all(0 <= s.phase_ms < s.period_ms for s in specs)
    assert len({s.phase_ms for s in specs}) > 1  # spread, not all at once


def test_same_seed_same_bytes_other_seed_other_values() -> None:
    a = _run(_model(), 50)
    b = _run(_model(), 50)
    assert [e.payload for e in a] == [e.payload for e in b]
    cfg = parse_config({"seed": 43, "fleet": [{"count": 1, "id_template": "dev_{n}",
                                               "lines": [2], "zone": "assembly"}]},
                       SimConfig, environ={})
    c = _run(DeviceModel(expand_fleet(cfg)[0], cfg, T0), 50)
    assert [e.value for e in a] != [e.value for e in c]


def test_clean_readings_are_the_seed_message_and_decode_back() -> None:
    m = _model()
    es = _run(m, 20)
    assert [e.seq for e in es] == list(range(20))
    assert [e.tick_ms for e in es] == [m.tick_ms(k) for k in range(20)]
    assert es[1].tick_ms - es[0].tick_ms == 1000
    msg = json.loads(es[3].payload)
    assert set(msg) == {"device_id", "device_type", "timestamp", "value", "unit", "location",
                        "quality", "battery_voltage", "seq"}
    assert msg["location"] == {"facility": "factory_a", "line": 2, "zone": "assembly"}
    assert msg["device_type"] == "temperature" and msg["unit"] == "celsius"
    for e in es:
        r = _decode(e)
        assert (r.device_id, r.measurement, r.seq, r.ts_ms, r.value) == \
               (e.device_id, e.measurement, e.seq, e.ts_ms, e.value)
        assert r.line == "2" and r.flags == 0
        assert 3.3 <= (r.battery_voltage or 0) <= 4.2
        assert e.faults == "" and e.expect == "stored"


def test_msgpack_and_csv_formats_decode_too() -> None:
    for e in _run(_model(payload_format="msgpack"), 5):
        assert msgpack.unpackb(e.payload)["seq"] == e.seq
        assert _decode(e).value == e.value
    for e in _run(_model(protocol="serial", serial_format="csv"), 5):
        assert e.payload.count(b",") == 5
        r = _decode(e, content_type="text/csv", measurement_hint="temperature")
        assert (r.seq, r.value, r.ts_ms) == (e.seq, e.value, e.ts_ms)


def test_gps_sends_latitude_and_longitude_with_one_seq_and_timestamp() -> None:
    es = _run(_model(kind="gps"), 10)
    assert [e.measurement for e in es[:4]] == ["latitude", "longitude"] * 2
    for lat, lon in zip(es[::2], es[1::2]):
        assert lat.seq == lon.seq and lat.ts_ms == lon.ts_ms
        assert 48.0 < (lat.value or 0) < 48.3 and 11.4 < (lon.value or 0) < 11.7
        assert _decode(lat).measurement == "latitude"
    assert [e.seq for e in es[::2]] == list(range(10))


def _pairs(faults: dict[str, Any], ticks: int = 400, **group: Any
           ) -> tuple[list[Emission], list[Emission]]:
    """(faulted emissions, clean emissions of the same device)."""
    return _run(_model(faults, **group), ticks), _run(_model(**group), ticks)


def test_spike_adds_magnitude_to_one_sample() -> None:
    bad, clean = _pairs({"spike": {"rate": 0.05, "magnitude": 40.0}})
    truth = {e.seq: e.value for e in clean}
    spiked = [e for e in bad if "spike" in e.faults]
    assert 5 < len(spiked) < 40
    for e in spiked:
        assert abs(abs((e.value or 0) - (truth[e.seq] or 0)) - 40.0) < 0.11
    for e in bad:
        if not e.faults:
            assert e.value == truth[e.seq]


def test_drift_grows_and_stuck_freezes() -> None:
    bad, clean = _pairs({"drift": {"rate": 0.01, "per_reading": 0.5, "length": 10}})
    truth = {e.seq: e.value for e in clean}
    drifting = [e for e in bad if "drift" in e.faults]
    assert drifting and len(drifting) % 10 == 0
    first = drifting[:10]
    offsets = [round((e.value or 0) - (truth[e.seq] or 0), 1) for e in first]
    assert offsets == [0.5 * i for i in range(1, 11)]
    bad, clean = _pairs({"stuck": {"rate": 0.01, "length": 8}})
    stuck = [e for e in bad if "stuck" in e.faults]
    assert stuck and len({e.value for e in stuck[:8]}) == 1
    assert len({e.value for e in clean[stuck[0].seq:stuck[0].seq + 8]}) > 1


def test_stale_sensor_goes_silent_and_resumes_without_a_seq_gap() -> None:
    m = _model({"stale": {"rate": 0.02, "duration_s": 15}})
    per_tick = [m.tick(k) for k in range(600)]
    silent = [k for k, es in enumerate(per_tick) if not es]
    assert silent and m.injected["stale"] >= 1
    # the first silence lasts 15 ticks
    start = silent[0]
    assert all(not per_tick[k] for k in range(start, start + 15))
    seqs = [e.seq for es in per_tick for e in es]
    assert seqs == list(range(len(seqs)))
    assert m.events[0][0] == "stale"


def test_duplicate_resends_the_same_bytes() -> None:
    es = _run(_model({"duplicate": {"rate": 0.1}}), 200)
    dups = [e for e in es if e.expect == "duplicate"]
    assert dups
    for d in dups:
        original = next(e for e in es if e.seq == d.seq and e.expect == "stored")
        assert original.payload == d.payload and "duplicate" in d.faults
        assert es.index(d) == es.index(original) + 1


def test_out_of_order_sends_a_sample_after_the_next_one() -> None:
    es = _run(_model({"out_of_order": {"rate": 0.05}}), 300)
    seqs = [e.seq for e in es]
    swapped = [e.seq for e in es if "out_of_order" in e.faults]
    assert swapped
    s = swapped[0]
    assert seqs.index(s) == seqs.index(s + 1) + 1
    assert sorted(seqs) == list(range(len(seqs)))


def test_late_sample_keeps_its_timestamp_and_arrives_delay_later() -> None:
    m = _model({"late": {"rate": 0.02, "delay_s": 10}})
    per_tick = [m.tick(k) for k in range(400)]
    late = [(k, e) for k, es in enumerate(per_tick) for e in es if "late" in e.faults]
    assert late
    k, e = late[0]
    # sent at the tick 10 s after its own, with its own timestamp
    assert e.ts_ms == e.tick_ms == m.tick_ms(k - 10)
    assert _decode(e, received_ms=m.tick_ms(k)).ts_ms == e.ts_ms


def test_clock_skew_and_missing_timestamp() -> None:
    es = _run(_model({"clock_skew": {"rate": 0.05, "skew_s": 600}}), 300)
    skewed = [e for e in es if "clock_skew" in e.faults]
    assert skewed
    for e in skewed:
        assert abs((e.ts_ms or 0) - e.tick_ms) == 600_000
        assert json.loads(e.payload)["timestamp"] == e.ts_ms
        r = _decode(e, received_ms=e.tick_ms)
        assert r.sensor_ts_ms == e.ts_ms and r.ts_ms == e.tick_ms  # the gateway corrects it
    es = _run(_model({"no_timestamp": {"rate": 0.05}}), 300)
    missing = [e for e in es if "no_timestamp" in e.faults]
    assert missing
    for e in missing:
        assert e.ts_ms is None and "timestamp" not in json.loads(e.payload)
        assert _decode(e).flags & FLAG_TS_MISSING


@pytest.mark.parametrize("variant,error", [("bad_json", PayloadError),
                                           ("wrong_type", WrongType),
                                           ("oversize", Oversize)])
@pytest.mark.parametrize("fmt", ["json", "msgpack", "csv"])
def test_malformed_payloads_are_rejected_by_the_decoder(variant: str, error: type,
                                                         fmt: str) -> None:
    group: dict[str, Any] = ({"protocol": "serial", "serial_format": "csv"} if fmt == "csv"
                             else {"payload_format": fmt})
    es = _run(_model({"malformed": {"rate": 0.2, "variants": [variant]}}, **group), 100)
    bad = [e for e in es if e.expect == "rejected"]
    assert bad and all(e.faults == f"malformed:{variant}" for e in bad)
    ctx: dict[str, Any] = ({"content_type": "text/csv", "measurement_hint": "temperature"}
                           if fmt == "csv" else {})
    if fmt == "csv" and variant == "bad_json":
        error = ValidationError  # a CSV line with too few columns
    for e in bad:
        with pytest.raises(error):
            decode_payload(e.payload, DecodeContext(received_ms=e.tick_ms, **ctx))
    if variant == "oversize":
        assert all(len(e.payload) > 65_536 for e in bad)


def test_burst_sends_extra_samples_with_consecutive_seqs() -> None:
    m = _model({"burst": {"rate": 0.05, "size": 5}})
    per_tick = [m.tick(k) for k in range(200)]
    bursty = [es for es in per_tick if len(es) == 6]
    assert bursty
    es = bursty[0]
    assert [e.seq for e in es] == list(range(es[0].seq, es[0].seq + 6))
    assert [(e.ts_ms or 0) - es[0].tick_ms for e in es] == [0, 10, 20, 30, 40, 50]
    assert all("burst" in e.faults for e in es[1:])
    # the radio load shows in the battery voltage of the burst
    volts = [json.loads(e.payload)["battery_voltage"] for e in es]
    assert volts[-1] < volts[0]


def test_disconnect_flag_is_raised_on_its_tick() -> None:
    m = _model({"disconnect": {"rate": 0.1}})
    flags = []
    for k in range(200):
        m.tick(k)
        flags.append(m.disconnect)
    assert 5 < sum(flags) < 40 and m.injected["disconnect"] == sum(flags)


def test_generate_matches_duration_and_is_reproducible() -> None:
    cfg = parse_config({"seed": 3, "fleet": [{"count": 5, "rate_hz": 2}],
                        "faults": {"late": {"rate": 0.1, "delay_s": 100}}}, SimConfig,
                       environ={})
    a = generate(cfg, T0, 10.0)
    assert a.keys() == {s.device_id for s in expand_fleet(cfg)}
    for es in a.values():
        assert len({e.seq for e in es}) == 20  # 2 Hz for 10 s, held ones released at the end
        assert all(T0 <= e.tick_ms < T0 + 10_000 for e in es)
    b = generate(cfg, T0, 10.0)
    assert {d: [e.payload for e in es] for d, es in a.items()} == \
           {d: [e.payload for e in es] for d, es in b.items()}


def test_json_payloads_are_byte_identical_to_encode_json() -> None:
    from edge.model import Reading
    from edge.payload.encode import encode_json
    from firmware_sim.payloads import encode

    for r in (Reading("d", T0, 21.5, unit="celsius", facility="f", line="1", seq=3,
                      battery_voltage=4.1),
              Reading("dévice", T0, -0.0, measurement="höhe", zone="ü", flags=FLAG_TS_MISSING),
              Reading("x", T0, 1e300, quality="bad")):
        assert encode(r, "json") == encode_json(r)


@pytest.mark.parametrize("group", [{}, {"kind": "gps"}, {"battery": None},
                                   {"payload_format": "msgpack"},
                                   {"protocol": "serial", "serial_format": "csv"}])
def test_templated_payloads_equal_encoding_the_full_reading(group: dict[str, Any]) -> None:
    """The fast path (message templates) gives the bytes of encode(Reading) exactly."""
    from edge.model import Reading
    from firmware_sim.payloads import encode

    m = _model({"burst": {"rate": 0.05, "size": 3}}, **group)
    es = _run(m, 200)
    assert es
    for e in es:
        msg = (json.loads(e.payload) if m.spec.fmt == "json" else
               msgpack.unpackb(e.payload) if m.spec.fmt == "msgpack" else
               dict(zip(("device_id", "timestamp", "value", "unit", "battery_voltage", "seq"),
                        e.payload.decode().split(","))))
        battery = msg.get("battery_voltage")
        r = Reading(device_id=e.device_id, ts_ms=e.ts_ms or 0, value=e.value or 0.0,
                    measurement=e.measurement, unit=m.unit, facility=m.spec.facility,
                    line=m.spec.line, zone=m.spec.zone,
                    battery_voltage=float(battery) if battery not in (None, "") else None,
                    seq=e.seq)
        assert e.payload == encode(r, m.spec.fmt)


def test_json_template_numbers_are_written_as_json_writes_them() -> None:
    import random

    from edge.model import Reading
    from firmware_sim.payloads import MessageTemplate, encode

    rng = random.Random(5)
    for battery in (0.0, None):
        proto = Reading("dev_1", T0, 0.0, unit="celsius", facility="f", line="x1", zone="z",
                        battery_voltage=battery, seq=0)
        tmpl = MessageTemplate(proto, "json")
        for _ in range(2000):
            value = rng.choice([rng.uniform(-1e3, 1e3), rng.uniform(-1, 1) * 10 ** rng.randint(
                -12, 18), -0.0, 0.0, 1e16, 5e-324, 1.7976931348623157e308])
            volts = None if battery is None else round(rng.uniform(3, 5), 2)
            seq, ts = rng.randint(0, 2**62), rng.randint(0, 2**45)
            full = Reading("dev_1", ts, value, unit="celsius", facility="f", line="x1",
                           zone="z", battery_voltage=volts, seq=seq)
            assert tmpl.render(ts, value, volts, seq) == encode(full, "json")
