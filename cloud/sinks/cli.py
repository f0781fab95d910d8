"""`fieldlink cloud sink influxdb|parquet [--config FILE]`: run one sink until SIGTERM/SIGINT.

    fieldlink cloud sink influxdb --config config/cloud.yaml
    fieldlink cloud sink parquet  --config config/cloud.yaml --group archive-b --http-port 0

Configuration used (cloud.yaml): `kafka.*` (bus, topics, dead-letter topic), `influxdb.*`
(InfluxDB sink), `archive.*` (Parquet sink), `http.*` (`/metrics`, `/healthz`), `logging.*`.
Options:

    --group ID        consumer group (default fieldlink-sink-influxdb / fieldlink-sink-parquet);
                      processes with the same group share the partitions
    --http-port N     port of /metrics and /healthz (default: http.port of the config; 0 picks
                      a free one; it is logged).  Each process on a host needs its own.

SIGTERM or SIGINT: flush what is buffered, commit, leave the group, exit 0.  Exit 1: the
configuration is invalid, the chosen store is disabled, or the store refuses the credentials;
2: bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from cloud.bus import TopicSpec, open_bus
from cloud.bus.base import Bus
from cloud.errors import SinkMisconfigured
from cloud.sinks.base import Sink
from cloud.sinks.deadletters import DeadLetters
from cloud.sinks.metrics import SinkMetrics
from cloud.sinks.service import SinkService, SinkSettings
from edge.config.cloud import CloudConfig, load_cloud_config
from edge.errors import ConfigError
from edge.logs import setup_logging

__all__ = ["KINDS", "build_service", "main", "run"]

log = logging.getLogger("fieldlink.cloud.sinks")

KINDS = ("influxdb", "parquet")
DEFAULT_FILE = "config/cloud.yaml"


def settings_for(cfg: CloudConfig, kind: str, *, group: str | None = None,
                 http_port: int | None = None) -> SinkSettings:
    k = cfg.kafka
    t = k.topics
    read = [t.readings, t.aggregates, t.alerts] if kind == "influxdb" else [t.readings]
    specs = [TopicSpec(x.name, x.partitions, k.replication_factor)
             for x in (*read, t.deadletter)]
    bus_compresses = bool(k.bootstrap_servers) and k.compression != "none"
    return SinkSettings(
        group_id=group or f"fieldlink-sink-{kind}",
        topics=tuple(x.name for x in read), deadletter_topic=t.deadletter.name,
        topic_specs=tuple(specs), http_enabled=cfg.http.enabled, http_host=cfg.http.host,
        http_port=cfg.http.port if http_port is None else http_port,
        record_compression="none" if bus_compresses else "zstd")


def build_service(cfg: CloudConfig, kind: str, bus: Bus, *, group: str | None = None,
                  http_port: int | None = None, **overrides: Any) -> SinkService:
    """The service `fieldlink cloud sink <kind>` runs (tests and benchmarks build it too).

    `overrides` replace SinkSettings fields (poll_ms, max_records, consumer_options, ...).
    """
    import dataclasses

    if kind not in KINDS:
        raise ValueError(f"unknown sink {kind!r}; use one of {KINDS}")
    settings = dataclasses.replace(settings_for(cfg, kind, group=group, http_port=http_port),
                                   **overrides)
    metrics = SinkMetrics(kind)
    deadletters = DeadLetters(bus.producer(), settings.deadletter_topic, f"sink-{kind}",
                              metrics, compression=settings.record_compression)
    sink: Sink
    if kind == "influxdb":
        from cloud.sinks.influx.client import InfluxTarget
        from cloud.sinks.influx.sink import InfluxSink

        if not cfg.influxdb.enabled:
            raise ConfigError("influxdb.enabled", [("influxdb.enabled", "is false: the "
                                                    "InfluxDB sink has nothing to write to")])
        sink = InfluxSink(InfluxTarget.from_config(cfg.influxdb), deadletters, metrics,
                          batch_size=cfg.influxdb.batch_size,
                          flush_interval_s=cfg.influxdb.flush_interval_ms / 1000)
    else:
        from cloud.archive.store import ArchiveStore
        from cloud.sinks.parquet.sink import ParquetSink

        sink = ParquetSink(ArchiveStore(cfg.archive_path), deadletters, metrics,
                           roll_bytes=int(cfg.archive.roll_bytes),
                           roll_seconds=cfg.archive.roll_seconds)
    return SinkService(sink, bus, settings, metrics=metrics, deadletters=deadletters)


async def run(cfg: CloudConfig, kind: str, *, group: str | None = None,
              http_port: int | None = None, stop: asyncio.Event | None = None) -> int:
    """Run the sink until `stop` is set (by default: SIGTERM or SIGINT)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_bus(cfg) as bus:
            service = build_service(cfg, kind, bus, group=group, http_port=http_port)
            try:
                async with service:
                    log.info("sink started", extra={"fields": {
                        "sink": kind, "group": service.settings.group_id,
                        "http": service.url, "bus": bus.kind}})
                    await service.wait(stop)
                    log.info("sink stopping", extra={"fields": {"sink": kind}})
            except SinkMisconfigured as e:
                log.error("sink stopped: the store refuses this configuration", extra={
                    "fields": {"sink": kind, "error": str(e)}})
                return 1
            except OSError as e:
                # e.g. the /metrics port is taken by another process
                log.error("sink cannot start", extra={"fields": {"sink": kind,
                                                                  "error": repr(e)}})
                return 1
            except Exception:
                log.exception("sink failed", extra={"fields": {"sink": kind}})
                return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("sink stopped", extra={"fields": {"sink": kind}})
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud sink",
        description="Consume the bus and write InfluxDB (influxdb) or the Parquet archive "
                    "(parquet); offsets are committed only once the store has the data.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("-c", "--config", default=DEFAULT_FILE, metavar="FILE",
                        help=f"the cloud configuration (default: {DEFAULT_FILE})")
    parser.add_argument("--group", metavar="ID",
                        help="consumer group (default: fieldlink-sink-<kind>)")
    parser.add_argument("--http-port", type=int, metavar="N",
                        help="port of /metrics and /healthz (default: http.port; 0: any)")
    args = parser.parse_args(list(argv))
    try:
        cfg = load_cloud_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.kind == "influxdb" and not cfg.influxdb.enabled:
        print(f"{args.config}: influxdb.enabled is false: nothing for the InfluxDB sink to do",
              file=sys.stderr)
        return 1
    setup_logging(cfg.logging.level, json_lines=cfg.logging.json_lines)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on the cloud side
        return asyncio.run(run(cfg, args.kind, group=args.group, http_port=args.http_port))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(cfg, args.kind, group=args.group, http_port=args.http_port))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
