"""Real services for benchmarks: a thin wrapper over ``tests/integration/services.py``.

Benchmarks run as scripts (``.venv/bin/python tests/bench/NAME.py``), outside pytest, so they
use ``ensure`` rather than the fixtures: it returns the endpoint, starting the service with
``deploy/local/services/<name>.sh start`` if needed, or raises ``ServiceUnavailable``::

    from _services import ensure, stop_started

    kafka = ensure("kafka")          # kafka.bootstrap_servers == "127.0.0.1:19092"
    try:
        ...
    finally:
        stop_started()               # only what this process started

``python tests/bench/_services.py [NAME...]`` prints what answers at each endpoint.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    # Loaded by path: tests/ is not a package, and benchmarks must not depend on sys.path order.
    path = Path(__file__).resolve().parents[1] / "integration" / "services.py"
    existing = sys.modules.get("services")
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing
    spec = importlib.util.spec_from_file_location("services", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


_services = _load()

SERVICES: tuple[str, ...] = _services.SERVICES
ServiceUnavailable = _services.ServiceUnavailable
ensure = _services.ensure
endpoint = _services.endpoint
describe = _services.describe
stop_started = _services.stop_started
Kafka = _services.Kafka
InfluxDB = _services.InfluxDB
Postgres = _services.Postgres
Mosquitto = _services.Mosquitto

__all__ = [
    "SERVICES",
    "InfluxDB",
    "Kafka",
    "Mosquitto",
    "Postgres",
    "ServiceUnavailable",
    "describe",
    "endpoint",
    "ensure",
    "stop_started",
]

if __name__ == "__main__":
    for name in sys.argv[1:] or SERVICES:
        print(describe(name))
