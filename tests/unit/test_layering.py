"""The import direction is part of the architecture: edge is shared and pure; gateway, cloud and
firmware_sim import edge and never each other.  Checked statically over every module."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "gateway", "cloud", "firmware_sim")
#: edge is pure: no sockets, servers or SQLite
EDGE_FORBIDDEN = {"socket", "sqlite3", "asyncio", "aiohttp", "amqtt", "aiocoap", "aiokafka",
                  "serial", "http", "urllib", "selectors", "ssl", "influxdb_client", "pyarrow",
                  "duckdb", "paho"}


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_has_modules() -> None:
    for package in PACKAGES:
        assert _modules(package), package


def test_packages_import_only_edge() -> None:
    problems = []
    for package in PACKAGES:
        for path in _modules(package):
            for lineno, name in _imports(path):
                root = name.split(".")[0]
                if root in PACKAGES and root != package and root != "edge":
                    problems.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
                if package == "edge" and root in PACKAGES and root != "edge":
                    problems.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
    assert not problems, "\n".join(problems)


def test_edge_is_pure() -> None:
    problems = []
    for path in _modules("edge"):
        for lineno, name in _imports(path):
            if name.split(".")[0] in EDGE_FORBIDDEN:
                problems.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
    assert not problems, "\n".join(problems)


def test_checker_catches_a_violation(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import gateway.buffer\nfrom cloud import ingest\n")
    names = [name for _, name in _imports(bad)]
    assert names == ["gateway.buffer", "cloud"]
