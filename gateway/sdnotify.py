"""A minimal sd_notify(3) client: tell systemd the gateway is ready, alive, stopping.

The unit `deploy/rpi/fieldlink-gateway.service` is `Type=notify` with `WatchdogSec=30` and
`NotifyAccess=main`, so the gateway's main process must:

* send ``READY=1`` once every listener is bound and the buffer is open (systemd holds units
  ordered after ours until then, and `systemctl start` returns only then);
* send ``WATCHDOG=1`` at least every `watchdog_interval()` seconds while healthy — systemd
  kills and restarts a gateway that stops doing so (a wedged event loop);
* send ``STOPPING=1`` when shutdown begins, and ``STATUS=...`` lines for `systemctl status`.

Guarantees:

* Without ``NOTIFY_SOCKET`` in the environment (not under systemd, or tests) every call is a
  no-op that returns False: the gateway never needs to know where it runs.
* Never raises and never blocks: the socket is non-blocking, and a send that fails (systemd
  gone, queue full) returns False.  Losing a notification must not take the gateway down.
* ``NOTIFY_SOCKET`` may name a filesystem path or an abstract socket (a leading ``@``).
* Pure sockets, no asyncio and no threads: safe to call from the event loop.

Usage::

    notifier = SdNotifier()            # reads NOTIFY_SOCKET
    interval = watchdog_interval()     # None: no watchdog configured for this process
    notifier.ready("listening on :1883")
    ...                                # every `interval` s: notifier.watchdog()
    notifier.stopping()
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["SdNotifier", "watchdog_interval"]


def _address(value: str) -> str | bytes:
    # systemd writes abstract sockets as "@name"; the kernel wants a leading NUL byte
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _clean(text: str) -> str:
    # one assignment per line: a newline inside STATUS would start a bogus assignment
    return " ".join(text.splitlines())


class SdNotifier:
    """Sends sd_notify messages to `NOTIFY_SOCKET` (or `address`).  See the module docstring."""

    def __init__(self, address: str | None = None, *,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = address if address is not None else env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = _address(raw) if raw else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (the process runs under systemd)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `VAR=value` assignments in one datagram.  True if it was sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup finished: listeners bound, buffer open."""
        return self.notify("READY=1", *self._status(status))

    def watchdog(self) -> bool:
        """Still alive; call every `watchdog_interval()` seconds."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began (systemd then waits for the exit instead of declaring a failure)."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload began; send `ready()` when it is done."""
        return self.notify("RELOADING=1", *self._status(status))

    def status(self, text: str) -> bool:
        """A one-line state for `systemctl status`."""
        return self.notify(f"STATUS={_clean(text)}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time before start/stop is considered hung (e.g. a long buffer check)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _status(status: str | None) -> tuple[str, ...]:
        return (f"STATUS={_clean(status)}",) if status else ()


def watchdog_interval(environ: Mapping[str, str] | None = None, *,
                      pid: int | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` pings, or None when no watchdog is set for this process.

    systemd sets `WATCHDOG_USEC` (the timeout) and `WATCHDOG_PID` (the process it means);
    pinging at half the timeout, as sd_watchdog_enabled(3) advises, leaves room for one late
    ping.  A `WATCHDOG_PID` naming another process (a child that inherited the environment)
    means no watchdog for us.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000
