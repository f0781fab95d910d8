"""CoAP devices: POSTs of the sensor message to ``coap://host:port/{coap_path}`` (aiocoap).

QoS 1 devices send confirmable requests and count a reading acknowledged on a 2.xx response;
a 4.xx/5.xx response fails it with reason ``coap_<code>`` (a malformed payload is expected
to get 4.00), no response within aiocoap's retransmission window fails it with
``coap_timeout``.  QoS 0 devices send non-confirmable requests and count them unconfirmed
at once; their exchanges are cancelled after `NON_LINGER_S` so a gateway that never answers
a NON does not make the fleet hold state forever.

All CoAP devices share one client context (one UDP socket): the device is named by the
resource path, as the gateway expects.  CoAP has no connection, so the `disconnect` fault
and reconnect storms do not apply to it.  Payloads over 1 KiB (the `oversize` malformed
variant) use block-wise transfer.
"""

from __future__ import annotations

import asyncio
import logging
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
