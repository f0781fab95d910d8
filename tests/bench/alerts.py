"""Benchmark of the gateway's local alerts end to end: window CPU and window-close → MQTT latency.

    .venv/bin/python tests/bench/alerts.py [--devices 10000] [--seconds 30] [--hot 0.02]
                                           [--idle-ms 4000]

A real `AlertService` (100 ms ticker, closes between ticks as soon as windows are due, SQLite
state and outbox, synchronous=FULL commits) with a real `MqttServer` (127.0.0.1, port 0) and
a real `gateway.buffer.Buffer` is fed `--devices` sensors × 1 temperature reading per second,
paced in real time.  Each device reports at its own phase within the second, drawn at random
(real sensors are not phase-aligned; the `firmware_sim` fleet does the same); the driver
hands the readings of each 10 ms slice to `observe()` together.  The rules are the seed
pair: a 10 s tumbling window (lateness 2 s, idle timeout `--idle-ms`, 4 s as shipped in
config/rules.yaml) and `overheat` (max > 90, clear max < 85).  A share `--hot` of the devices
runs at ~95 °C for 12-20 s starting at a random second, so alerts fire and resolve
throughout the run.  A paho subscriber in a separate process, logged in as an operator,
subscribes to ``alerts/#`` and timestamps every message on arrival.

Latency, per firing/resolved message of the window rule (one wall clock, this host's):

* ``alert_latency`` = arrival at the subscriber − the window's *close deadline*, the moment
  its close became due: the arrival of the device's first reading with event time ≥ window
  end + lateness (the event-time watermark passing the end), or — for a device gone silent —
  its idle deadline, window end + idle timeout + the lag of its latest reading, whichever
  comes first.  Computed here from the readings the driver sent, independently of the
  engine.  It covers the wait for the service to notice, the close itself, rule evaluation,
  the durable outbox commit, MQTT delivery and the subscriber's socket.  ``p50/p99/max``
  are over the alerts of windows that became due while the fleet was running (the design
  load), by close kind in ``alert_latency_ms_by_close``.
* ``call_to_alert`` = arrival − the transition's ``at_ms`` (the `now` of the engine call
  that closed the window): the part after the engine started closing.
* ``silence_wave``: when the run ends every device falls silent at once, so every device's
  last window comes due by its idle deadline within a few ms — 10,000 closes at one moment
  (a network outage looks the same).  Its close lag (engine side: `WindowResult.due_ms` to
  the closing call) and the latency of its alerts are reported apart.
* ``close_lag_ms`` = the service's own measure (`stats()["close_lag_ms"]`) of how long after
  its due moment each window was closed, while the fleet ran; ``loop_lag_ms`` how late the
  event loop ran a 10 ms timer (the machine's load and everything on the loop together).

``window_cpu_cores`` = thread CPU time inside the engine (`observe`, `advance` and
`close_windows`: window maintenance, closes and rule evaluation; measured by
`AlertSettings.measure_cpu`) / wall time; ``us_per_reading`` the same per reading.
``aggregate_events_cpu_cores`` is turning closed windows into buffer events (off the alert
path); ``process_cpu_cores`` the whole process (the driver generating readings, the broker,
the buffer and the SQLite threads included).  ``calib_ms_per_mloop`` is how long an empty
Python loop of a million iterations takes at the start — the machine's speed at the time
(about 20 ms on an idle modern core), to compare runs under different loads.

Prints a summary, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.model import Reading
from edge.rules import parse_rules
from gateway.alerts import AlertService, AlertSettings
from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.buffer import Buffer, BufferSettings
from gateway.mqtt import MqttServer, MqttSettings
from gateway.testing import RecordingIngest

LATENESS_MS = 2000
WINDOW_MS = 10_000
SHIPPED_IDLE_MS = 4000


def rules(idle_ms: int) -> Any:
    return parse_rules({
        "version": 1,
        "windows": [{"id": "w10s", "kind": "tumbling", "size": "10s", "lateness": "2s",
                     "idle_timeout": f"{idle_ms}ms"}],
        "rules": [{"id": "overheat", "window": "w10s",
                   "match": {"measurement": "temperature"}, "condition": "max > 90",
                   "clear": "max < 85", "severity": "critical",
                   "message": "{device_id} max {max:.1f} °C > 90 in window {start}"}],
    })

SUBSCRIBER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
host, port, user, pw = sys.argv[1:5]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-alerts-sub",
                protocol=mqtt.MQTTv311)
c.username_pw_set(user, pw)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("alerts/#", 1)
c.on_subscribe = lambda *a: print("READY", flush=True)
def on_message(cl, u, m):
    t = time.time() * 1000.0
    if not m.payload:
        return
    b = json.loads(m.payload)
    print(json.dumps([t, b["transition"], b["at_ms"], b["values"].get("end_ms"), b["device"],
                      b["incarnation"]]), flush=True)
c.on_message = on_message
c.connect(host, int(port), 60)
c.loop_forever()
"""


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank, so p100 is the maximum)."""
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))], 2)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": pct(values, 100)}


def calibrate() -> float:
    """ms for an empty Python loop of a million iterations (best of three)."""
    return min(timeit.timeit("for _ in range(1_000_000): pass", number=1)
               for _ in range(3)) * 1000


class Fleet:
    def __init__(self, devices: int, seconds: int, hot: float, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.names = [f"sensor-{d:05d}" for d in range(devices)]
        self.phase = [rng.randrange(1000) for _ in range(devices)]
        self.base = [60.0 + rng.gauss(0, 5) for _ in range(devices)]
        self.slots: list[list[int]] = [[] for _ in range(100)]
        for d in range(devices):
            self.slots[self.phase[d] // 10].append(d)
        self.hot: dict[int, tuple[int, int]] = {}
        for d in range(devices):
            if rng.random() < hot:
                # over while the fleet runs: its firing and its resolution are both measured
                start = rng.randrange(0, max(1, seconds - 20))
                self.hot[d] = (start, start + rng.randrange(12, 21))
        self.arrivals: dict[str, list[tuple[int, int]]] = {self.names[d]: [] for d in self.hot}
        self.rng = rng

    def value(self, d: int, second: int) -> float:
        span = self.hot.get(d)
        if span is not None and span[0] <= second < span[1]:
            return 95.0 + self.rng.random()
        return self.base[d] + self.rng.random()


async def drive(svc: AlertService, fleet: Fleet, seconds: int) -> int:
    """Feed readings in real time; returns how many."""
    n = 0
    start = (int(time.time()) + 1) * 1.0  # on a whole second: windows are epoch-aligned
    start_ms = int(start * 1000)
    for s in range(seconds):
        for slot in range(100):
            # (behind schedule, still yield: the pipeline calls its observers from one task
            # per message, never in one long run)
            await asyncio.sleep(max(0.0, start + s + slot * 0.01 - time.time()))
            now_ms = int(time.time() * 1000)
            batch = []
            for d in fleet.slots[slot]:
                ts = start_ms + s * 1000 + fleet.phase[d]
                name = fleet.names[d]
                batch.append(Reading(name, ts, fleet.value(d, s), unit="C",
                                     received_ms=now_ms))
                arrivals = fleet.arrivals.get(name)
                if arrivals is not None:
                    arrivals.append((ts, now_ms))
            svc.observe(batch)
            n += len(batch)
    return n


def closable_at(arrivals: list[tuple[int, int]], end_ms: int, idle_ms: int
                ) -> tuple[int, str] | None:
    """When the device's window ending at `end_ms` became closable: the arrival of its first
    reading with event time >= end + lateness (the event-time watermark), or — sooner for a
    device that went silent, or whose next reading came late — the moment its idle
    watermark reached the end: end + idle timeout + the lag of its latest reading then.
    Returns (that moment, "watermark" | "idle")."""
    idle_at: int | None = None
    for ts, recv in arrivals:
        if idle_at is not None and idle_at <= recv:
            return idle_at, "idle"  # silent long enough before this reading arrived
        if ts >= end_ms + LATENESS_MS:
            return recv, "watermark"
        if ts >= end_ms - 600_000:
            idle_at = end_ms + idle_ms + (recv - ts)
    return None if idle_at is None else (idle_at, "idle")


async def loop_lag(out: list[float], period: float = 0.01) -> None:
    """How late the event loop runs a 10 ms timer: its responsiveness during the run (the
    machine's load and everything on the loop together)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period)
        out.append((loop.time() - t - period) * 1000)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fieldlink-bench-alerts-"))
    creds = tmp / "creds.json"
    save_accounts(creds, {"ops": Account("ops", "operator", hash_password("pw-ops"))})
    fleet = Fleet(args.devices, args.seconds, args.hot)
    settings = AlertSettings(state_path=tmp / "alerts.sqlite3", gateway_id="gw-bench",
                             measure_cpu=True, close_batch=args.close_batch)
    lines: list[list[Any]] = []
    lags: list[float] = []
    with Authenticator(creds) as auth:
        async with MqttServer(MqttSettings(host="127.0.0.1", port=0),
                              ingest=RecordingIngest(), auth=auth) as server, \
                Buffer(BufferSettings(path=str(tmp / "buffer.sqlite3"))) as buf, \
                AlertService(settings, buffer=buf, mqtt=server,
                             ruleset=rules(args.idle_ms)) as svc:
            sub = await asyncio.create_subprocess_exec(
                sys.executable, "-u", "-c", SUBSCRIBER, "127.0.0.1", str(server.port), "ops",
                "pw-ops", stdout=asyncio.subprocess.PIPE)
            assert sub.stdout is not None
            assert (await asyncio.wait_for(sub.stdout.readline(), 30)).strip() == b"READY"

            async def collect() -> None:
                assert sub.stdout is not None
                async for line in sub.stdout:
                    lines.append(json.loads(line))

            reader = asyncio.create_task(collect(), name="bench-subscriber")
            probe = asyncio.create_task(loop_lag(lags), name="bench-loop-lag")
            cpu0, wall0, eng0 = time.process_time(), time.monotonic(), svc.engine_cpu_s
            ev0 = svc.aggregate_events_cpu_s
            readings = await drive(svc, fleet, args.seconds)
            wall = time.monotonic() - wall0
            cpu = time.process_time() - cpu0
            engine_cpu = svc.engine_cpu_s - eng0
            events_cpu = svc.aggregate_events_cpu_s - ev0
            stopped_ms = time.time() * 1000
            running = svc.stats()
            running_lags = list(svc.close_lag.lags)
            # every device is silent now: each one's last window closes by its idle deadline,
            # all within a few ms — the silence wave; then its alerts travel
            last_end = math.ceil(stopped_ms / WINDOW_MS) * WINDOW_MS
            await asyncio.sleep((last_end + args.idle_ms - stopped_ms) / 1000 + 1.5)
            stats = svc.stats()
            wave = stats["windows_closed"] - running["windows_closed"]
            wave_lags = list(svc.close_lag.lags)[len(svc.close_lag.lags) - wave:] if wave else []
            sub.terminate()
            await sub.wait()
            reader.cancel()
            probe.cancel()

    calls_ms = [done - at for at, done, closes, _ in svc.ticks if closes]
    lat, after_call, silent = [], [], []
    by_kind: dict[str, list[float]] = {"watermark": [], "idle": []}
    for recv, transition, at_ms, end_ms, device, _ in lines:
        if transition not in ("firing", "resolved") or end_ms is None:
            continue
        due = closable_at(fleet.arrivals.get(device, []), end_ms, args.idle_ms)
        if due is None:
            continue
        if due[0] >= stopped_ms:
            silent.append(recv - due[0])
            continue
        after_call.append(recv - at_ms)
        lat.append(recv - due[0])
        by_kind[due[1]].append(recv - due[0])
    snap = stats.get("snapshot", {})
    return {
        "devices": args.devices, "seconds": args.seconds, "readings": readings,
        "idle_ms": args.idle_ms, "close_batch": args.close_batch, "hot_devices": len(fleet.hot),
        "alerts_received": len(lines), "alerts_measured": len(lat),
        "transitions_committed": sum(stats["transitions"].values()),
        "windows_closed": running["windows_closed"],
        "windows_closed_by": running["windows_closed_by"],
        "p50_alert_latency_ms": pct(lat, 50), "p99_alert_latency_ms": pct(lat, 99),
        "max_alert_latency_ms": pct(lat, 100),
        "alert_latency_ms_by_close": {
            kind: {"alerts": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "max": pct(v, 100)}
            for kind, v in by_kind.items()},
        "p50_call_to_alert_ms": pct(after_call, 50),
        "p99_call_to_alert_ms": pct(after_call, 99),
        "engine_calls_closing": len(calls_ms),
        "p50_close_call_ms": pct(calls_ms, 50), "max_close_call_ms": pct(calls_ms, 100),
        "close_lag_ms": summary(running_lags),
        "loop_lag_ms": summary(lags),
        "silence_wave": {"windows": wave, "close_lag_ms": summary(wave_lags),
                         "alerts": len(silent), "alert_latency_ms": summary(silent)},
        "window_cpu_cores": round(engine_cpu / wall, 4),
        "us_per_reading": round(engine_cpu / readings * 1e6, 2),
        "aggregate_events_cpu_cores": round(events_cpu / wall, 4),
        "process_cpu_cores": round(cpu / wall, 3),
        "snapshots": stats.get("snapshots", 0), "snapshot_cpu_ms": snap.get("cpu_ms"),
        "snapshot_bytes": snap.get("bytes"), "snapshot_interval_s": snap.get("interval_s"),
        "outbox_depth_at_end": stats["outbox_depth"],
        "ticks_skipped": stats.get("ticks_skipped", 0),
        "calib_ms_per_mloop": round(args.calib, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--hot", type=float, default=0.02, help="share of devices running hot")
    ap.add_argument("--idle-ms", type=int, default=SHIPPED_IDLE_MS,
                    help="idle_timeout of the window family (lateness is 2000 ms); at 2000 "
                         "the idle deadline of every device's window falls in the same "
                         "10 ms, so all 10,000 close at once (the worst case)")
    ap.add_argument("--close-batch", type=int,
                    default=AlertSettings(state_path=Path("unused")).close_batch,
                    help="windows closed per engine call (AlertSettings.close_batch)")
    args = ap.parse_args()
    args.calib = calibrate()
    summary = asyncio.run(run(args))
    for key in ("alerts_received", "alerts_measured", "p50_alert_latency_ms",
                "p99_alert_latency_ms", "max_alert_latency_ms", "alert_latency_ms_by_close",
                "p99_call_to_alert_ms",
                "p50_close_call_ms", "max_close_call_ms", "close_lag_ms", "loop_lag_ms",
                "silence_wave", "window_cpu_cores",
                "us_per_reading", "aggregate_events_cpu_cores", "process_cpu_cores",
                "snapshot_cpu_ms", "snapshot_interval_s", "calib_ms_per_mloop"):
        print(f"{key:28} {summary[key]}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
