"""Fixtures for integration tests: real services on 127.0.0.1.

Every test under tests/integration gets the ``integration`` marker. The session-scoped fixtures
``kafka``, ``influxdb``, ``postgres`` and ``mosquitto`` return the endpoint objects of
``services.py`` (``kafka.bootstrap_servers``, ``influxdb.url``/``.token``/``.org``,
``postgres.dsn``, ``mosquitto.host``/``.port``), starting the service if it is not up. A missing
service skips the test locally and fails it under ``CI=true``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import services  # noqa: E402


def pytest_report_header(config: pytest.Config) -> list[str]:
    # Which servers the run talks to (notably the influxd version), without starting any.
    return [f"services: {'; '.join(services.describe(name) for name in services.SERVICES)}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, so only ours are marked.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _stop_services_started_here() -> Iterator[None]:
    yield
    services.stop_started()


@pytest.fixture(scope="session")
def kafka() -> services.Kafka:
    return services.require("kafka")


@pytest.fixture(scope="session")
def influxdb() -> services.InfluxDB:
    return services.require("influxdb")


@pytest.fixture(scope="session")
def postgres() -> services.Postgres:
    return services.require("postgres")


@pytest.fixture(scope="session")
def mosquitto() -> services.Mosquitto:
    return services.require("mosquitto")
