"""MQTT over WebSocket (browser dashboards): an aiohttp endpoint feeding the same
`MqttConnection` state machine as the TCP and TLS listeners, so every client shares one topic
space, one ACL and one set of sessions.

Each binary WebSocket message carries any slice of the MQTT byte stream (clients may split or
join packets freely, as MQTT-over-WebSocket allows); a text message is a protocol violation.
Writes go through a per-connection queue drained by one task, so the broker core stays
synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import WSMsgType, web

from gateway.mqtt.broker import Broker, bump
from gateway.mqtt.connection import MqttConnection
from gateway.mqtt.settings import WebSocketListener

_HIGH_WATER = 256 * 1024


class _WsTransport:
    """The slice of `asyncio.Transport` that `MqttConnection` uses, over a WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request,
                 conn: MqttConnection) -> None:
        self.ws = ws
        self.request = request
        self.conn = conn
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffered = 0
        self.closing = False
        self.reading = asyncio.Event()
        self.reading.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.request.transport.get_extra_info("peername") \
                if self.request.transport else default
        if self.request.transport is not None:
            return self.request.transport.get_extra_info(name, default)
        return default

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffered += len(data)
        self.outbox.put_nowait(data)
        if self.buffered > _HIGH_WATER and not self.conn.write_paused:
            self.conn.pause_writing()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait(None)
            self.reading.set()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    async def pump(self) -> None:
        """Send queued bytes in order; after close(), flush and close the WebSocket."""
        while True:
            data = await self.outbox.get()
            if data is None:
                break
            chunks = [data]
            while not self.outbox.empty():  # one frame for everything written meanwhile
                more = self.outbox.get_nowait()
                if more is None:
                    self.outbox.put_nowait(None)
                    break
                chunks.append(more)
            joined = b"".join(chunks)
            try:
                await self.ws.send_bytes(joined)
            except (ConnectionError, RuntimeError):
                break
            self.buffered -= len(joined)
            if self.conn.write_paused and self.buffered < _HIGH_WATER // 2:
                self.conn.resume_writing()
        with contextlib.suppress(Exception):
            await self.ws.close()


def websocket_app(broker: Broker, settings: WebSocketListener) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("mqtt", "mqttv3.1"), autoping=True,
                                   max_msg_size=broker.settings.max_packet_bytes + 16)
        await ws.prepare(request)
        conn = MqttConnection(broker, listener="websocket")
        transport = _WsTransport(ws, request, conn)
        conn.connection_made(transport)
        pump = asyncio.get_running_loop().create_task(transport.pump(), name="mqtt-ws-writer")
        try:
            while not transport.closing:
                if not transport.reading.is_set():
                    await transport.reading.wait()
                    continue
                msg = await ws.receive()
                if msg.type == WSMsgType.BINARY:
                    conn.data_received(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    bump(broker.counters.protocol_errors, "websocket_text_frame")
                    conn.close()
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    break
        finally:
            transport.close()
            conn.connection_lost(None)
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return ws

    app = web.Application()
    app.router.add_get(settings.path, handler)
    return app
