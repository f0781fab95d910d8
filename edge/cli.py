"""The `fieldlink` command: a thin dispatcher over subcommand plugins.

Each subcommand lives in its own package and registers under the `fieldlink.commands` entry
point group (see pyproject.toml).  Only the module of the subcommand asked for is imported,
so `fieldlink gateway --help` works on a Raspberry Pi that installed the `gateway` extra only.
A subcommand plugin is a callable `main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import metadata

#: shown by `fieldlink --help`; the plugin itself owns its detailed help
DESCRIPTIONS = {
    "gateway": "run the edge gateway (MQTT/CoAP/serial ingest, buffer, alerts, uplink)",
    "cloud": "run the cloud tier (ingest, sinks, archive, dashboards)",
    "sim": "run a simulated sensor fleet with fault injection",
    "provision": "provision Raspberry Pi gateway images",
}

#: fallbacks when the distribution's entry points are not installed (running from a checkout)
_FALLBACK = {
    "gateway": "gateway.cli:main",
    "cloud": "cloud.cli:main",
    "sim": "firmware_sim.cli:main",
    "provision": "gateway.provision.cli:main",
}


def _usage() -> str:
    lines = [
        "usage: fieldlink COMMAND [ARGS...]",
        "",
        "fieldlink: an edge-to-cloud IoT ingestion appliance.",
        "",
        "commands:",
    ]
    for name, text in DESCRIPTIONS.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", "Run `fieldlink COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _load(name: str) -> Callable[[list[str]], int]:
    target = None
    for ep in metadata.entry_points(group="fieldlink.commands"):
        if ep.name == name:
            target = ep
            break
    if target is not None:
        return target.load()  # type: ignore[no-any-return]
    import importlib

    module, _, attr = _FALLBACK[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from edge import __version__

        print(f"fieldlink {__version__}")
        return 0
    name = args[0]
    if name not in DESCRIPTIONS:
        print(f"fieldlink: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        command = _load(name)
    except ImportError as exc:
        extra = {"sim": "sim", "provision": "gateway"}.get(name, name)
        print(
            f"fieldlink {name}: a dependency is not installed ({exc}).\n"
            f"Install it with: pip install 'fieldlink[{extra}]'",
            file=sys.stderr,
        )
        return 2
    return int(command(args[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def dispatch(prog: str, about: str, table: dict[str, tuple[str, str]],
             argv: Sequence[str]) -> int:
    """Second-level dispatcher used by each package's cli module.

    `table` maps a subcommand to ("module:function", one-line help).  Like the top level, only
    the chosen module is imported.  The function receives the remaining argv and returns the
    exit code.
    """
    import importlib

    args = list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        lines = [f"usage: {prog} SUBCOMMAND [ARGS...]", "", about, "", "subcommands:"]
        lines += [f"  {name:<16} {text}" for name, (_, text) in table.items()]
        lines += ["", f"Run `{prog} SUBCOMMAND --help` for its options."]
        print("\n".join(lines))
        return 0
    name = args[0]
    if name not in table:
        print(f"{prog}: unknown subcommand {name!r}; see `{prog} --help`", file=sys.stderr)
        return 2
    module, _, attr = table[name][0].partition(":")
    func = getattr(importlib.import_module(module), attr)
    return int(func(args[1:]) or 0)
