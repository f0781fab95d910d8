"""`fieldlink cloud clicks collector|job [-c FILE]`: the click pipeline's two processes.

* `collector` — serves `POST /v1/batch` and `/snippet.js` on `clicks.host:clicks.port`
  (`cloud.clicks.collector`) and produces to `clicks.topic`.
* `job` — the 1-minute window job (`cloud.clicks.job`): results to InfluxDB (when
  `influxdb.enabled`) and to `<archive>/<clicks.archive_dir>/`.

Both run until SIGTERM or SIGINT, then stop cleanly: the collector finishes the requests in
progress; the job finishes its step, checkpoints and commits.  The bus, InfluxDB and the
archive may be down at start: the processes wait for them (capped, jittered backoff) and
`/healthz` says what they wait for.  Exit 1: invalid configuration; 2: bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from cloud.secondary_cli import add_config_argument, load_or_report
from edge.backoff import Backoff
from edge.config.secondary import SecondaryConfig
from edge.logs import setup_logging

__all__ = ["main", "run_collector", "run_job"]

log = logging.getLogger("fieldlink.cloud.clicks")



@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def run_collector(cfg: SecondaryConfig, *, stop: asyncio.Event | None = None) -> int:
    from cloud.bus import open_bus
    from cloud.clicks.collector import ClickCollector, CollectorSettings

    stop = stop or asyncio.Event()
    with _signals(stop):
        async with open_bus(cfg.cloud_config()) as bus, \
                ClickCollector(CollectorSettings.from_config(cfg), bus) as collector:
            log.info("click collector listening", extra={"fields": {
                "url": collector.url, "bus": bus.kind,
                "sources": len(cfg.clicks.write_keys)}})
            await stop.wait()
            log.info("click collector stopping")
    return 0


@contextlib.asynccontextmanager
async def influx_writer(cfg: SecondaryConfig, registry: Any,
                        stop: asyncio.Event) -> AsyncIterator[Any]:
    """A `BatchWriter` on the configured InfluxDB (None when disabled), database ready."""
    if not cfg.influxdb.enabled:
        yield None
        return
    from cloud.errors import SinkUnavailable
    from cloud.sinks.influx.client import InfluxClient, InfluxTarget
    from cloud.sinks.influx.writer import BatchWriter
    from cloud.sinks.metrics import SinkMetrics

    async with InfluxClient(InfluxTarget.from_config(cfg.influxdb)) as client:
        backoff = Backoff(base=0.5, cap=30.0)
        while not stop.is_set():
            try:
                await client.ensure_retention()
                break
            except SinkUnavailable as e:
                delay = backoff.next_delay()
                log.warning("influxdb not ready; retrying", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 2)}})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
        yield BatchWriter(client.write, SinkMetrics("clicks", registry),
                          on_missing=client.ensure_retention)


async def run_job(cfg: SecondaryConfig, *, stop: asyncio.Event | None = None) -> int:
    from prometheus_client import CollectorRegistry

    from cloud.archive.store import ArchiveStore
    from cloud.bus import open_bus
    from cloud.clicks.job import ClickWindowJob, JobSettings
    from cloud.clicks.results import ResultWriter

    stop = stop or asyncio.Event()
    registry = CollectorRegistry()
    with _signals(stop):
        async with open_bus(cfg.cloud_config()) as bus, \
                influx_writer(cfg, registry, stop) as influx:
            if stop.is_set():
                return 0
            writer = ResultWriter(influx=influx, archive=ArchiveStore(cfg.archive_path),
                                  measurement=cfg.clicks.influx_measurement,
                                  archive_dir=cfg.clicks.archive_dir)
            async with ClickWindowJob(JobSettings.from_config(cfg), bus, writer,
                                      registry=registry) as job:
                log.info("click window job running", extra={"fields": {
                    "bus": bus.kind, "group": cfg.clicks.group}})
                await job.wait(stop)
                log.info("click window job stopping")
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud clicks",
        description="Web click tracking: the collector (Segment-style batch API and browser "
                    "snippet) and the 1-minute window job.")
    parser.add_argument("process", choices=("collector", "job"),
                        help="collector: POST /v1/batch -> web_events; job: windows -> "
                             "InfluxDB + archive")
    add_config_argument(parser)
    args = parser.parse_args(list(argv))
    cfg = load_or_report(args.config)
    if cfg is None:
        return 1
    if not cfg.clicks.enabled:
        print(f"{args.config}: clicks.enabled is false", file=sys.stderr)
        return 1
    setup_logging(cfg.logging.level, json_lines=cfg.logging.json_lines)
    runner = run_collector if args.process == "collector" else run_job
    return asyncio.run(runner(cfg))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
