"""Benchmark of the gateway's local alerts end to end: window CPU and window-close → MQTT latency.

    .venv/bin/python tests/bench/alerts.py [--devices 10000] [--seconds 30] [--hot 0.02]

A real `AlertService` (100 ms ticker, SQLite state and outbox, synchronous=FULL commits) with
a real `MqttServer` (127.0.0.1, port 0) and a real `gateway.buffer.Buffer` is fed `--devices`
sensors × 1 temperature reading per second, paced in real time (each device at its own phase
within the second; one `observe()` call per 10 ms slice, as the pipeline's observer would be
called).  The rules are the seed pair: a 10 s tumbling window (lateness 2 s, idle 2 s) and
`overheat` (max > 90, clear max < 85).  A share `--hot` of the devices runs at ~95 °C for
12-20 s starting at a random second, so alerts fire and resolve throughout the run.  A paho
subscriber in a separate process, logged in as an operator, subscribes to ``alerts/#`` and
timestamps every message on arrival.

Latency, per firing/resolved message of a window rule (all clocks are this host's wall clock):

* ``alert_latency`` = arrival at the subscriber − the transition's ``at_ms``, which is the
  `now` of the `advance()` that closed the window: what the service adds after the window
  closed (evaluation, durable outbox commit, MQTT delivery, the subscriber's socket);
* ``closable_to_alert`` = arrival − the moment the window became closable: the arrival of
  the device's first reading with event time ≥ window end + lateness, or its idle
  watermark reaching the window end (end + idle timeout + the lag of its last reading),
  whichever is first.  It adds the wait for the next tick (up to 100 ms) to the above.

``window_cpu_cores`` = thread CPU time inside the engine (`observe` + `advance`, i.e. window
maintenance, closes and rule evaluation; measured by `AlertSettings.measure_cpu`) / wall time.
``process_cpu_cores`` is the whole process (the driver generating readings, the broker, the
buffer and the SQLite threads included).

Prints a summary, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
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
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q / 100 * len(s)))], 2)


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
                start = rng.randrange(0, max(1, seconds - 12))
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


def closable_at(arrivals: list[tuple[int, int]], end_ms: int, idle_ms: int) -> int | None:
    """When the device's window ending at `end_ms` became closable: the arrival of its first
    reading with event time >= end + lateness (event-time watermark), or — earlier for a
    device whose next reading is late in its second — when its idle watermark reached the
    end: end + idle_timeout + how late its last reading before that arrived."""
    last: tuple[int, int] | None = None
    for ts, recv in arrivals:
        if ts >= end_ms + LATENESS_MS:
            idle = end_ms + idle_ms + (last[1] - last[0]) if last is not None else recv
            return min(recv, idle)
        last = (ts, recv)
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fieldlink-bench-alerts-"))
    creds = tmp / "creds.json"
    save_accounts(creds, {"ops": Account("ops", "operator", hash_password("pw-ops"))})
    fleet = Fleet(args.devices, args.seconds, args.hot)
    settings = AlertSettings(state_path=tmp / "alerts.sqlite3", gateway_id="gw-bench",
                             measure_cpu=True)
    lines: list[list[Any]] = []
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
            cpu0, wall0, eng0 = time.process_time(), time.monotonic(), svc.engine_cpu_s
            readings = await drive(svc, fleet, args.seconds)
            wall = time.monotonic() - wall0
            cpu = time.process_time() - cpu0
            engine_cpu = svc.engine_cpu_s - eng0
            await asyncio.sleep(3.0)  # the last windows' alerts
            stats = svc.stats()
            sub.terminate()
            await sub.wait()
            reader.cancel()

    returned = {at: done for at, done, _, _ in svc.ticks}
    advance_ms = [done - at for at, done, closes, _ in svc.ticks if closes]
    lat, closable, after_advance = [], [], []
    for recv, transition, at_ms, end_ms, device, _ in lines:
        if transition not in ("firing", "resolved") or end_ms is None:
            continue
        lat.append(recv - at_ms)
        if at_ms in returned:
            after_advance.append(recv - returned[at_ms])
        c = closable_at(fleet.arrivals.get(device, []), end_ms, args.idle_ms)
        if c is not None:
            closable.append(recv - c)
    snap = stats.get("snapshot", {})
    return {
        "devices": args.devices, "seconds": args.seconds, "readings": readings,
        "hot_devices": len(fleet.hot), "alerts_received": len(lines),
        "transitions_committed": sum(stats["transitions"].values()),
        "windows_closed": stats["windows_closed"], "idle_ms": args.idle_ms,
        "windows_closed_by": stats["windows_closed_by"],
        "p50_alert_latency_ms": pct(lat, 50), "p99_alert_latency_ms": pct(lat, 99),
        "max_alert_latency_ms": pct(lat, 100),
        "p50_advance_return_to_alert_ms": pct(after_advance, 50),
        "p99_advance_return_to_alert_ms": pct(after_advance, 99),
        "max_advance_ms": pct(advance_ms, 100), "p50_advance_ms": pct(advance_ms, 50),
        "p50_closable_to_alert_ms": pct(closable, 50),
        "p99_closable_to_alert_ms": pct(closable, 99),
        "max_closable_to_alert_ms": pct(closable, 100),
        "window_cpu_cores": round(engine_cpu / wall, 4),
        "engine_us_per_reading": round(engine_cpu / readings * 1e6, 2),
        "process_cpu_cores": round(cpu / wall, 3),
        "snapshots": stats.get("snapshots", 0), "snapshot_cpu_ms": snap.get("cpu_ms"),
        "snapshot_bytes": snap.get("bytes"), "snapshot_interval_s": snap.get("interval_s"),
        "outbox_depth_at_end": stats["outbox_depth"],
        "ticks_skipped": stats.get("ticks_skipped", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--hot", type=float, default=0.02, help="share of devices running hot")
    ap.add_argument("--idle-ms", type=int, default=2000,
                    help="idle_timeout of the window family (lateness is 2000 ms); with "
                         "2000 every device's window closes in the same tick")
    args = ap.parse_args()
    summary = asyncio.run(run(args))
    for key in ("alerts_received", "transitions_committed", "p50_alert_latency_ms",
                "p99_alert_latency_ms", "max_alert_latency_ms", "p99_closable_to_alert_ms",
                "p99_advance_return_to_alert_ms", "p50_advance_ms", "max_advance_ms",
                "window_cpu_cores", "engine_us_per_reading", "process_cpu_cores",
                "snapshot_cpu_ms", "snapshot_interval_s"):
        print(f"{key:28} {summary[key]}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
