"""Cloud ingest throughput into the real Kafka broker: readings per second per core.

    .venv/bin/python tests/bench/cloud_ingest.py [--gateways 20] [--concurrency 2]
        [--batches 30] [--layout line|mixed] [--key facility_line|device|gateway]
        [--bus kafka|embedded] [--profile FILE]

The ingest service runs as its own process (`python -m cloud.ingest.app`, config written to
a temp dir: the broker of tests/integration/services.py — started if it is not running —
zstd, record key `--key` (default facility_line), fresh topics).  This process is the load:
`--gateways` simulated gateways, each with `--concurrency` requests in flight, post
`--batches` batches each of 1000 readings, generated deterministically (seeded) and encoded
with `edge.codec` (zstd), signed with `edge.signing` just before sending.

Data (per gateway, 50 devices at 1 Hz, 20 s per batch, arrival order): temperature random
walk at 0.01 degC, battery stepping down in 0.01 V, seq per device, 0-4 ms timestamp jitter,
received_ms = ts_ms + 1-5 ms.  `--layout line`: a gateway serves one production line (all
its devices share facility/line: one partition key per batch, forwarded as received);
`mixed`: its devices spread over 5 lines (with key facility_line each batch is split into 5
records re-encoded from its columns; with key gateway it is forwarded whole).

Measured over the whole posting phase:

readings_per_s_per_core   readings accepted / CPU seconds (user+system) of the ingest process
readings_per_s            readings accepted / wall seconds
cpu_cores                 ingest CPU seconds / wall seconds
p50_ms, p99_ms            request latency seen by the client
wire_bytes_per_reading    request body bytes / readings (codec targets: 1.5 and 6 B/reading
                          for its datasets A and B, docs/wire-format.md)
duplicates_ok             every batch re-posted afterwards answered duplicate=true, and the
                          readings topic holds exactly the readings accepted (fl-count)

Target: readings_per_s_per_core >= 200,000.  The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from edge.codec import Batch, encode_batch  # noqa: E402
from edge.model import Reading  # noqa: E402
from edge.signing import sign_request  # noqa: E402

TARGET = 200_000
T0 = 1_705_322_400_000
DEVICES = 50
BATCH = 1000


@dataclass
class _Device:
    id: str
    line: str
    phase: int
    centi: int
    battery: int
    seq: int


def gateway_batches(g: int, batches: int, layout: str) -> list[bytes]:
    """`batches` frames of 1000 readings of gateway g (see the module docstring)."""
    rng = random.Random(1000 + g)
    devices = []
    for d in range(DEVICES):
        line = (g % 5) + 1 if layout == "line" else d % 5 + 1
        devices.append(_Device(f"gw{g:02d}_sensor_{d:03d}", str(line), rng.randint(0, 999),
                               rng.randint(2000, 2600), rng.randint(370, 480),
                               rng.randint(0, 100_000)))
    frames = []
    second = 0
    for b in range(batches):
        rows = []
        for _ in range(BATCH // DEVICES):
            for dev in devices:
                ts = T0 + 1000 * second + dev.phase + rng.randint(0, 4)
                dev.centi += round(rng.gauss(0, 2))
                if rng.random() < 0.02:
                    dev.battery -= 1
                dev.seq += 1
                rows.append(Reading(
                    device_id=dev.id, ts_ms=ts, value=dev.centi / 100,
                    measurement="temperature", unit="celsius", facility=f"plant_{g % 4}",
                    line=dev.line, zone=f"zone_{dev.line}", quality="good",
                    battery_voltage=dev.battery / 100, seq=dev.seq,
                    received_ms=ts + rng.randint(1, 5)))
            second += 1
        rows.sort(key=lambda r: r.received_ms)
        frames.append(encode_batch(Batch(f"gw-{g:02d}", b + 1, rows[-1].received_ms, rows)))
    return frames


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(cmd, cwd=ROOT, stderr=err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret(g: int) -> str:
    return f"bench-secret-of-gateway-{g:02d}"


def write_config(work: Path, port: int, bootstrap: str | None, gateways: int,
                 suffix: str, key: str = "facility_line") -> Path:
    secrets = "\n".join(f"    gw-{g:02d}: {_secret(g)}" for g in range(gateways))
    servers = f"[{bootstrap}]" if bootstrap else "[]"
    cfg = work / "cloud.yaml"
    cfg.write_text(f"""
