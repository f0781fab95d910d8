"""`fieldlink gateway …`: each subcommand is its own module, imported only when asked for."""

from __future__ import annotations

from collections.abc import Sequence

from edge.cli import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("gateway.app:main", "run the gateway (broker, CoAP, serial, buffer, alerts, uplink)"),
    "check-config": ("gateway.checkconfig:main", "validate gateway.yaml / rules.yaml and exit"),
    "devices": ("gateway.auth.cli:main", "manage sensor and operator credentials"),
    "queue": ("gateway.buffer.cli:main", "inspect and manage the store-and-forward buffer"),
    "alerts": ("gateway.alerts.cli:main", "list / acknowledge alerts"),
}


def main(argv: Sequence[str]) -> int:
    return dispatch("fieldlink gateway", "The edge gateway a Raspberry Pi runs.", COMMANDS, argv)
