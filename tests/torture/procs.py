"""Processes, throwaway services, waiting and HTTP: the torture suite's plumbing.

Every fieldlink component runs as its own process (`Proc`), exactly as an operator starts
it, with stdout and stderr appended to one log file per component.  A `Proc` knows whether
its process ended because the suite ended it (SIGTERM with exit 0, or SIGKILL) or on its
own: the latter, and a SIGTERM that did not end in exit status 0, count as crashes.

Throwaway Kafka and InfluxDB instances (`Throwaway`) run the repository's service scripts
with their own state directory and ports (`FIELDLINK_VAR`, `FIELDLINK_<SERVICE>_PORT`), so
stopping them never touches the shared services other tests use.

`Secrets` is the registry of every secret a scenario handed to a process; `Secrets.leaks`
greps the captured logs for them.
"""

from __future__ import annotations

import os
import secrets as _secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
FIELDLINK = [PYTHON, "-m", "edge.cli"]
HOST = "127.0.0.1"

T = TypeVar("T")


class ServiceMissing(RuntimeError):
    """A real service the scenario needs is not available (skip locally, fail under CI)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- secrets


class Secrets:
    """Every secret handed to a process; none of them may appear in any captured log."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def new(self, name: str, length: int = 24) -> str:
        value = f"{name[:8]}-{_secrets.token_urlsafe(length)}"
        self.values[name] = value
        return value

    def add(self, name: str, value: str) -> str:
        self.values[name] = value
        return value

    def leaks(self, logs: Iterable[Path]) -> list[str]:
        """`"<secret name> in <log file>"` for every secret found in a log."""
        found = []
        for path in logs:
            try:
                text = path.read_bytes()
            except OSError:
                continue
            for name, value in self.values.items():
                if value.encode() in text:
                    found.append(f"{name} in {path.name}")
        return found


# --------------------------------------------------------------------------- processes


class Proc:
    """A component process with its output appended to `log`.

    `start()` may be called again after the process ended (a restart); the previous run's
    end is judged first.  `crashes` counts ends the suite did not cause.
    """

    def __init__(self, name: str, args: list[str], log: Path, *,
                 env: dict[str, str] | None = None, finishes: bool = False) -> None:
        self.name = name
        #: a process that ends by itself (a fleet): exit status 0 is its normal end
        self.finishes = finishes
        self.args = args
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes = 0
        self.crash_notes: list[str] = []
        self.starts = 0
        self._ended_by_us = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Proc:
        self.judge()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"\n=== start {self.name} #{self.starts + 1} at {time.time():.3f}: "
                      f"{' '.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env)
        self.starts += 1
        self._ended_by_us = False
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def judge(self) -> None:
        """Count a crash if the current process ended without the suite ending it."""
        if self.proc is None or self.proc.poll() is None or self._ended_by_us:
            return
        if self.finishes and self.proc.returncode == 0:
            self._ended_by_us = True
            return
        self.crashes += 1
        self.crash_notes.append(f"{self.name} exited {self.proc.returncode} on its own")
        self._ended_by_us = True  # judged once

    def terminate(self, wait_s: float = 60.0) -> int | None:
        """SIGTERM and wait; anything but exit status 0 is a crash (no clean shutdown)."""
        if self.proc is None:
            return None
        if not self.alive():
            self.judge()
            return self.proc.returncode
        self._ended_by_us = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
            self.crashes += 1
            self.crash_notes.append(f"{self.name} did not stop within {wait_s} s of SIGTERM")
            return rc
        if rc != 0:
            self.crashes += 1
            self.crash_notes.append(f"{self.name} exited {rc} after SIGTERM")
        return rc

    def kill(self) -> None:
        """SIGKILL (a power cut of this process); never a crash."""
        if self.proc is None:
            return
        if self.alive():
            self._ended_by_us = True
            self.proc.kill()
            self.proc.wait(10)
        else:
            self.judge()

    def wait(self, timeout_s: float) -> int:
        """Wait for a process that ends by itself (the simulator); a non-zero exit is a
        crash."""
        assert self.proc is not None
        rc = self.proc.wait(timeout_s)
        if not self._ended_by_us:
            self._ended_by_us = True
            if rc != 0:
                self.crashes += 1
                self.crash_notes.append(f"{self.name} exited {rc}")
        return rc

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(lines[-n:])