cloud:
  data_dir: {work / 'data'}
ingest:
  port: {port}
  gateways:
{secrets}
kafka:
  bootstrap_servers: {servers}
  compression: zstd
  key: {key}
  topics:
    readings: {{name: bench.readings.{suffix}, partitions: 6}}
    aggregates: {{name: bench.aggregates.{suffix}, partitions: 3}}
    alerts: {{name: bench.alerts.{suffix}, partitions: 3}}
    deadletter: {{name: bench.deadletter.{suffix}, partitions: 1}}
influxdb: {{enabled: false}}
web: {{enabled: false}}
http: {{enabled: false}}
logging: {{level: warning, json: true}}
""")
    return cfg


async def wait_healthy(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes],
                       timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ingest exited with {proc.returncode}")
        try:
            async with http.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("ingest did not become healthy")


async def post(http: aiohttp.ClientSession, url: str, g: int,
               frame: bytes) -> tuple[int, dict[str, Any], float]:
    headers = sign_request(_secret(g), f"gw-{g:02d}", frame, time.time_ns() // 1_000_000)
    headers["Content-Type"] = "application/vnd.fieldlink.batch"
    t = time.perf_counter()
    async with http.post(url + "/v1/batches", data=frame, headers=headers) as resp:
        body = await resp.json()
        return resp.status, body, time.perf_counter() - t


async def load(url: str, frames: dict[int, list[bytes]], concurrency: int,
               ) -> tuple[list[float], int, int, dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted = 0
    sent_bytes = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def worker(g: int, mine: list[bytes]) -> None:
            nonlocal accepted, sent_bytes
            for frame in mine:
                status, body, dt = await post(http, url, g, frame)
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(dt)
                sent_bytes += len(frame)
                if status == 200 and not body["duplicate"]:
                    accepted += int(body["readings"])

        await asyncio.gather(*(worker(g, fs[c::concurrency]) for g, fs in frames.items()
                               for c in range(concurrency)))
    return latencies, accepted, sent_bytes, statuses


async def readings_in_topic(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    total = 0
    try:
        idle = 0
        while idle < 4:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            idle = 0 if batches else idle + 1
            for msgs in batches.values():
                total += sum(int(dict(m.headers)["fl-count"]) for m in msgs)
    finally:
        await consumer.stop()
    return total


def _server_latency(metrics: str) -> dict[str, float]:
    """Mean produce and request latency (ms) from the service's own histograms."""
    values: dict[str, float] = {}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("fieldlink_ingest_") and name.endswith(("_sum", "_count")):
            values[name] = float(value)
    out = {}
    for what in ("produce", "request"):
        n = values.get(f"fieldlink_ingest_{what}_seconds_count", 0.0)
        total = values.get(f"fieldlink_ingest_{what}_seconds_sum", 0.0)
        out[f"server_{what}_mean_ms"] = round(total / n * 1000, 2) if n else 0.0
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else 0.0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = None
    if args.bus == "kafka":
        import services

        bootstrap = services.ensure("kafka").bootstrap_servers
    print(f"generating {args.gateways} x {args.batches} batches of {BATCH} readings "
          f"({args.layout})", file=sys.stderr)
    frames = {g: gateway_batches(g, args.batches + 1, args.layout)
              for g in range(args.gateways)}
    # the last batch of each gateway warms up (connections, topics' metadata), unmeasured
    warm = {g: fs.pop() for g, fs in frames.items()}
    readings_total = args.gateways * args.batches * BATCH
    with tempfile.TemporaryDirectory(prefix="fieldlink-bench-") as tmp:
        work = Path(tmp)
        port = _free_port()
        suffix = uuid.uuid4().hex[:8]
        cfg = write_config(work, port, bootstrap, args.gateways, suffix, args.key)
        cmd = [sys.executable, "-m", "cloud.ingest.app", "--config", str(cfg)]
        if args.profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m",
                   "cloud.ingest.app", "--config", str(cfg)]
        proc = _spawn(cmd, work / "ingest.log")
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                await wait_healthy(http, url, proc)
                # warm-up: one batch per gateway that is not measured
                for g in range(args.gateways):
                    status, _, _ = await post(http, url, g, warm[g])
                    assert status == 200, f"warm-up batch answered {status}"
            ps = psutil.Process(proc.pid)
            c0 = ps.cpu_times()
            w0 = time.perf_counter()
            latencies, accepted, sent_bytes, statuses = await load(url, frames,
                                                                   args.concurrency)
            wall = time.perf_counter() - w0
            c1 = ps.cpu_times()
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            rss_mb = ps.memory_info().rss / 2**20
            # duplicates: every batch again -> duplicate, nothing produced twice
            async with aiohttp.ClientSession() as http:
                again = await asyncio.gather(*(post(http, url, g, fs[0])
                                               for g, fs in frames.items()))
                async with http.get(url + "/metrics") as resp:
                    server = _server_latency(await resp.text())
            dup_answers = all(s == 200 and b["duplicate"] for s, b, _ in again)
            in_topic = None
            if bootstrap:
                in_topic = await readings_in_topic(bootstrap, f"bench.readings.{suffix}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_tail = (work / "ingest.log").read_text()[-2000:]
    if statuses.get(200, 0) != len(latencies):
        print(f"non-200 answers: {statuses}\n{log_tail}", file=sys.stderr)
    warm_readings = args.gateways * BATCH
    duplicates_ok = dup_answers and accepted == readings_total and (
        in_topic is None or in_topic == readings_total + warm_readings)
    return {
        "bus": args.bus, "layout": args.layout, "key": args.key, "gateways": args.gateways,
        "concurrency": args.concurrency, "batches": len(latencies),
        "readings_accepted": accepted,
        "readings_per_s_per_core": round(accepted / cpu) if cpu else None,
        "readings_per_s": round(accepted / wall),
        "cpu_cores": round(cpu / wall, 3),
        "us_per_reading_cpu": round(cpu / accepted * 1e6, 3) if accepted else None,
        "p50_ms": round(_pct(latencies, 0.50), 2), "p99_ms": round(_pct(latencies, 0.99), 2),
        "wire_bytes_per_reading": round(sent_bytes / max(1, len(latencies) * BATCH), 3),
        "codec_targets_bytes_per_reading": {"a": 1.5, "b": 6.0},
        **server,
        "rss_mb": round(rss_mb, 1), "statuses": {str(k): v for k, v in statuses.items()},
        "readings_in_topic": in_topic, "duplicates_ok": duplicates_ok,
        "target_readings_per_s_per_core": TARGET,
        "meets_target": bool(cpu and accepted / cpu >= TARGET),
        "machine_cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2,
                        help="requests in flight per gateway")
    parser.add_argument("--batches", type=int, default=30, help="batches per gateway")
    parser.add_argument("--layout", choices=("line", "mixed"), default="line")
    parser.add_argument("--key", choices=("facility_line", "device", "gateway"),
                        default="facility_line", help="kafka.key: the record key")
    parser.add_argument("--bus", choices=("kafka", "embedded"), default="kafka")
    parser.add_argument("--profile", metavar="FILE", help="run ingest under cProfile")
    result = asyncio.run(bench(parser.parse_args()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
