"""`fieldlink cloud …`: each subcommand is its own module, imported only when asked for."""

from __future__ import annotations

from collections.abc import Sequence

from edge.cli import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("cloud.checkconfig:main", "validate cloud.yaml and exit"),
    "ingest": ("cloud.ingest.app:main", "receive signed gateway batches and produce them to "
                                        "the bus"),
    "sink": ("cloud.sinks.cli:main", "consume the bus into InfluxDB (influxdb) or the Parquet "
                                     "archive (parquet)"),
    "archive": ("cloud.archive.cli:main", "Parquet archive upkeep: compact, expire, stats"),
    "query": ("cloud.archive.query:main", "run SQL (DuckDB) over the Parquet archive"),
    "web": ("cloud.web.app:main", "serve the dashboard (fleet, charts, live alerts); "
                                  "`web users add|remove|list` manages its accounts"),
    "clicks": ("cloud.clicks.app:main", "web click tracking: the collector (Segment-style "
                                        "batch API, /snippet.js) or the 1-minute window job"),
    "cdc": ("cloud.cdc.app:main", "PostgreSQL change data capture: connector, warehouse sink, "
                                  "drop-slot"),
    "connectors": ("cloud.connectors.app:main", "SaaS connectors: GitHub pollers and Stripe "
                                                "webhooks into the bus"),
}


def main(argv: Sequence[str]) -> int:
    return dispatch("fieldlink cloud", "The cloud tier: ingest, sinks, archive, dashboards.",
                    COMMANDS, argv)
