"""Benchmark of window maintenance and rule evaluation CPU at the gateway's design load.

    .venv/bin/python tests/bench/windows.py [--devices 10000] [--seconds 30]

A fleet of `--devices` sensors, each sending one temperature reading per second (own phase
within the second, 0-20 ms timestamp jitter, 30-80 ms transport lag, battery voltage on every
reading), processed in arrival order with `advance(now)` every 100 ms, as the gateway does.
Readings are generated before timing; the clock measured is process CPU time.

Scenarios:

* windows  — one `Windower`, 10 s tumbling per device: the budget line (target <= 10 us per
             reading amortised including closes, i.e. <= 0.1 core at 10,000 readings/s).
             Windows are closed as the engine closes them (`close_due`: column-wise, no
             `WindowResult` built); the CPU of the close calls alone, per window, is
             `us_per_window_close`, and turning the closed windows into buffer events
             afterwards (`ClosedWindows.events`, what the gateway's forwarder does) is
             `us_per_aggregate_event`.
* engine   — `AlertEngine` with a 10 s window and the seed rule (max > 90, clear < 85),
             2 % of devices running hot so alerts fire.
* shipped  — `AlertEngine` with config/rules.yaml as shipped (two window families, one of
             them a 1-minute sliding window, and every rule kind).

Prints a table, then ONE JSON object as the last line: `us_per_reading`, `window_cpu_cores`,
`us_per_window_close`, `us_per_aggregate_event` and `closes_per_s` are the windows scenario
(closes per CPU-second); `engine_*` and `shipped_*` the others.  `calib_ms_per_mloop` is an
empty Python loop of a million iterations (about 20 ms on an idle modern core): the machine's
speed at the time.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import random
import time
import timeit
from collections.abc import Callable

from edge.model import Reading
from edge.rules import AlertEngine, load_rules, parse_rules
from edge.windows import ClosedWindows, Windower, WindowSpec

T0 = 1_705_322_400_000  # a whole minute
ROOT = pathlib.Path(__file__).resolve().parents[2]


def fleet(devices: int, seconds: int, seed: int = 1) -> list[tuple[int, Reading]]:
    rng = random.Random(seed)
    phase = [rng.randrange(1000) for _ in range(devices)]
    hot = {d for d in range(devices) if rng.random() < 0.02}
    temp = [60.0 + rng.gauss(0, 5) for _ in range(devices)]
    out = []
    for s in range(seconds):
        for d in range(devices):
            temp[d] += rng.gauss(0, 0.05)
            ts = T0 + s * 1000 + phase[d] + rng.randrange(20)
            value = temp[d] + (35.0 if d in hot else 0.0)
            r = Reading(f"sensor-{d:05d}", ts, round(value, 2), unit="C",
                        facility=f"plant-{d % 3}", line=str(d % 7), battery_voltage=3.7,
                        received_ms=ts + 30 + rng.randrange(50))
            out.append((r.received_ms, r))
    out.sort(key=lambda x: x[0])
    return out


def drive(observe: Callable[[Reading, int], object], advance: Callable[[int], object],
          stream: list[tuple[int, Reading]]) -> float:
    """CPU seconds to process the stream with a 100 ms advance tick."""
    gc.collect()
    # the pre-generated stream is scaffolding, not gateway state: keep it out of the
    # collector's way (the engine's own state is created during the run and is collected)
    gc.freeze()
    start = time.process_time()
    next_tick = stream[0][0] + 100
    for arrival, r in stream:
        while arrival >= next_tick:
            advance(next_tick)
            next_tick += 100
        observe(r, arrival)
    end_at = stream[-1][0] + 15_000
    while next_tick <= end_at:
        advance(next_tick)
        next_tick += 100
    elapsed = time.process_time() - start
    gc.unfreeze()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    calib = min(timeit.timeit("for _ in range(1_000_000): pass", number=1)
                for _ in range(3)) * 1000
    stream = fleet(args.devices, args.seconds)
    import numpy  # noqa: F401  - imported once at gateway start, not per window close
    n = len(stream)
    rate = args.devices  # readings per second at design load

    w = Windower(WindowSpec(id="w10s", size_ms=10_000, lateness_ms=2000, idle_timeout_ms=4000))
    closes = 0
    close_cpu = 0.0
    closed: list[ClosedWindows] = []

    def w_advance(now: int) -> None:
        nonlocal closes, close_cpu
        t0 = time.process_time()
        batch = w.close_due(now)
        close_cpu += time.process_time() - t0
        closes += len(batch)
        if batch:
            closed.append(batch)

    cpu_w = drive(w.observe, w_advance, stream)
    t0 = time.process_time()
    events = sum(len(b.events()) for b in closed)
    events_cpu = time.process_time() - t0
    closed.clear()

    seed = parse_rules({"windows": [{"id": "w10s", "size": "10s", "idle_timeout": "4s"}],
                        "rules": [
        {"id": "overheat", "match": {"measurement": "temperature"}, "condition": "max > 90",
         "clear": "max < 85", "severity": "critical"}]})
    results = {}
    for name, rs in (("engine", seed), ("shipped", load_rules(ROOT / "config/rules.yaml"))):
        eng = AlertEngine(rs, now_ms=stream[0][0])
        counts = {"aggregates": 0, "transitions": 0}

        def e_advance(now: int, eng: AlertEngine = eng, counts: dict = counts) -> None:
            out = eng.advance(now)
            counts["aggregates"] += len(out.aggregates)
            counts["transitions"] += len(out.transitions)

        cpu = drive(eng.observe, e_advance, stream)
        results[name] = (cpu, counts)

    us = cpu_w / n * 1e6
    summary = {
        "readings": n, "devices": args.devices, "seconds": args.seconds,
        "us_per_reading": round(us, 3),
        "window_cpu_cores": round(us * rate / 1e6, 4),
        "us_per_window_close": round(close_cpu / max(closes, 1) * 1e6, 3),
        "us_per_aggregate_event": round(events_cpu / max(events, 1) * 1e6, 3),
        "closes_per_s": round(closes / cpu_w),
        "windows_closed": closes,
        "calib_ms_per_mloop": round(calib, 1),
    }
    print(f"{'scenario':10} {'us/reading':>11} {'cores@10k/s':>12} {'aggregates':>11} "
          f"{'alerts':>7}")
    print(f"{'windows':10} {us:11.2f} {us * rate / 1e6:12.4f} {closes:11d} {0:7d}   "
          f"(close {summary['us_per_window_close']} us/window, "
          f"event {summary['us_per_aggregate_event']} us/window)")
    for name, (cpu, counts) in results.items():
        e_us = cpu / n * 1e6
        print(f"{name:10} {e_us:11.2f} {e_us * rate / 1e6:12.4f} {counts['aggregates']:11d} "
              f"{counts['transitions']:7d}")
        summary[f"{name}_us_per_reading"] = round(e_us, 3)
        summary[f"{name}_cpu_cores"] = round(e_us * rate / 1e6, 4)
        summary[f"{name}_aggregates"] = counts["aggregates"]
        summary[f"{name}_transitions"] = counts["transitions"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