class Procs:
    """The processes of one scenario: crash accounting, logs, cleanup."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.all: list[Proc] = []

    def add(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
            finishes: bool = False) -> Proc:
        proc = Proc(name, args, self.run_dir / "logs" / f"{name}.log", env=env,
                    finishes=finishes)
        self.all.append(proc)
        return proc

    def crashes(self) -> int:
        for p in self.all:
            p.judge()
        return sum(p.crashes for p in self.all)

    def crash_notes(self) -> list[str]:
        return [n for p in self.all for n in p.crash_notes]

    def logs(self) -> list[Path]:
        return [p.log for p in self.all]

    def tails(self, n: int = 30) -> str:
        return "\n".join(p.tail(n) for p in self.all)

    def stop_all(self) -> None:
        """SIGTERM whatever still runs (the suite's cleanup: judged like any stop)."""
        for p in reversed(self.all):
            if p.alive():
                p.terminate(30)


# --------------------------------------------------------------------------- waiting, HTTP


def wait_until(what: str, check: Callable[[], T], timeout_s: float, *,
               procs: Procs | None = None, interval_s: float = 0.2) -> T:
    """`check()`'s first truthy result; AssertionError (with log tails) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except (OSError, ValueError):
            result = None  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:.0f} s\n"
                                 + (procs.tails() if procs is not None else ""))
        time.sleep(interval_s)


def http_get(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None
             ) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, ""


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0
              ) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` (exact family name) whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if any(f'{k}="{v}"' not in line for k, v in labels.items()):
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


def metric_by(text: str, name: str, label: str, **labels: str) -> dict[str, float]:
    """`{label value: sum}` over the samples of `name` matching `labels`."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if any(f'{k}="{v}"' not in line for k, v in labels.items()):
            continue
        key = f'{label}="'
        at = line.find(key)
        if at < 0:
            continue
        value = line[at + len(key):line.index('"', at + len(key))]
        out[value] = out.get(value, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), 0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- services


class Throwaway:
    """A Kafka broker or an influxd with its own state and ports, run by the service
    script (`deploy/local/services/<kind>.sh start|stop`)."""

    def __init__(self, kind: str, root: Path) -> None:
        if kind not in ("kafka", "influxdb"):
            raise ValueError(kind)
        self.kind = kind
        self.root = root
        self.port = free_port()
        env = {**os.environ, "FIELDLINK_VAR": str(root)}
        if kind == "kafka":
            env["FIELDLINK_KAFKA_PORT"] = str(self.port)
            env["FIELDLINK_KAFKA_CONTROLLER_PORT"] = str(free_port())
        else:
            env["FIELDLINK_INFLUXDB_PORT"] = str(self.port)
            env["FIELDLINK_INFLUXDB_RPC_PORT"] = str(free_port())
        self.env = env
        self.started = False

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "services" / self.kind / "log" / f"{self.kind}.log"

    def run(self, action: str, timeout_s: float = 300) -> None:
        proc = subprocess.run(["bash", str(ROOT / f"deploy/local/services/{self.kind}.sh"),
                               action], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.kind}.sh {action} (port {self.port}) failed:\n"
                               f"{proc.stdout}{proc.stderr}")

    def start(self) -> None:
        try:
            self.run("start")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            try:
                self.run("stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            raise ServiceMissing(f"throwaway {self.kind} did not start: {exc}") from exc
        self.started = True

    def stop(self) -> None:
        if self.started:
            self.run("stop")
            self.started = False


def shared_service(name: str) -> Any:
    """The shared service's endpoint (started if needed), or ServiceMissing."""
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    try:
        import _services  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    try:
        return _services.ensure(name)
    except _services.ServiceUnavailable as exc:
        raise ServiceMissing(str(exc)) from exc


def venv_python() -> str:
    return PYTHON


def run_cli(*args: str, timeout_s: float = 120, env: dict[str, str] | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIELDLINK, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env=env, input=input_text)
