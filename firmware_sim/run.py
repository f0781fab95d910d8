"""`fieldlink sim run`: run a simulated fleet against a gateway (or any MQTT broker).

    fieldlink sim run --config config/sim.yaml
    fieldlink sim run --devices 10000 --rate 1 --duration 30 --target 127.0.0.1:1883 --json
    fieldlink sim run --protocol serial --devices 2 --duration 0   # until Ctrl-C / SIGTERM

Flags override the config file (or the built-in defaults when there is none); the result is
validated like a config file, so a bad flag is reported with the key it sets.  While it runs,
a progress bar on stderr shows devices connected and readings sent / acknowledged / failed
per second (off with --quiet or when stderr is not a terminal).  At the end it prints a
summary, or with --json one JSON object on stdout (keys in docs/simulator.md).

Exit status: 0 the run completed (faults and failures are counted, not errors), 1 the
simulator itself failed, 2 a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
from collections.abc import Sequence
from typing import Any

from edge.config import load_config, parse_config
from edge.config.sim import FAULT_KINDS, SimConfig
from edge.errors import ConfigError
from edge.logs import setup_logging
from firmware_sim.stats import RunStats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldlink sim run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="fleet definition (YAML, see config/sim.yaml)")
    p.add_argument("--devices", type=int, help="total devices, split over the config's groups "
                   "in proportion to their counts")
    p.add_argument("--rate", type=float, help="readings per second per device (all groups)")
    p.add_argument("--protocol", choices=("mqtt", "coap", "serial"),
                   help="protocol of every device")
    p.add_argument("--duration", type=float,
                   help="seconds of sending; 0 = until SIGTERM/Ctrl-C")
    p.add_argument("--seed", type=int)
    p.add_argument("--start-ms", type=int, help="wall-clock ms of tick 0 (reproducible "
                   "timestamps); default: when sending starts")
    p.add_argument("--target", metavar="HOST:PORT", help="gateway / broker address")
    p.add_argument("--qos", type=int, choices=(0, 1), help="QoS of every device (CoAP: "
                   "1 = confirmable, 0 = non-confirmable)")
    p.add_argument("--username", help="MQTT user name; {device_id} is expanded per device "
                   "(a fieldlink gateway names device accounts by device id)")
    p.add_argument("--password", help="prefer FIELDLINK_TARGET__PASSWORD in the environment")
    p.add_argument("--credentials-file", metavar="PATH",
                   help="YAML/JSON mapping of device id to password")
    p.add_argument("--mqtt-client", choices=("fast", "paho"))
    p.add_argument("--connect-rate", type=float, help="connections per second; 0 = all at once")
    p.add_argument("--fault", action="append", default=[], metavar="KIND=RATE",
                   help=f"set a fault rate (repeatable); kinds: {', '.join(FAULT_KINDS)}")
    p.add_argument("--ledger", metavar="PATH", help="SQLite ledger of every reading")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="event loop: uvloop when installed (auto), else asyncio's")
    p.add_argument("--log-level", default="warning")
    return p


def run_loop(coro: Any, loop: str = "auto") -> Any:
    """Run `coro` on uvloop when asked for or available (its transports and polling are C,
    which cuts the loop's share of each message), else on asyncio's default loop."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def _split(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainder)."""
    if not weights:
        return []
    s = sum(weights) or len(weights)
    w = weights if sum(weights) else [1] * len(weights)
    exact = [total * x / s for x in w]
    out = [int(x) for x in exact]
    for i in sorted(range(len(w)), key=lambda i: exact[i] - out[i], reverse=True)[
            :total - sum(out)]:
        out[i] += 1
    return out


def apply_overrides(cfg: SimConfig, args: argparse.Namespace) -> SimConfig:
    """The config with the command line's overrides, validated again.  Raises ConfigError."""
    data: dict[str, Any] = cfg.model_dump(mode="json", exclude_unset=False)
    target = data["target"]
    groups = data["fleet"]
    if args.devices is not None:
        for g, n in zip(groups, _split(args.devices, [g["count"] for g in groups])):
            g["count"] = n
    for g in groups:
        if args.rate is not None:
            g["rate_hz"] = args.rate
        if args.qos is not None:
            g["qos"] = args.qos
        if args.protocol is not None:
            g["protocol"] = None
            g["port"] = None
    if args.protocol is not None:
        target["protocol"] = args.protocol
    if args.target:
        host, sep, port = args.target.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError("--target", [("target", f"expected HOST:PORT, got "
                                                      f"{args.target!r}")])
        target["host"] = host.strip("[]")
        target["port"] = int(port)
    for key, value in (("username", args.username), ("password", args.password),
                       ("mqtt_client", args.mqtt_client),
                       ("credentials_file", args.credentials_file)):
        if value is not None:
            target[key] = value
    if args.password is None and cfg.target.password is not None:
        target["password"] = cfg.target.password
    for key, value in (("seed", args.seed), ("start_ms", args.start_ms),
                       ("connect_rate", args.connect_rate), ("ledger", args.ledger)):
        if value is not None:
            data[key] = value
    if args.duration is not None:
        data["duration_s"] = args.duration if args.duration > 0 else None
    rates: dict[str, float] = {}
    for spec in args.fault:
        kind, sep, rate = spec.partition("=")
        try:
            rates[kind.strip()] = float(rate) if sep else 0.0
        except ValueError:
            raise ConfigError("--fault", [(f"faults.{kind}", f"rate {rate!r} is not a "
                                                            f"number")]) from None
        if not sep:
            raise ConfigError("--fault", [(f"faults.{kind}", "expected KIND=RATE")])
        if kind.strip() not in FAULT_KINDS:
            raise ConfigError("--fault", [(f"faults.{kind}", f"unknown fault kind; known: "
                                                            f"{', '.join(FAULT_KINDS)}")])
        data["faults"][kind.strip()]["rate"] = rates[kind.strip()]
    # validate like a file, but the environment was already applied when it was read
    return parse_config(data, SimConfig, file="command line", environ={})


def format_summary(s: dict[str, Any]) -> str:
    lat = s["ack_latency_ms"]
    lines = [
        f"devices      {s['devices']} ({s['connected']} connected at the end, "
        f"{s['connects']} connects, {s['disconnects']} disconnects)",
        f"duration     {s['duration_s']} s sending (+{s['connect_phase_s']} s connecting)",
        f"readings     {s['generated']} generated, {s['sent']} sent "
        f"({s['send_rate_per_s']}/s), {s['acknowledged']} acknowledged, "
        f"{s['unconfirmed']} unconfirmed, {s['failed_total']} failed",
        f"ack latency  p50 {lat['p50']} ms, p99 {lat['p99']} ms, p99.9 {lat['p999']} ms, "
        f"max {lat['max']} ms",
    ]
    if s["failed"]:
        lines.append("failed       " + ", ".join(f"{k}={v}" for k, v in s["failed"].items()))
    if s["connect_failures"]:
        lines.append("connect err  " + ", ".join(f"{k}={v}" for k, v in
                                                  s["connect_failures"].items()))
    if s["faults"]:
        lines.append("faults       " + ", ".join(f"{k}={v}" for k, v in s["faults"].items()))
    if s.get("cpu_us_per_reading") is not None:
        lines.append(f"cpu          {s['cpu_s']} s, {s['cpu_us_per_reading']} µs per reading")
    if s.get("ledger"):
        lines.append(f"ledger       {s['ledger']}")
    return "\n".join(lines)


async def _progress(stats: RunStats, quiet: bool) -> None:
    """A tqdm bar on stderr, refreshed twice a second, until cancelled."""
    if quiet or not sys.stderr.isatty():
        return
    from tqdm import tqdm

    # a terminal that reports no width (some ptys) would get an empty bar
    size = shutil.get_terminal_size((100, 20))
    bar = tqdm(total=None, unit=" readings", file=sys.stderr, ncols=size.columns or 100,
               nrows=size.lines or 20)
    last = (0, 0, 0)
    loop = asyncio.get_running_loop()
    t_last = loop.time()
    try:
        while True:
            await asyncio.sleep(0.5)
            now = loop.time()
            dt = max(1e-6, now - t_last)
            failed = sum(stats.failed.values())
            cur = (stats.sent, stats.acknowledged, failed)
            rates = [(c - p) / dt for c, p in zip(cur, last)]
            bar.update(cur[0] - last[0])
            bar.set_postfix_str(f"connected {stats.connected}/{stats.devices} "
                                f"sent {rates[0]:.0f}/s ack {rates[1]:.0f}/s "
                                f"failed {rates[2]:.0f}/s", refresh=True)
            last, t_last = cur, now
    finally:
        bar.close()


async def run_fleet(cfg: SimConfig, *, quiet: bool = False) -> dict[str, Any]:
    from firmware_sim.fleet import Fleet

    loop = asyncio.get_running_loop()
    async with Fleet(cfg) as fleet:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fleet.stop)
        progress = loop.create_task(_progress(fleet.stats, quiet), name="sim:progress")
        try:
            await fleet.wait_connected(cfg.connect_wait_s)
            for device_id, port in fleet.serial_ports.items():
                print(f"serial {device_id} {port}", file=sys.stderr, flush=True)
            await fleet.run()
        finally:
            progress.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return fleet.summary()


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config, SimConfig) if args.config else parse_config({}, SimConfig)
        cfg = apply_overrides(cfg, args)
    except ConfigError as exc:
        print(f"fieldlink sim run: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_loop(run_fleet(cfg, quiet=args.quiet), args.loop)
    except Exception as exc:  # noqa: BLE001 - reported, then a non-zero exit
        print(f"fieldlink sim run: the simulator failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(format_summary(summary))
    return 0
