"""`fieldlink cloud connectors run|cursors [-c FILE]`: SaaS data into the bus.

* `run` — the GitHub pollers and the Stripe webhook receiver configured under `connectors`
  (`cloud.connectors.service`), until SIGTERM/SIGINT; then stop cleanly (deliveries in
  progress are answered, each poll loop ends its current request).
* `cursors` — print every saved cursor (what the next round resumes from) and exit.

Exit 1: invalid configuration; 2: bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from cloud.secondary_cli import add_config_argument, load_or_report
from edge.config.secondary import SecondaryConfig
from edge.logs import setup_logging

__all__ = ["main", "run"]

log = logging.getLogger("fieldlink.cloud.connectors")



async def run(cfg: SecondaryConfig, *, stop: asyncio.Event | None = None) -> int:
    from cloud.bus import open_bus
    from cloud.connectors.service import ConnectorService

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_bus(cfg.cloud_config()) as bus, \
                ConnectorService.from_config(cfg, bus) as service:
            log.info("connectors running", extra={"fields": {
                "url": service.url, "pollers": [p.poller.name for p in service.loops],
                "receivers": [r.path for r in service.receivers], "bus": bus.kind}})
            await stop.wait()
            log.info("connectors stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def cursors(cfg: SecondaryConfig) -> int:
    from cloud.connectors.store import ConnectorStore

    store = ConnectorStore(cfg.connectors_state_file)
    try:
        for scope in store.scopes():
            print(f"{scope}\t{json.dumps(store.cursor(scope), sort_keys=True)}")
    finally:
        store.close()
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud connectors",
        description="SaaS connectors: incremental REST pollers and signed webhooks into the "
                    "bus, with cursors that survive restarts.")
    parser.add_argument("action", choices=("run", "cursors"),
                        help="run: poll and receive until SIGTERM; cursors: show the saved "
                             "cursors")
    add_config_argument(parser)
    args = parser.parse_args(list(argv))
    cfg = load_or_report(args.config)
    if cfg is None:
        return 1
    if args.action == "cursors":
        return cursors(cfg)
    setup_logging(cfg.logging.level, json_lines=cfg.logging.json_lines)
    return asyncio.run(run(cfg))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
