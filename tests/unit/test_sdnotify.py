"""gateway.sdnotify against real unix datagram sockets (what systemd listens on)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import SdNotifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_status_stopping_reach_the_socket(
        listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    with SdNotifier(environ={"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready("listening on :1883")
        assert _recv(sock) == ["READY=1", "STATUS=listening on :1883"]
        assert notifier.watchdog()
        assert _recv(sock) == ["WATCHDOG=1"]
        assert notifier.status("uplink down\nbuffering")
        assert _recv(sock) == ["STATUS=uplink down buffering"]
        assert notifier.extend_timeout(2.5)
        assert _recv(sock) == ["EXTEND_TIMEOUT_USEC=2500000"]
        assert notifier.stopping()
        assert _recv(sock) == ["STOPPING=1"]


def test_abstract_namespace_address() -> None:
    name = f"fieldlink-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = SdNotifier(environ={"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert _recv(sock) == ["READY=1"]
        notifier.close()
    finally:
        sock.close()


def test_explicit_address_wins_over_environment(listener: tuple[str, socket.socket],
                                                tmp_path: Path) -> None:
    path, sock = listener
    notifier = SdNotifier(path, environ={"NOTIFY_SOCKET": str(tmp_path / "other")})
    assert notifier.watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]
    notifier.close()


def test_no_socket_is_a_silent_no_op() -> None:
    notifier = SdNotifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping("bye") is False


def test_a_vanished_socket_returns_false_and_never_raises(tmp_path: Path) -> None:
    notifier = SdNotifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    notifier.close()


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0


@pytest.mark.parametrize("env", [
    {},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"},
])
def test_no_watchdog_for_this_process(env: dict[str, str]) -> None:
    assert watchdog_interval(env, pid=42) is None
