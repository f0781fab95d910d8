"""Command-line pieces shared by the secondary pipelines' commands (`fieldlink cloud clicks`,
`cdc` and `connectors`): the `--config` option and loading that file with its error on
stderr."""

from __future__ import annotations

import argparse
import sys

from edge.config.secondary import SecondaryConfig, load_secondary_config
from edge.errors import ConfigError

DEFAULT_FILE = "config/secondary.yaml"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_FILE, metavar="FILE",
                        help=f"the secondary pipelines' configuration (default: {DEFAULT_FILE})")


def load_or_report(path: str) -> SecondaryConfig | None:
    """The configuration, or None after printing why it is invalid (file, field, reason)."""
    try:
        return load_secondary_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
