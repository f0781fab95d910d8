"""`fieldlink cloud cdc connector|sink|drop-slot [-c FILE]`: PostgreSQL change data capture.

* `connector` — snapshot, then stream the `cdc.tables` of the source database into
  `cdc.<server>.<schema>.<table>` topics (`cloud.cdc.connector`).
* `sink` — merge those topics into the warehouse (`cdc.sink`: duckdb or postgres;
  `cloud.cdc.sink`).
* `drop-slot` — drop the replication slot and forget the connector state (the next
  `connector` run snapshots again).  Run it when retiring the pipeline: a slot nobody reads
  keeps the server's WAL forever.

`connector` and `sink` run until SIGTERM/SIGINT and stop cleanly (the current chunk or batch
is finished and confirmed/committed).  Exit 1: invalid configuration (or, for the connector,
a configured table that is missing or has no primary key); 2: bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence

from cloud.secondary_cli import add_config_argument, load_or_report
from edge.config.secondary import SecondaryConfig
from edge.errors import ConfigError
from edge.logs import setup_logging

__all__ = ["main", "run_connector", "run_sink"]

log = logging.getLogger("fieldlink.cloud.cdc")



@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def run_connector(cfg: SecondaryConfig, *, stop: asyncio.Event | None = None) -> int:
    from cloud.bus import open_bus
    from cloud.cdc.connector import CdcConnector, ConnectorSettings

    stop = stop or asyncio.Event()
    with _signals(stop):
        async with open_bus(cfg.cloud_config()) as bus, \
                CdcConnector(ConnectorSettings.from_config(cfg), bus) as connector:
            log.info("cdc connector running", extra={"fields": {
                "slot": cfg.cdc.slot, "tables": list(cfg.cdc.tables),
                "bus": bus.kind}})
            try:
                await connector.wait(stop)
            except ConfigError as e:
                print(str(e), file=sys.stderr)
                return 1
            log.info("cdc connector stopping")
    return 0


async def run_sink(cfg: SecondaryConfig, *, stop: asyncio.Event | None = None) -> int:
    import psycopg2

    from cloud.bus import open_bus
    from cloud.cdc.sink import CdcSink, SinkSettings
    from cloud.cdc.warehouse import DuckDBTarget, PostgresTarget, Target

    c = cfg.cdc

    def target() -> Target:
        if c.sink == "postgres":
            assert c.postgres_dsn is not None
            return PostgresTarget(c.postgres_dsn.get_secret_value(), schema=c.sink_schema)
        return DuckDBTarget(cfg.cdc_duckdb_path, schema=c.sink_schema)

    stop = stop or asyncio.Event()
    with _signals(stop):
        async with open_bus(cfg.cloud_config()) as bus, \
                CdcSink(SinkSettings.from_config(cfg), bus, target,
                        retriable=(OSError, psycopg2.OperationalError,
                                   psycopg2.InterfaceError)) as sink:
            log.info("cdc sink running", extra={"fields": {"target": c.sink, "bus": bus.kind}})
            await sink.wait(stop)
            log.info("cdc sink stopping")
    return 0


def drop_slot(cfg: SecondaryConfig) -> int:
    from cloud.cdc.source import Catalog
    from cloud.cdc.state import ConnectorState

    catalog = Catalog(cfg.cdc.dsn())
    try:
        dropped = catalog.drop_slot(cfg.cdc.slot)
    finally:
        catalog.close()
    state = ConnectorState(cfg.cdc_state_file, cfg.cdc.slot)
    state.reset()
    state.close()
    print(f"slot {cfg.cdc.slot}: {'dropped' if dropped else 'did not exist'}; state reset")
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud cdc",
        description="PostgreSQL change data capture: Debezium-envelope change events on the "
                    "bus, merged into a warehouse.")
    parser.add_argument("process", choices=("connector", "sink", "drop-slot"),
                        help="connector: database -> topics; sink: topics -> warehouse; "
                             "drop-slot: retire the slot and the state")
    add_config_argument(parser)
    args = parser.parse_args(list(argv))
    cfg = load_or_report(args.config)
    if cfg is None:
        return 1
    if not cfg.cdc.enabled:
        print(f"{args.config}: cdc.enabled is false: nothing to capture", file=sys.stderr)
        return 1
    setup_logging(cfg.logging.level, json_lines=cfg.logging.json_lines)
    if args.process == "drop-slot":
        return drop_slot(cfg)
    runner = run_connector if args.process == "connector" else run_sink
    return asyncio.run(runner(cfg))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
