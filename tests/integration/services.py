"""Where fieldlink's real test services are, and making sure they are up.

Integration tests and benchmarks import this module (it is not part of the product). Each
service has one function returning its endpoint, read from environment variables with the
defaults that ``deploy/local/services/*.sh`` use:

=========  ==============================  ========================================
service    default                         environment
=========  ==============================  ========================================
kafka      127.0.0.1:19092                 FIELDLINK_KAFKA_HOST, FIELDLINK_KAFKA_PORT
influxdb   http://127.0.0.1:18086          FIELDLINK_INFLUXDB_HOST, FIELDLINK_INFLUXDB_PORT
postgres   127.0.0.1:15432 fieldlink/...   FIELDLINK_POSTGRES_{HOST,PORT,USER,PASSWORD,DB}
mosquitto  127.0.0.1:11883                 FIELDLINK_MOSQUITTO_HOST, FIELDLINK_MOSQUITTO_PORT
=========  ==============================  ========================================

``ensure(name)`` checks the service answers at the protocol level (the probes of
``deploy/local/services/probe.py``); if it does not, it runs ``deploy/local/services/<name>.sh
start`` once per process (so ``pytest tests/integration`` works on its own) and checks again.
It returns the endpoint or raises ``ServiceUnavailable`` with the reason and the log to read.

``require(name)`` is the pytest flavour: on ``ServiceUnavailable`` it FAILS the test when
``CI=true`` (a missing service must never turn into a green run) and skips it otherwise.

Services this process started are stopped by ``stop_started()`` (the integration conftest calls
it at session end) unless ``FIELDLINK_KEEP_SERVICES=1``; services that were already running are
left alone.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, overload

__all__ = [
    "SERVICES",
    "InfluxDB",
    "Kafka",
    "Mosquitto",
    "Postgres",
    "ServiceUnavailable",
    "describe",
    "ensure",
    "endpoint",
    "influxdb",
    "kafka",
    "mosquitto",
    "postgres",
    "require",
    "stop_started",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "deploy" / "local" / "services"
LOG_ROOT = Path(os.environ.get("FIELDLINK_VAR", REPO_ROOT / "var")) / "services"
SERVICES = ("kafka", "influxdb", "postgres", "mosquitto")


class ServiceUnavailable(RuntimeError):
    """The service neither answered nor could be started; the message says why and where."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _port(name: str, default: int) -> int:
    return int(_env(name, str(default)))


@dataclass(frozen=True)
class Kafka:
    host: str
    port: int

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class InfluxDB:
    host: str
    port: int
    # Auth is disabled on the test server; the v1-compatible v2 API still wants a token of the
    # form "user:password" and the org "-". Buckets are "database/retention_policy".
    token: str = "fieldlink:fieldlink"
    org: str = "-"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def conninfo(self) -> str:
        """libpq key=value form (psycopg.connect accepts either)."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={self.database}"
        )


@dataclass(frozen=True)
class Mosquitto:
    host: str
    port: int


def kafka() -> Kafka:
    return Kafka(_env("FIELDLINK_KAFKA_HOST", "127.0.0.1"), _port("FIELDLINK_KAFKA_PORT", 19092))


def influxdb() -> InfluxDB:
    return InfluxDB(
        _env("FIELDLINK_INFLUXDB_HOST", "127.0.0.1"), _port("FIELDLINK_INFLUXDB_PORT", 18086)
    )


def postgres() -> Postgres:
    return Postgres(
        host=_env("FIELDLINK_POSTGRES_HOST", "127.0.0.1"),
        port=_port("FIELDLINK_POSTGRES_PORT", 15432),
        user=_env("FIELDLINK_POSTGRES_USER", "fieldlink"),
        password=_env("FIELDLINK_POSTGRES_PASSWORD", "fieldlink"),
        database=_env("FIELDLINK_POSTGRES_DB", "fieldlink"),
    )


def mosquitto() -> Mosquitto:
    return Mosquitto(
        _env("FIELDLINK_MOSQUITTO_HOST", "127.0.0.1"), _port("FIELDLINK_MOSQUITTO_PORT", 11883)
    )


_ENDPOINTS = {"kafka": kafka, "influxdb": influxdb, "postgres": postgres, "mosquitto": mosquitto}


@overload
def endpoint(name: Literal["kafka"]) -> Kafka: ...
@overload
def endpoint(name: Literal["influxdb"]) -> InfluxDB: ...
@overload
def endpoint(name: Literal["postgres"]) -> Postgres: ...
@overload
def endpoint(name: Literal["mosquitto"]) -> Mosquitto: ...
@overload
def endpoint(name: str) -> Any: ...
def endpoint(name: str) -> Any:
    try:
        return _ENDPOINTS[name]()
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None


def _load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_fieldlink_probe", SCRIPTS / "probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_probe = _load_probe()
_lock = threading.Lock()
_results: dict[str, Any] = {}  # name -> endpoint, or the ServiceUnavailable raised once
_started: list[str] = []


def _check(name: str) -> str | None:
    """None when the service answers like a working server, else the reason it does not."""
    ep = endpoint(name)
    try:
        _probe.probe(name, ep.host, ep.port)
    except _probe.NotReady as exc:
        return str(exc)
    return None


def describe(name: str) -> str:
    """One line on what answers at the service's endpoint (e.g. "influxd version 1.8.10")."""
    ep = endpoint(name)
    try:
        return f"{name} {ep.host}:{ep.port} {_probe.probe(name, ep.host, ep.port)}"
    except _probe.NotReady:
        return f"{name} {ep.host}:{ep.port} not running (started on first use)"


