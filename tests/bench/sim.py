"""Benchmark of the simulator itself: 10,000 MQTT devices at 1 Hz against Mosquitto.

    .venv/bin/python tests/bench/sim.py [--devices 10000] [--rate 1] [--duration 10]
        [--client fast|paho] [--loop auto|asyncio|uvloop] [--no-ledger] [--qos 1]
        [--rates 1,1.5,2] [--target HOST:PORT | --shared]

By default it starts a private Mosquitto on a free port (so other tests on the shared broker
neither disturb nor are disturbed by 10,000 connections); `--shared` uses the broker of
tests/integration/services.py, `--target` any broker.  Devices connect first (paced at
`--connect-rate`, not measured), then the fleet sends for `--duration` seconds; what is
measured is that sending phase plus the drain of outstanding acknowledgements:

* rate_per_s        readings sent per second (target: devices x rate)
* achieved_share    rate_per_s / target rate
* acked_share       acknowledged / generated
* cpu_cores         CPU seconds (user + system, all threads) of the simulator process per
                    wall second, first tick to end of drain — 1.0 is one core saturated
* cpu_us_per_reading  CPU µs of the simulator per reading sent
* ack_p50/p99/p999_ms  PUBLISH → PUBACK latency
* max_lag_s         how far the scheduler fell behind the devices' tick times
* broker_cpu_cores  the private broker's CPU per wall second (context, not a target)

`--rates 1,2,3` repeats the run at each per-device rate (same broker) and reports every run;
the highest rate whose achieved_share >= 0.98 and max_lag_s < 1 is `max_sustained_per_s`.
Target: 10,000 devices x 1 Hz sustained (achieved_share >= 0.98) from one process.
Prints a line per run, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from edge.config import parse_config
from edge.config.sim import SimConfig
from firmware_sim.fleet import Fleet
from firmware_sim.run import run_loop

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="fieldlink-bench-sim-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateBroker:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        if binary is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto), or use "
                             "--shared / --target")
        conf = Path(self.dir.name) / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        f"persistence false\nmax_queued_messages 100000\nlog_type error\n"
                        f"max_connections -1\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the private mosquitto did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.dir.cleanup()


async def one_run(args: argparse.Namespace, host: str, port: int, rate: float,
                  broker: psutil.Process | None) -> dict[str, Any]:
    ledger = None
    tmp = None
    if not args.no_ledger:
        tmp = tempfile.TemporaryDirectory(prefix="fieldlink-bench-ledger-")
        ledger = os.path.join(tmp.name, "ledger.sqlite")
    cfg = parse_config({
        "seed": 1, "duration_s": args.duration, "connect_rate": args.connect_rate,
        "connect_wait_s": 300, "drain_timeout_s": 10, "ledger": ledger,
        "target": {"host": host, "port": port, "mqtt_client": args.client},
        "fleet": [{"count": args.devices, "rate_hz": rate, "qos": args.qos,
                   "lines": [1, 2, 3]}]}, SimConfig, environ={})
    async with Fleet(cfg) as fleet:
        connected = await fleet.wait_connected(300)
        t_connect = fleet.stats.connect_phase_s or None
        b0 = broker.cpu_times() if broker else None
        w0 = time.monotonic()
        s = await fleet.run()
        wall = time.monotonic() - w0
        b1 = broker.cpu_times() if broker else None
    if tmp is not None:
        tmp.cleanup()
    target = args.devices * rate
    lat = s["ack_latency_ms"]
    out = {
        "devices": args.devices, "connected": connected, "rate_hz": rate,
        "client": args.client, "loop": args.loop, "qos": args.qos, "ledger": ledger is not None,
        "duration_s": s["duration_s"], "connect_s": round(t_connect or s["connect_phase_s"], 2),
        "target_per_s": target,
        "rate_per_s": s["send_rate_per_s"],
        "achieved_share": round(s["send_rate_per_s"] / target, 4) if target else None,
        "acked_share": round(s["acknowledged"] / s["generated"], 5) if s["generated"] else None,
        "generated": s["generated"], "sent": s["sent"], "acknowledged": s["acknowledged"],
        "failed": s["failed"],
        # the fleet's own accounting: process CPU from the first tick to the end of the drain
        "cpu_cores": s["cpu_cores"],
        "cpu_us_per_reading": s["cpu_us_per_reading"],
        "ack_p50_ms": lat["p50"], "ack_p99_ms": lat["p99"], "ack_p999_ms": lat["p999"],
        "max_lag_s": s["max_lag_s"],
        "machine_load_1m": round(os.getloadavg()[0], 2),
    }
    if b0 is not None and b1 is not None:
        out["broker_cpu_cores"] = round(((b1.user - b0.user) + (b1.system - b0.system)) / wall,
                                        3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--rates", help="comma-separated per-device rates to sweep")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--client", choices=("fast", "paho"), default="fast")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--no-ledger", action="store_true")
    p.add_argument("--connect-rate", type=float, default=2000.0)
    p.add_argument("--target", metavar="HOST:PORT")
    p.add_argument("--shared", action="store_true", help="the shared test broker")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.devices + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.devices + 4096), hard))

    private: PrivateBroker | None = None
    stop_started = None
    if args.target:
        host, _, port_s = args.target.rpartition(":")
        port = int(port_s)
    elif args.shared:
        from _services import ensure
        from _services import stop_started as _stop

        ep = ensure("mosquitto")
        host, port, stop_started = ep.host, ep.port, _stop
    else:
        private = PrivateBroker().__enter__()
        host, port = "127.0.0.1", private.port
    broker_proc = psutil.Process(private.proc.pid) if private and private.proc else None
    results = []
    try:
        for rate in rates:
            r = run_loop(one_run(args, host, port, rate, broker_proc), args.loop)
            results.append(r)
            print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    finally:
        if private is not None:
            private.__exit__(None, None, None)
        if stop_started is not None:
            stop_started()
    sustained = [r["rate_per_s"] for r in results
                 if (r["achieved_share"] or 0) >= 0.98 and r["max_lag_s"] < 1.0]
    final = dict(results[0])
    final["max_sustained_per_s"] = max(sustained) if sustained else None
    if len(results) > 1:
        final["runs"] = results
    print(json.dumps(final, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
