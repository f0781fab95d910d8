"""`fieldlink gateway check-config [FILE]`: validate a gateway configuration and exit.

Prints `OK: <file>` and a one-line summary (exit 0), or every problem as
`<file>: <key.path>: <reason>` on stderr (exit 1).  The environment is applied as the running
gateway would apply it, so a secret supplied as `FIELDLINK_UPLINK__GATEWAY_SECRET` counts.

`check(path)` is the whole verdict and the place to add checks of files the configuration
names: each check appends lines in the same format.  The rules file (`alerts.rules_file`) is
loaded with `edge.rules.load_rules`; its problems are reported against that file
(`rules.yaml: rules[2].condition: unknown aggregate 'p96' ...`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.config.gateway import GatewayConfig, load_gateway_config
from edge.errors import ConfigError
from edge.rules import load_rules

DEFAULT_FILE = "config/gateway.yaml"


def check(path: str | Path) -> list[str]:
    """Every problem of the gateway configuration at `path` as `<file>: <key>: <reason>`
    lines; empty when it is valid and the files it names are present."""
    try:
        cfg = load_gateway_config(path)
    except ConfigError as exc:
        return [f"{exc.file}: {key or '<root>'}: {why}" for key, why in exc.problems]
    return [f"{path}: {key}: {why}" for key, why in missing_files(cfg)] + rules_problems(cfg)


def rules_problems(cfg: GatewayConfig) -> list[str]:
    """Problems of the rules file the configuration names (`alerts.rules_file`), as
    `<rules file>: <key.path>: <reason>` lines — what `edge.rules.load_rules` would refuse at
    start or on SIGHUP.  An absent file is `missing_files`' business."""
    rules = cfg.alerts.rules_file
    if rules is None or not rules.is_file():
        return []
    try:
        load_rules(rules)
    except ConfigError as exc:
        return [f"{exc.file}: {key or '<root>'}: {why}" for key, why in exc.problems]
    return []


def missing_files(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """Files the configuration needs that do not exist, as (key path, reason)."""
    needed: list[tuple[str, Path | None]] = []
    tls = cfg.mqtt.tls
    if cfg.mqtt.enabled and tls.enabled:
        needed += [("mqtt.tls.certfile", tls.certfile), ("mqtt.tls.keyfile", tls.keyfile),
                   ("mqtt.tls.cafile", tls.cafile)]
    # the default rules file may be absent (no local rules); a named one must exist
    if "rules_file" in cfg.alerts.model_fields_set:
        needed.append(("alerts.rules_file", cfg.alerts.rules_file))
    return [(key, f"file not found: {path}") for key, path in needed
            if path is not None and not path.is_file()]


def summary(cfg: GatewayConfig) -> str:
    mqtt, up = cfg.mqtt, cfg.uplink
    parts = [f"gateway {cfg.gateway.id}"]
    if mqtt.enabled:
        extras = [f"tls :{mqtt.tls.port}" if mqtt.tls.enabled else "",
                  f"websocket :{mqtt.websocket.port}" if mqtt.websocket.enabled else "",
                  "ANONYMOUS" if mqtt.allow_anonymous else ""]
        extra = ", ".join(e for e in extras if e)
        parts.append(f"mqtt {mqtt.host}:{mqtt.port}" + (f" ({extra})" if extra else ""))
    if cfg.coap.enabled:
        parts.append(f"coap {cfg.coap.host}:{cfg.coap.port}")
    parts.append(f"{len(cfg.serial.ports)} serial port(s)")
    parts.append(f"{len(cfg.devices.registry)} registered device(s), unknown ones "
                 f"{cfg.devices.unknown_devices}ed")
    parts.append(f"buffer {cfg.buffer_path} ({cfg.buffer.max_bytes / 2**20:g} MiB, "
                 f"{cfg.buffer.synchronous})")
    parts.append(f"uplink {up.url}" if up.enabled else "uplink disabled")
    parts.append(f"{len(cfg.alerts.webhooks)} webhook(s)")
    if cfg.http.enabled:
        parts.append(f"http {cfg.http.host}:{cfg.http.port}")
    return "; ".join(parts)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink gateway check-config",
        description="Validate a gateway configuration file: YAML syntax, unknown keys, value "
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
    print(summary(load_gateway_config(args.file)))
    return 0
