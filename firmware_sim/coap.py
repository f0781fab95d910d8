"""CoAP devices: POSTs of the sensor message to ``coap://host:port/{coap_path}`` (aiocoap).

QoS 1 devices send confirmable requests and count a reading acknowledged on a 2.xx response;
a 4.xx/5.xx response fails it with reason ``coap_<code>`` (a malformed payload is expected
to get 4.00), no response within aiocoap's retransmission window fails it with
``coap_timeout``.  QoS 0 devices send non-confirmable requests and count them unconfirmed
at once; their exchanges are cancelled after `NON_LINGER_S` so a gateway that never answers
a NON does not make the fleet hold state forever.  A request to a gateway that is down is
retransmitted like any lost datagram (the client socket takes no ICMP errors, see
`_no_icmp_error_queue`), so it is acknowledged if the gateway is back within the window.

All CoAP devices share one client context (one UDP socket): the device is named by the
resource path, as the gateway expects.  CoAP has no connection, so the `disconnect` fault
and reconnect storms do not apply to it.  Payloads over 1 KiB (the `oversize` malformed
variant) use block-wise transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from functools import partial
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from firmware_sim.device import Emission
from firmware_sim.link import LinkEvents

log = logging.getLogger("fieldlink.sim.coap")

NON_LINGER_S = 10.0
_JSON = 50  # application/json
_BLOCKWISE_ABOVE = 1024


class CoapClient:
    """The shared aiocoap context.  `async with CoapClient() as c:`."""

    def __init__(self) -> None:
        self.ctx: aiocoap.Context | None = None
        self._non: deque[tuple[float, Any]] = deque()

    async def __aenter__(self) -> CoapClient:
        self.ctx = await aiocoap.Context.create_client_context()
        _no_icmp_error_queue(self.ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, req in self._non:
            req.response.cancel()
        self._non.clear()
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    def linger(self, now: float, request: Any) -> None:
        self._non.append((now + NON_LINGER_S, request))

    def housekeeping(self, now: float) -> None:
        while self._non and self._non[0][0] <= now:
            _, req = self._non.popleft()
            if not req.response.done():
                req.response.cancel()


def _no_icmp_error_queue(ctx: aiocoap.Context) -> None:
    """Turn off the ICMP error queue (IP_RECVERR / IPV6_RECVERR) aiocoap's udp6 transport
    turns on for the client socket.

    On uvloop (the simulator's default loop) a queued ICMP error — a request that met a
    gateway that is down, "port unreachable" — makes epoll report EPOLLERR, and libuv then
    stops polling the socket for good: every CoAP device of the fleet would stay silent after
    the gateway's first restart.  Without the queue a request to a gateway that is down is
    retransmitted like any lost datagram, and answered once the gateway is back, or fails as
    ``coap_timeout`` at the end of the retransmission window."""
    from aiocoap.messagemanager import MessageManager
    from aiocoap.util import socknumbers

    if not socknumbers.HAS_RECVERR:
        return
    for interface in ctx.request_interfaces:
        manager = getattr(interface, "token_interface", None)
        if not isinstance(manager, MessageManager):
            continue
        transport = getattr(getattr(manager, "message_interface", None), "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            continue
        for level, option in ((socket.IPPROTO_IPV6, socknumbers.IPV6_RECVERR),
                              (socket.IPPROTO_IP, socknumbers.IP_RECVERR)):
            with contextlib.suppress(OSError):  # IPv4-only socket: no IPv6 level
                sock.setsockopt(level, option, 0)


class CoapLink:
    def __init__(self, client: CoapClient, uri: str, json_body: bool, events: LinkEvents,
                 owner: Any):
        self._client = client
        self.uri = uri
        self._json = json_body
        self._events = events
        self._owner = owner
        self.connected = False
        self.writable = True
        self._inflight: dict[int, tuple[Emission, Any]] = {}
        self._closing = False

    async def connect(self) -> None:
        self._closing = False
        self.connected = self._client.ctx is not None

    def send(self, e: Emission, qos: int) -> None:
        ctx = self._client.ctx
        assert ctx is not None
        msg = aiocoap.Message(code=Code.POST, mtype=Type.CON if qos else Type.NON,
                              uri=self.uri, payload=e.payload)
        if self._json:
            msg.opt.content_format = _JSON
        req = ctx.request(msg, handle_blockwise=len(e.payload) > _BLOCKWISE_ABOVE)
        if qos:
            self._inflight[id(e)] = (e, req)
            req.response.add_done_callback(partial(self._done, e))
        else:
            self._client.linger(asyncio.get_running_loop().time(), req)
            self._events.link_sent(self._owner, e)

    def _done(self, e: Emission, fut: asyncio.Future[Any]) -> None:
        if self._inflight.pop(id(e), None) is None or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            reason = "coap_timeout" if isinstance(exc, aiocoap.error.TimeoutError) \
                else f"coap_error:{type(exc).__name__}"
            self._events.link_failed(self._owner, e, reason)
            return
        response = fut.result()
        if response.code.is_successful():
            self._events.link_acked(self._owner, e)
        else:
            self._events.link_failed(self._owner, e, f"coap_{response.code.dotted}")

    def inflight(self) -> int:
        return len(self._inflight)

    def take_unacked(self) -> list[Emission]:
        out = []
        for e, req in self._inflight.values():
            req.response.cancel()
            out.append(e)
        self._inflight.clear()
        return out

    def abort(self) -> None:
        # connectionless: nothing to drop
        pass

    async def close(self) -> None:
        self.connected = False

    def housekeeping(self, now: float) -> None:
        pass
