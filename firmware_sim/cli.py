"""`fieldlink sim …`: each subcommand is its own module, imported only when asked for."""

from __future__ import annotations

from collections.abc import Sequence

from edge.cli import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("firmware_sim.run:main", "run a simulated sensor fleet against a gateway"),
}


def main(argv: Sequence[str]) -> int:
    return dispatch("fieldlink sim", "Simulated sensor fleets with fault injection.",
                    COMMANDS, argv)
