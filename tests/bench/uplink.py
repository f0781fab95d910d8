"""Benchmark of the gateway uplink: bytes on the wire per reading, and drain throughput.

    .venv/bin/python tests/bench/uplink.py [--readings N] [--seconds S]

Dataset: what a gateway buffers from the simulator's fleet — 200 devices (100 temperature,
50 pressure, 50 humidity; battery powered, 3 lines, 1 Hz, seed 1), their MQTT JSON payloads
decoded by `edge.payload.decode` as the gateway does, in arrival order (received_ms = sample
time + 3 ms).  Every Reading field a gateway fills is filled.

1. wire: claims of 100 / 500 / 1000 rows (the uplink's default) encoded as the uplink does,
   zstd and gzip: frame bytes per reading and wire bytes per reading (frame + the signed
   request headers, as the bandwidth cap counts them), against the sensors' own JSON.
2. drain: a buffer file holding N readings drained by the real `Uplink` into a signing-checking,
   decoding sink in another process (aiohttp on 127.0.0.1): readings/s and the gateway
   process's CPU per reading (event loop + buffer writer thread), max_in_flight 1 and 2.

Prints a table, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.config import parse_config  # noqa: E402
from edge.config.sim import SimConfig  # noqa: E402
from edge.model import Priority, Reading  # noqa: E402
from edge.payload.decode import DecodeContext, decode_payload  # noqa: E402
from firmware_sim.device import generate  # noqa: E402
from gateway.buffer import Buffer, BufferSettings, Claim, ClaimedRow  # noqa: E402
from gateway.uplink import Uplink, UplinkSettings  # noqa: E402
from gateway.uplink.frames import encode_claim  # noqa: E402
from gateway.uplink.transport import request_headers, wire_bytes  # noqa: E402

GATEWAY = "gw-bench"
SECRET = b"bench-uplink-secret-0123456789"
START_MS = 1_705_322_400_000


def fleet_readings(seconds: int) -> tuple[list[Reading], int]:
    """(readings in arrival order, bytes of the JSON payloads they came in)."""
    cfg = parse_config({
        "seed": 1, "duration_s": seconds,
        "fleet": [{"name": "t", "count": 100, "kind": "temperature", "lines": [1, 2, 3],
                   "id_template": "temp_{n:04d}_line{line}"},
                  {"name": "p", "count": 50, "kind": "pressure", "lines": [1, 2, 3],
                   "id_template": "press_{n:04d}_line{line}"},
                  {"name": "h", "count": 50, "kind": "humidity", "lines": [1, 2, 3],
                   "id_template": "hum_{n:04d}_line{line}"}]}, SimConfig, environ={})
    out: list[tuple[int, Reading]] = []
    payload_bytes = 0
    for device_id, emissions in generate(cfg, START_MS, seconds).items():
        for e in emissions:
            rx = e.tick_ms + 3
            payload_bytes += len(e.payload)
            for r in decode_payload(e.payload, DecodeContext(received_ms=rx,
                                                             device_hint=device_id)):
                out.append((rx, r))
    out.sort(key=lambda x: x[0])
    return [r for _, r in out], payload_bytes


def wire_figures(readings: list[Reading], payload_bytes: int) -> dict[str, Any]:
    headers = request_headers(
        UplinkSettings(url="http://127.0.0.1:1", gateway_id=GATEWAY, secret=SECRET),
        b"", START_MS)
    out: dict[str, Any] = {"json_payload_bytes_per_reading": round(payload_bytes
                                                                   / len(readings), 1)}
    for size in (100, 500, 1000):
        for compression in ("zstd", "gzip"):
            frames = 0
            wire = 0
            n = 0
            for i in range(0, len(readings) - size + 1, size):
                chunk = readings[i:i + size]
                claim = Claim(seq=i // size + 1, created_ms=START_MS, rows=tuple(
                    ClaimedRow(j, Priority.RAW, b"", r) for j, r in enumerate(chunk)))
                frame = encode_claim(claim, GATEWAY, compression).frame
                frames += len(frame)
                wire += wire_bytes(headers, frame)
                n += len(chunk)
            out[f"{compression}_{size}"] = {
                "frame_bytes_per_reading": round(frames / n, 2),
                "wire_bytes_per_reading": round(wire / n, 2)}
    return out


# --------------------------------------------------------------------------- the sink


def _sink(port: int, ready: Any) -> None:
    from aiohttp import web

    from edge.codec import decode_batch
    from edge.signing import verify_request

    count = {"readings": 0}

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        verify_request({GATEWAY: SECRET}, request.headers, body, time.time_ns() // 1_000_000,
                       300_000)
        batch = decode_batch(body)
        count["readings"] += len(batch.readings)
        return web.json_response({"batch_id": batch.batch_id, "duplicate": False,
                                  "readings": len(batch.readings)})

    async def main() -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/batches", post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drain(readings: list[Reading], url: str, in_flight: int, tmp: Path
                ) -> dict[str, Any]:
    path = tmp / f"buffer-{in_flight}.sqlite3"
    settings = BufferSettings(path=str(path), check_at_open=False)
    async with Buffer(settings) as buf:
        now = time.time_ns() // 1_000_000
        for i in range(0, len(readings), 5000):
            await buf.append([dataclasses.replace(r, received_ms=now)
                              for r in readings[i:i + 5000]])
        up_settings = UplinkSettings(url=url, gateway_id=GATEWAY, secret=SECRET,
                                     batch_max_records=1000, max_in_flight=in_flight,
                                     poll_interval_s=0.01)
        cpu0, t0 = time.process_time(), time.perf_counter()
        async with Uplink(buf, up_settings) as up:
            while True:
                if sum(buf.stats().rows.values()) == 0:
                    break
                await asyncio.sleep(0.005)
            st = up.stats()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    path.unlink()
    return {"max_in_flight": in_flight, "readings": st.readings_sent,
            "batches": st.batches_sent, "seconds": round(wall, 3),
            "readings_per_s": round(st.readings_sent / wall),
            "gateway_cpu_us_per_reading": round(cpu / st.readings_sent * 1e6, 2),
            "latency_ms_avg": round(st.latency_ms_avg or 0, 2),
            "bytes_per_reading": round(st.bytes_per_reading or 0, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="fleet seconds to generate")
    p.add_argument("--readings", type=int, default=100_000, help="readings drained")
    args = p.parse_args()
    readings, payload_bytes = fleet_readings(args.seconds)
    wire = wire_figures(readings, payload_bytes)
    print(f"dataset: {len(readings)} readings of 200 devices; sensors' JSON "
          f"{wire['json_payload_bytes_per_reading']} B/reading")
    print(f"{'claim':>12} {'frame B/rd':>11} {'wire B/rd':>10}")
    for key, v in wire.items():
        if isinstance(v, dict):
            print(f"{key:>12} {v['frame_bytes_per_reading']:>11} {v['wire_bytes_per_reading']:>10}")

    drained = []
    port = _free_port()
    ready = multiprocessing.Event()
    sink = multiprocessing.Process(target=_sink, args=(port, ready), daemon=True)
    sink.start()
    try:
        assert ready.wait(30), "sink did not start"
        pool = (readings * (args.readings // len(readings) + 1))[:args.readings]
        # distinct identities: the buffer de-duplicates repeated readings
        pool = [Reading(r.device_id, r.ts_ms + (i // len(readings)) * args.seconds * 1000,
                        r.value, r.measurement, r.unit, r.facility, r.line, r.zone,
                        r.quality, r.battery_voltage,
                        None if r.seq is None else r.seq + (i // len(readings)) * 100_000,
                        r.received_ms, r.sensor_ts_ms, r.flags)
                for i, r in enumerate(pool)]
        with tempfile.TemporaryDirectory(prefix="fieldlink-bench-uplink-") as tmp:
            for in_flight in (1, 2):
                drained.append(asyncio.run(drain(pool, f"http://127.0.0.1:{port}",
                                                 in_flight, Path(tmp))))
    finally:
        sink.terminate()
        sink.join(5)
    print(f"{'in flight':>10} {'readings/s':>11} {'cpu us/rd':>10} {'latency ms':>11}")
    for d in drained:
        print(f"{d['max_in_flight']:>10} {d['readings_per_s']:>11} "
              f"{d['gateway_cpu_us_per_reading']:>10} {d['latency_ms_avg']:>11}")
    print(json.dumps({"bench": "uplink", "dataset_readings": len(readings), "wire": wire,
                      "drain": drained}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
