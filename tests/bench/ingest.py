"""The gateway's ingest under the issue's load, next to Mosquitto on the same machine.

    .venv/bin/python tests/bench/ingest.py [--devices 10000] [--rate 1] [--seconds 20]

N simulated MQTT sensors (firmware_sim, its own process) publish QoS 1 at `rate` readings/s
each, first against `fieldlink gateway run` (every PUBACK after the SQLite group commit), then
against Mosquitto (Debian, no persistence), then against the Python floor
(`tests/bench/_mqtt_floor.py`: the smallest uvloop ingest that commits each raw payload to
SQLite before its PUBACK, with no decoding, validation or routing — what any Python ingest
costs on this machine before doing its job).  For each: server CPU per reading and cores used in
the steady phase (after every device connected), share of readings acknowledged, ack latency
p50/p99 as the sensors saw it, peak RSS; for the gateway also bytes written to disk per
reading (/proc/PID/io write_bytes — SD cards wear out).

Targets (2-core machine): 100% acknowledged after commit, p99 ack <= 25 ms, gateway <= 0.35
of a core, RSS <= 150 MB.  Device accounts are not used (anonymous access on): password
checks happen once per connection, not per reading, and 10,000 argon2 hashes would dominate
the set-up time.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


class Sampler(threading.Thread):
    """Samples a process's CPU time (user, system, and per thread), RSS and disk writes every
    0.25 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float, int, int, float, dict[int, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                cpu = self.proc.cpu_times()
                rss = self.proc.memory_info().rss
                threads = {t.id: t.user_time + t.system_time for t in self.proc.threads()}
                try:
                    written = self.proc.io_counters().write_bytes
                except (psutil.AccessDenied, AttributeError):
                    written = 0
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic(), cpu.user + cpu.system, rss, written,
                                 cpu.system, threads))
            self.stop.wait(0.25)

    def window(self, t0: float, t1: float) -> tuple[float, float, int]:
        """(cpu seconds, wall seconds, bytes written) between monotonic times t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0, 0.0, 0
        return (inside[-1][1] - inside[0][1], inside[-1][0] - inside[0][0],
                inside[-1][3] - inside[0][3])

    def split(self, t0: float, t1: float) -> tuple[float, list[float]]:
        """(system CPU seconds, CPU seconds of each thread, busiest first) in the window."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0, []
        first, last = inside[0][5], inside[-1][5]
        per_thread = sorted((v - first.get(tid, 0.0) for tid, v in last.items()), reverse=True)
        return inside[-1][4] - inside[0][4], per_thread

    def peak_rss_mb(self) -> float:
        return max((s[2] for s in self.samples), default=0) / 2**20


