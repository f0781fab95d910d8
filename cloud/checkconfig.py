"""`fieldlink cloud check-config [FILE]`: validate a cloud configuration and exit.

Prints `OK: <file>` and a one-line summary (exit 0), or every problem as
`<file>: <key.path>: <reason>` on stderr (exit 1).  The environment is applied as the running
services would apply it (`FIELDLINK_INGEST__GATEWAYS`, `FIELDLINK_INFLUXDB__TOKEN`).

`check(path)` is the whole verdict; further checks append lines in the same format.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.config.cloud import CloudConfig, load_cloud_config
from edge.errors import ConfigError

DEFAULT_FILE = "config/cloud.yaml"


def check(path: str | Path) -> list[str]:
    """Every problem of the cloud configuration at `path` as `<file>: <key>: <reason>`
    lines; empty when it is valid and the files it names are present."""
    try:
        cfg = load_cloud_config(path)
    except ConfigError as exc:
        return [f"{exc.file}: {key or '<root>'}: {why}" for key, why in exc.problems]
    return [f"{path}: {key}: {why}" for key, why in missing_files(cfg)]


def missing_files(cfg: CloudConfig) -> list[tuple[str, str]]:
    """Files the configuration needs that do not exist, as (key path, reason)."""
    tls = cfg.ingest.tls
    needed = [("ingest.tls.certfile", tls.certfile), ("ingest.tls.keyfile", tls.keyfile),
              ("ingest.tls.cafile", tls.cafile)] if tls.enabled else []
    return [(key, f"file not found: {path}") for key, path in needed
            if path is not None and not path.is_file()]


def summary(cfg: CloudConfig) -> str:
    ingest, kafka, influx = cfg.ingest, cfg.kafka, cfg.influxdb
    parts = [f"ingest {ingest.host}:{ingest.port} ({len(ingest.gateways)} gateway(s)"
             f"{', tls' if ingest.tls.enabled else ''})"]
    where = "embedded bus (no Kafka)" if kafka.embedded else "kafka " + ",".join(kafka.bootstrap())
    parts.append(f"{where}, compression "
                 f"{kafka.compression}, key {kafka.key}")
    if influx.enabled:
        where = (f"database {influx.database}" if influx.api == "v1"
                 else f"org {influx.org} bucket {influx.bucket}")
        parts.append(f"influxdb {influx.api} {influx.url} {where}, retention {influx.retention}")
    else:
        parts.append("influxdb disabled")
    parts.append(f"archive {cfg.archive_path}")
    if cfg.web.enabled:
        parts.append(f"web {cfg.web.host}:{cfg.web.port}")
    if cfg.http.enabled:
        parts.append(f"http {cfg.http.host}:{cfg.http.port}")
    return "; ".join(parts)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink cloud check-config",
        description="Validate a cloud configuration file: YAML syntax, unknown keys, value "
                    "ranges, cross-key rules and the files it names.  FIELDLINK_* secret "
                    "variables of the environment are applied as at run time.",
        epilog="Exit status: 0 valid, 1 problems found (each printed to stderr as "
               "'<file>: <key.path>: <reason>'), 2 bad usage.")
    parser.add_argument("file", nargs="?", default=DEFAULT_FILE, metavar="FILE",
                        help=f"the configuration file (default: {DEFAULT_FILE})")
    args = parser.parse_args(list(argv))
    problems = check(args.file)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    print(f"OK: {args.file}")
    print(summary(load_cloud_config(args.file)))
    return 0
