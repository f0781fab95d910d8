"""`fieldlink sim …`: each subcommand is its own module, imported only when asked for."""

from __future__ import annotations

from collections.abc import Sequence

from edge.cli import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("firmware_sim.run:main", "run a simulated sensor fleet against a gateway"),
    "ledger": ("firmware_sim.ledger_cli:main", "summarise a ledger written by `sim run`"),
}


def main(argv: Sequence[str]) -> int:
    return dispatch("fieldlink sim", "Simulated sensor fleets with fault injection.",
                    COMMANDS, argv)