def run_fleet(port: int, args: argparse.Namespace) -> tuple[dict, float, float]:
    """Run the simulator; return its JSON summary and the monotonic steady-phase bounds."""
    cmd = [PY, "-m", "edge.cli", "sim", "run", "--config", str(ROOT / "config/sim.yaml"),
           "--devices", str(args.devices), "--rate", str(args.rate),
           "--duration", str(args.seconds), "--target", f"127.0.0.1:{port}", "--qos", "1",
           "--connect-rate", str(args.connect_rate), "--json", "--quiet"]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         timeout=args.seconds + args.devices / max(args.connect_rate, 1) + 120)
    if out.returncode != 0:
        raise SystemExit(f"simulator failed ({out.returncode}): {out.stderr[-2000:]}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    connect_s = float(summary.get("connect_phase_s") or 0.0)
    # steady phase: after every device connected, until the sending stopped
    t0 = start + connect_s + 1.0
    t1 = start + connect_s + float(summary.get("duration_s") or args.seconds) - 0.5
    return summary, t0, t1


def measure(name: str, server: subprocess.Popen, port: int, args: argparse.Namespace,
            extra: dict | None = None) -> dict:
    sampler = Sampler(server.pid)
    sampler.start()
    try:
        summary, t0, t1 = run_fleet(port, args)
    finally:
        sampler.stop.set()
        sampler.join()
    cpu_s, wall_s, written = sampler.window(t0, t1)
    rate = summary.get("send_rate_per_s") or args.devices * args.rate
    readings_in_window = rate * wall_s if wall_s else 0.0
    generated = summary.get("generated") or 0
    acked = summary.get("acknowledged") or 0
    lat = summary.get("ack_latency_ms") or {}
    result = {
        "devices": args.devices,
        "readings_per_s": rate,
        "generated": generated,
        "acknowledged": acked,
        "acked_share": round(acked / generated, 5) if generated else 0.0,
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "p999_ms": lat.get("p999"),
        "cpu_cores": round(cpu_s / wall_s, 3) if wall_s else None,
        "us_per_reading": round(cpu_s * 1e6 / readings_in_window, 1)
        if readings_in_window else None,
        "rss_mb": round(sampler.peak_rss_mb(), 1),
        "steady_window_s": round(wall_s, 1),
        "sim_cpu_cores": summary.get("cpu_cores"),
        "failed": summary.get("failed"),
    }
    if readings_in_window:
        sys_s, threads = sampler.split(t0, t1)
        # what the kernel charged (sockets, fsync) vs the process's own code, and the
        # busiest threads (for the gateway: the event loop, then the buffer writer)
        result["us_per_reading_system"] = round(sys_s * 1e6 / readings_in_window, 1)
        result["us_per_reading_by_thread"] = [round(t * 1e6 / readings_in_window, 1)
                                              for t in threads[:3] if t > 0]
    if name != "mosquitto":
        result["disk_bytes_per_reading"] = (round(written / readings_in_window, 1)
                                            if readings_in_window else None)
    if extra:
        result.update(extra)
    print(f"{name:>10}: acked {result['acked_share']:.2%}  p50 {result['p50_ms']} ms  "
          f"p99 {result['p99_ms']} ms  cores {result['cpu_cores']}  "
          f"us/reading {result['us_per_reading']}  rss {result['rss_mb']} MB", file=sys.stderr)
    return result


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_gateway(work: Path, args: argparse.Namespace) -> dict:
    port, http = free_port(), free_port()
    cfg = work / "gateway.yaml"
    cfg.write_text(f"""
gateway: {{id: gw-bench, data_dir: {work / "gw"}}}
mqtt: {{host: 127.0.0.1, port: {port}, allow_anonymous: true,
        credentials_file: {work / "none.json"}, max_connections: {args.devices + 1000}}}
coap: {{enabled: false}}
buffer: {{commit_interval_ms: {args.commit_ms}, synchronous: {args.synchronous}}}
uplink: {{enabled: false}}
alerts: {{rules_file: {args.rules}}}
http: {{host: 127.0.0.1, port: {http}}}
logging: {{level: warning}}
""")
    server = subprocess.Popen([PY, "-m", "edge.cli", "gateway", "run", "--config", str(cfg)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, server)
        return measure("fieldlink", server, port, args,
                       {"commit_interval_ms": args.commit_ms, "synchronous": args.synchronous})
    finally:
        stop(server)


def bench_mosquitto(work: Path, args: argparse.Namespace) -> dict:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        return {"error": "mosquitto not installed (apt-get install mosquitto)"}
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 100000\n")
    server = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_port(port, server)
        return measure("mosquitto", server, port, args)
    finally:
        stop(server)


def bench_floor(work: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    server = subprocess.Popen([PY, str(ROOT / "tests/bench/_mqtt_floor.py"), str(port),
                               str(work / "floor.db"), str(args.commit_ms)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, server)
        return measure("floor", server, port, args, {"commit_interval_ms": args.commit_ms})
    finally:
        stop(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device")
    parser.add_argument("--seconds", type=float, default=20.0, help="sending time per server")
    parser.add_argument("--connect-rate", type=int, default=1000, help="CONNECTs per second")
    parser.add_argument("--commit-ms", type=float, default=5.0)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--only", choices=("fieldlink", "mosquitto", "floor"))
    parser.add_argument("--rules", default=str(ROOT / "config/rules.yaml"),
                        help="alert rules the gateway evaluates (default: the shipped ones)")
    args = parser.parse_args()
    out: dict = {"devices": args.devices, "rate_hz": args.rate, "seconds": args.seconds,
                 "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="fieldlink-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "fieldlink"):
            out["fieldlink"] = bench_gateway(work, args)
        if args.only in (None, "mosquitto"):
            out["mosquitto"] = bench_mosquitto(work, args)
        if args.only in (None, "floor"):
            out["python_floor"] = bench_floor(work, args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
