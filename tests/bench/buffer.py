"""Benchmark of the store-and-forward buffer at the gateway's design load.

    .venv/bin/python tests/bench/buffer.py [--seconds 8] [--rate 10000] [--devices 10000]
                                           [--interval-ms 5] [--sync FULL NORMAL] [--no-uplink]

10,000 simulated devices each append one reading per second (10k readings/s in total) with
durable=True and await their commit, as MQTT QoS 1 handlers do before their PUBACK.  An uplink
task claims up to 1000 rows every 100 ms and acknowledges them, so the buffer runs in steady
state (claims fsynced, acked keys moved to the de-duplication table).

Measured over the run after a 2 s warm-up, for each `synchronous` mode:

* us_per_reading — process CPU time (user + sys, every thread) / readings.  It includes the
  simulated devices; `driver_us_per_reading` is the same fleet against an append that returns
  at once, and `buffer_us_per_reading` the difference: what the buffer costs.
* writer_us_per_reading — CPU of the writer thread alone / readings.
* p50/p99_commit_ms — from the `append()` call to its durable resolution, per reading.
* disk_bytes_per_reading — pages in use / readings held, measured on a fresh file filled with
  100k readings (no uplink), and write_bytes_per_reading — /proc/self/io write_bytes /
  readings during the run (what the SD card sees: WAL frames, checkpoints, claims, acks).
* core_paths_us — thread CPU per reading of append (groups of 50), claim (1000, decoded to
  Readings) and ack (1000) through the synchronous core, without asyncio or GIL contention.
* wear (with --wear) — bytes written and CPU per reading by group size, appends only.
* calibration_sum_range_1000_us — `sum(range(1000))` on this host now, to compare hosts.
* rss_mb — resident set size at the end.

The gateway's budget is 0.35 core at 10k readings/s, so the buffer should stay at or under
12 us/reading.  Prints one line per run, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.model import Reading  # noqa: E402
from gateway.buffer import AppendResult, Buffer, BufferSettings, Synchronous  # noqa: E402

WARMUP_S = 2.0


def write_bytes() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def thread_cpu(name: str) -> float:
    """CPU seconds of our thread called `name` (the writer)."""
    import threading

    ids = {t.native_id for t in threading.enumerate() if t.name == name}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


async def drive(append: Callable[[list[Reading]], Awaitable[AppendResult]], *, seconds: float,
                rate: int, devices: int, uplink: Callable[[], Awaitable[None]] | None
                ) -> dict[str, Any]:
    """Run the fleet; return readings, CPU, latencies and write bytes of the measured span."""
    loop = asyncio.get_running_loop()
    period = devices / rate
    start = loop.time() + 0.2
    measure_from = start + WARMUP_S
    stop_at = measure_from + seconds
    latencies: list[float] = []
    counted = 0
    proc = psutil.Process()
    marks: dict[str, Any] = {}

    async def device(d: int) -> None:
        nonlocal counted
        name = f"sensor_{d:05d}_line{d % 5 + 1}"
        due = start + period * d / devices
        seq = 0
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if now >= stop_at:
                return
            ms = time.time_ns() // 1_000_000
            r = Reading(device_id=name, ts_ms=ms, value=20.0 + (seq % 50) / 10, seq=seq,
                        unit="celsius", facility="factory_a", line=str(d % 5 + 1),
                        zone="assembly", battery_voltage=3.71, received_ms=ms)
            t0 = time.perf_counter()
            res = await append([r])
            if now >= measure_from:
                latencies.append(time.perf_counter() - t0)
                counted += 1
            assert res.stored == 1 or res.pending == 1, res
            seq += 1
            due += period

    async def mark() -> None:
        await asyncio.sleep(measure_from - loop.time())
        cpu = proc.cpu_times()
        marks["cpu0"] = cpu.user + cpu.system
        marks["io0"] = write_bytes()
        marks["t0"] = time.perf_counter()
        marks["writer0"] = thread_cpu("fieldlink-buffer-writer")

    async def run_uplink() -> None:
        assert uplink is not None
        while loop.time() < stop_at:
            await uplink()
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(device(d), name=f"device-{d}") for d in range(devices)]
    tasks.append(asyncio.create_task(mark(), name="mark"))
    if uplink is not None:
        tasks.append(asyncio.create_task(run_uplink(), name="uplink"))
    await asyncio.gather(*tasks)
    cpu = proc.cpu_times()
    elapsed = time.perf_counter() - marks["t0"]
    latencies.sort()
    return {
        "readings": counted,
        "readings_per_s": round(counted / elapsed),
        "cpu_s": cpu.user + cpu.system - marks["cpu0"],
        "writer_cpu_s": thread_cpu("fieldlink-buffer-writer") - marks["writer0"],
        "write_bytes": write_bytes() - marks["io0"],
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


async def run_buffer(path: str, sync: Synchronous, args: argparse.Namespace) -> dict[str, Any]:
    settings = BufferSettings(path=path, synchronous=sync, commit_interval_ms=args.interval_ms,
                              check_at_open=False)
    async with Buffer(settings) as buf:
        async def uplink() -> None:
            claim = await buf.claim(1000)
            if claim is not None:
                await buf.ack(claim)

        out = await drive(buf.append, seconds=args.seconds, rate=args.rate,
                          devices=args.devices, uplink=None if args.no_uplink else uplink)
        st = buf.stats()
        rows = sum(st.rows.values())
        out.update(
            commits=st.commits, commit_ms_avg=round(st.commit_ms_avg, 3),
            group_size_avg=round(st.group_size_avg, 1), rows_held=rows,
            disk_bytes=st.disk_bytes, seen_keys=st.seen_keys)
    out["rss_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    return out


async def run_null(args: argparse.Namespace) -> dict[str, Any]:
    async def append(readings: list[Reading]) -> AppendResult:
        return AppendResult(stored=len(readings))
    return await drive(append, seconds=args.seconds, rate=args.rate, devices=args.devices,
                       uplink=None)


def calibrate() -> float:
    """Microseconds for `sum(range(1000))` on this host now (a desktop core: ~8-10 us; a
    Raspberry Pi 4: ~40 us), to compare figures across machines and load."""
    import timeit

    return round(min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6, 1)


def paths(tmp: str, n: int = 100_000) -> dict[str, Any]:
    """Thread CPU per reading of each path through the core, without asyncio: append in
    groups of 50 (a 5 ms group at 10k/s), claim 1000 (decoding to Readings), ack 1000.  Also
    the bytes a held reading occupies (fresh file, no uplink)."""
    from edge.clock import SystemClock
    from gateway.buffer import Store, claims
    from gateway.buffer.writer import AppendOp, execute_group

    settings = BufferSettings(path=str(Path(tmp) / "paths.db"), check_at_open=False,
                              synchronous=Synchronous.NORMAL)
    store = Store.open(settings, SystemClock())
    t0 = 1_705_322_445_000
    readings = [Reading(device_id=f"sensor_{i % 10_000:05d}_line{i % 5 + 1}", ts_ms=t0 + i,
                        value=20.0 + (i % 50) / 10, seq=i // 10_000, unit="celsius",
                        facility="factory_a", line=str(i % 5 + 1), zone="assembly",
                        battery_voltage=3.71, received_ms=t0 + i) for i in range(n)]
    tt = time.thread_time
    a = tt()
    for i in range(0, n, 50):
        execute_group(store, [AppendOp(n=1, readings=[r]) for r in readings[i:i + 50]], t0)
    append_us = (tt() - a) / n * 1e6
    held = store.snapshot(t0)
    space = held.used_bytes / n
    claim_s = ack_s = 0.0
    while True:
        a = tt()
        with store.transaction(fsync=True):
            claim = claims.make_claim(store, 1000, 0.3, t0 + n)
        b = tt()
        claim_s += b - a
        if claim is None:
            break
        with store.transaction():
            claims.ack(store, claim.seq, t0 + n)
        ack_s += tt() - b
    store.close()
    return {"append_us": round(append_us, 2), "claim_us": round(claim_s / n * 1e6, 2),
            "ack_us": round(ack_s / n * 1e6, 2),
            "total_us": round(append_us + (claim_s + ack_s) / n * 1e6, 2),
            "bytes_per_held_reading": round(space, 1)}


def wear_table(tmp: str, n: int = 40_000) -> list[dict[str, Any]]:
    """Bytes written to storage and CPU per reading by group size (= commit interval x rate:
    at 10k readings/s, 1 ms -> 10, 5 ms -> 50, 20 ms -> 200, 100 ms -> 1000), appends only,
    for both synchronous modes."""
    from edge.clock import SystemClock
    from gateway.buffer import Store
    from gateway.buffer.writer import AppendOp, execute_group

    t0 = 1_705_322_445_000
    readings = [Reading(device_id=f"sensor_{i % 10_000:05d}_line{i % 5 + 1}", ts_ms=t0 + i,
                        value=20.0 + (i % 50) / 10, seq=i // 10_000, unit="celsius",
                        facility="factory_a", line=str(i % 5 + 1), zone="assembly",
                        battery_voltage=3.71, received_ms=t0 + i) for i in range(n)]
    rows = []
    for mode in (Synchronous.FULL, Synchronous.NORMAL):
        for group in (10, 50, 200, 1000):
            path = Path(tmp) / f"wear-{mode.value}-{group}.db"
            store = Store.open(BufferSettings(path=str(path), synchronous=mode,
                                              check_at_open=False), SystemClock())
            io0, cpu0, w0 = write_bytes(), time.thread_time(), time.perf_counter()
            for i in range(0, n, group):
                execute_group(store, [AppendOp(n=1, readings=[r])
                                      for r in readings[i:i + group]], t0)
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - w0
            store.close()  # the final checkpoint belongs to the bytes written
            rows.append({"sync": mode.value, "group": group,
                         "write_bytes_per_reading": round((write_bytes() - io0) / n, 1),
                         "cpu_us_per_reading": round(cpu / n * 1e6, 2),
                         "wall_ms_per_commit": round(wall / (n / group) * 1000, 2)})
            print(f"wear: {json.dumps(rows[-1])}", file=sys.stderr)
    return rows


def summarize(raw: dict[str, Any], driver_us: float) -> dict[str, Any]:
    n = max(1, raw["readings"])
    us = 1e6 * raw["cpu_s"] / n
    return {
        "us_per_reading": round(us, 2),
        "buffer_us_per_reading": round(us - driver_us, 2),
        "driver_us_per_reading": round(driver_us, 2),
        "writer_us_per_reading": round(1e6 * raw["writer_cpu_s"] / n, 2),
        "cores_at_rate": round(raw["cpu_s"] / (n / raw["readings_per_s"]), 3),
        "readings_per_s": raw["readings_per_s"],
        "p50_commit_ms": round(raw["p50_ms"], 2),
        "p99_commit_ms": round(raw["p99_ms"], 2),
        "write_bytes_per_reading": round(raw["write_bytes"] / n, 1),
        "commit_ms_avg": raw["commit_ms_avg"],
        "group_size_avg": raw["group_size_avg"],
        "rss_mb": raw["rss_mb"],
        "readings": raw["readings"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"], choices=["FULL", "NORMAL"])
    p.add_argument("--no-uplink", action="store_true")
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="sys.setswitchinterval for the run (Python's default is 5 ms)")
    p.add_argument("--no-paths", action="store_true", help="skip the core path measurement")
    p.add_argument("--wear", action="store_true",
                   help="also measure bytes written per reading by group size")
    args = p.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    null = asyncio.run(run_null(args))
    driver_us = 1e6 * null["cpu_s"] / max(1, null["readings"])
    print(f"driver alone: {driver_us:.2f} us/reading, p50 {null['p50_ms']:.3f} ms",
          file=sys.stderr)
    results: dict[str, Any] = {}
    calibration = calibrate()
    with tempfile.TemporaryDirectory(prefix="fieldlink-bench-", dir=os.getcwd()) as tmp:
        core = {} if args.no_paths else paths(tmp)
        print(f"core paths: {json.dumps(core)}", file=sys.stderr)
        wear = wear_table(tmp) if args.wear else []
        for mode in args.sync:
            raw = asyncio.run(run_buffer(str(Path(tmp) / f"{mode}.db"), Synchronous(mode), args))
            results[mode] = summarize(raw, driver_us)
            print(f"{mode}: " + json.dumps(results[mode]), file=sys.stderr)
    head = results[args.sync[0]]
    final = {
        "bench": "buffer", "rate": args.rate, "devices": args.devices,
        "commit_interval_ms": args.interval_ms, "uplink": not args.no_uplink,
        "switch_interval_ms": sys.getswitchinterval() * 1000,
        "sync": args.sync[0], **head,
        "disk_bytes_per_reading": core.get("bytes_per_held_reading"),
        "core_paths_us": core,
        "wear": wear,
        "by_sync": results,
        "calibration_sum_range_1000_us": calibration,
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "median_us_per_reading": statistics.median(r["us_per_reading"]
                                                   for r in results.values()),
    }
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
