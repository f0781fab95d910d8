"""The seam between the fleet and a transport: one `Link` per device connection.

A link moves `Emission`s to the target and reports back to its `LinkEvents` (the fleet),
always on the event loop's thread and never re-entrantly from `send()` for acknowledgements:

* `link_acked(owner, e)` — the target acknowledged e (MQTT PUBACK, CoAP 2.xx);
* `link_sent(owner, e)` — e left on a transport without acknowledgements (QoS 0,
  non-confirmable CoAP, serial): its fate past the wire is unknown;
* `link_failed(owner, e, reason)` — the target refused or never answered e (CoAP 4.xx/5.xx,
  timeout, unread serial data at close);
* `link_lost(owner, reason)` — the connection dropped by itself; the fleet takes the
  unacknowledged emissions back with `take_unacked()` and reconnects with backoff;
* `link_writable(owner)` — a full transport buffer drained; the fleet sends queued emissions.

`abort()` (fault injection) and `close()` (shutdown) do not report `link_lost`: the caller
already knows.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

from edge.config.sim import TlsConfig
from firmware_sim.device import Emission


class LinkEvents(Protocol):
    def link_acked(self, owner: Any, e: Emission) -> None: ...

    def link_sent(self, owner: Any, e: Emission) -> None: ...

    def link_failed(self, owner: Any, e: Emission, reason: str) -> None: ...

    def link_lost(self, owner: Any, reason: str) -> None: ...

    def link_writable(self, owner: Any) -> None: ...


class Link(Protocol):
    #: the connection is up and `send` may be called
    connected: bool
    #: the transport's buffer has room (False: queue, wait for `link_writable`)
    writable: bool

    async def connect(self) -> None:
        """Open the connection.  Raises `TargetUnavailable` (retry later) or `NotAuthorized`."""
        ...

    def send(self, e: Emission, qos: int) -> None: ...

    def inflight(self) -> int:
        """Emissions sent and awaiting acknowledgement."""
        ...

    def take_unacked(self) -> list[Emission]:
        """Remove and return the unacknowledged emissions, oldest first."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a goodbye (fault injection)."""
        ...

    async def close(self) -> None:
        """Say goodbye and close; idempotent."""
        ...

    def housekeeping(self, now: float) -> None:
        """Called about once a second with the loop time: keepalives, timeouts."""
        ...


def ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The client TLS context the target config asks for (None: plain TCP)."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