def _start(name: str) -> str:
    script = SCRIPTS / f"{name}.sh"
    # A cold machine builds influxd / resolves the Kafka jars here: minutes, not seconds.
    timeout = float(os.environ.get("FIELDLINK_SERVICE_START_TIMEOUT", "1200"))
    try:
        proc = subprocess.run(
            ["bash", str(script), "start"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{script} start` did not complete: {exc}"
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return f"`{script} start` exited {proc.returncode}:\n{tail}"
    return ""


def ensure(name: str) -> Any:
    """The service's endpoint, starting the service if it is not answering.

    Thread-safe and idempotent: the outcome (endpoint or failure) is decided once per process.
    """
    with _lock:
        cached = _results.get(name)
        if isinstance(cached, ServiceUnavailable):
            raise cached
        if cached is not None:
            return cached
        ep = endpoint(name)
        why = _check(name)
        if why is not None and ep.host in ("127.0.0.1", "localhost"):
            start_error = _start(name)
            if not start_error:
                _started.append(name)
            why = _check(name)
            if why is not None and start_error:
                why = f"{why}\n{start_error}"
        if why is not None:
            err = ServiceUnavailable(
                f"{name} is not available at {ep.host}:{ep.port}: {why}\n"
                f"start it with `bash deploy/local/services/{name}.sh start`; "
                f"logs in {LOG_ROOT / name / 'log'}"
            )
            _results[name] = err
            raise err
        _results[name] = ep
        return ep


@overload
def require(name: Literal["kafka"]) -> Kafka: ...
@overload
def require(name: Literal["influxdb"]) -> InfluxDB: ...
@overload
def require(name: Literal["postgres"]) -> Postgres: ...
@overload
def require(name: Literal["mosquitto"]) -> Mosquitto: ...
@overload
def require(name: str) -> Any: ...
def require(name: str) -> Any:
    """``ensure`` for tests: fail under CI=true, skip otherwise, when the service is missing."""
    import pytest

    try:
        return ensure(name)
    except ServiceUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and a required service is missing: {exc}", pytrace=False)
        pytest.skip(str(exc))


def stop_started() -> None:
    """Stops the services this process started (not those that were already running)."""
    if os.environ.get("FIELDLINK_KEEP_SERVICES") == "1":
        return
    with _lock:
        while _started:
            name = _started.pop()
            subprocess.run(
                ["bash", str(SCRIPTS / f"{name}.sh"), "stop"],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            _results.pop(name, None)


if __name__ == "__main__":
    # `python tests/integration/services.py [NAME...]`: print each endpoint or why it is down.
    status = 0
    for svc in sys.argv[1:] or SERVICES:
        reason = _check(svc)
        print(describe(svc) if reason is None else f"{svc}: NOT READY: {reason}")
        status |= reason is not None
    sys.exit(status)
