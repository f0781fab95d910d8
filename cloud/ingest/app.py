"""`fieldlink cloud ingest [--config FILE]`: run the ingest service until SIGTERM/SIGINT.

Opens the bus the configuration names (Kafka, or the embedded single-machine bus when
`kafka.bootstrap_servers` is empty), then serves `POST /v1/batches`, `/healthz`, `/metrics`
and `/openapi.json` on `ingest.host:ingest.port`.  The bus may be down at start: the service
answers 503 until it is reachable and the topics exist.

SIGTERM or SIGINT: stop accepting, let requests in progress finish (their batches are
acknowledged or answered 503), close the ledger, flush and close the producer, exit 0.
Exit 1: the configuration is invalid (every problem on stderr); 2: bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from cloud.bus import open_bus
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings
from edge.config.cloud import CloudConfig, load_cloud_config
from edge.errors import ConfigError
from edge.logs import setup_logging

__all__ = ["main", "run"]

log = logging.getLogger("fieldlink.cloud.ingest")

DEFAULT_FILE = "config/cloud.yaml"


async def run(cfg: CloudConfig, *, stop: asyncio.Event | None = None) -> int:
    """Serve until `stop` is set (by default: on SIGTERM or SIGINT)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        settings = IngestSettings.from_config(cfg)
        async with open_bus(cfg) as bus, IngestService(settings, bus) as service:
            _tune_gc()
            log.info("ingest listening", extra={"fields": {
                "url": service.url, "bus": bus.kind, "gateways": len(settings.secrets)}})
            await stop.wait()
            log.info("ingest stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _tune_gc() -> None:
    """A batch that takes the reading path allocates (and frees) a Reading per reading, and
    aiohttp / aiokafka allocate per request; with the default gen-0 threshold of 700 the
    collector would run every few requests and re-examine the heap each time.  The start-up
    heap is frozen out of collections, and gen 0 collects every 50,000 allocations (reference
    cycles are rare here: refcounting frees almost everything)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud ingest",
        description="Receive signed gateway batches over HTTP(S) and produce them to the "
                    "message bus (Kafka, or the embedded single-machine bus).")
    parser.add_argument("-c", "--config", default=DEFAULT_FILE, metavar="FILE",
                        help=f"the cloud configuration (default: {DEFAULT_FILE})")
    args = parser.parse_args(list(argv))
    try:
        cfg = load_cloud_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    setup_logging(cfg.logging.level, json_lines=cfg.logging.json_lines)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on the cloud side
        return asyncio.run(run(cfg))
    # the event loop's own work per request (socket reads and writes, callbacks) is a
    # tenth of ingest's CPU with asyncio's loop; uvloop does it in C
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(cfg))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
