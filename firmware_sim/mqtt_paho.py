"""paho-mqtt clients driven from the fleet's asyncio loop (`target.mqtt_client: paho`).

paho's threaded `loop_start()` would be one thread per device; instead each client uses
paho's external-loop interface (as in paho's examples/loop_asyncio.py): the socket is
registered with the event loop (`add_reader` → `loop_read`, `add_writer` while paho has
bytes queued → `loop_write`), and the fleet's once-a-second housekeeping calls
`loop_misc()` for keepalives — one task for the whole fleet, not one per client.

Each (re)connection uses a fresh paho `Client`, so paho's own retransmission state never
competes with the fleet's: unacknowledged messages are resent by the fleet after a
reconnect, as new publishes.  The TCP/TLS connect itself is blocking in paho, so it runs in
the default executor; the socket is handed to the loop only after it returns.

Use it for small fleets or to cross-check the built-in client (`firmware_sim.mqtt_fast`);
it costs several times more CPU per publish.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.device import Emission
from firmware_sim.errors import NotAuthorized, TargetUnavailable
from firmware_sim.link import LinkEvents
from firmware_sim.mqtt_fast import MqttOptions

#: MQTT 5 reason codes paho maps CONNACK 4 and 5 of MQTT 3.1.1 to
_AUTH_REFUSED = {134, 135}


class PahoLink:
    def __init__(self, client_id: str, topic: str, opts: MqttOptions, events: LinkEvents,
                 owner: Any):
        self.client_id = client_id
        self.topic = topic
        self._opts = opts
        self._events = events
        self._owner = owner
        self.connected = False
        self.writable = True
        self._client: mqtt.Client | None = None
        self._sock: socket.socket | None = None
        self._inflight: dict[int, Emission] = {}
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[int] | None = None
        self._gone: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        opts = self._opts
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=opts.clean_session, protocol=mqtt.MQTTv311)
        if opts.username is not None:
            client.username_pw_set(opts.username, opts.password)
        if opts.ssl is not None:
            client.tls_set_context(opts.ssl)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._connack = loop.create_future()
        self._gone = loop.create_future()
        try:
            async with asyncio.timeout(opts.connect_timeout_s):
                await loop.run_in_executor(None, client.connect, opts.host, opts.port,
                                           opts.keepalive_s)
                sock = client.socket()
                if sock is None:
                    raise ConnectionError("paho returned no socket")
                self._sock = sock  # type: ignore[assignment]
                client.on_socket_close = self._on_socket_close
                client.on_socket_register_write = self._on_register_write
                client.on_socket_unregister_write = self._on_unregister_write
                loop.add_reader(sock, client.loop_read)
                if client.want_write():
                    loop.add_writer(sock, client.loop_write)
                rc = await self._connack
        except (OSError, TimeoutError) as exc:
            self._drop()
            raise TargetUnavailable(
                f"{self.client_id}: connect to {opts.host}:{opts.port} failed: "
                f"{'timed out' if isinstance(exc, TimeoutError) else exc}",
                reason="connect_timeout" if isinstance(exc, TimeoutError)
                else "connect_error") from None
        if rc != 0:
            self._drop()
            if rc in _AUTH_REFUSED:
                raise NotAuthorized(f"{self.client_id}: broker refused the credentials "
                                    f"(reason code {rc})")
            raise TargetUnavailable(f"{self.client_id}: broker refused the connection "
                                    f"(reason code {rc})", reason=f"connack_{rc}")
        self.connected = True

    def send(self, e: Emission, qos: int) -> None:
        client = self._client
        assert client is not None
        info = client.publish(self.topic, e.payload, qos=qos)
        if qos:
            self._inflight[info.mid] = e
        else:
            self._events.link_sent(self._owner, e)

    def inflight(self) -> int:
        return len(self._inflight)

    def take_unacked(self) -> list[Emission]:
        out = list(self._inflight.values())
        self._inflight.clear()
        return out

    def abort(self) -> None:
        self._closing = True
        self.connected = False
        if self._sock is not None:
            try:
                # paho sees EOF on its next read and closes its side through its callbacks
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    async def close(self) -> None:
        if self._closing or self._client is None:
            return
        self._closing = True
        self.connected = False
        self._client.disconnect()
        if self._gone is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._gone
            except TimeoutError:
                self.abort()

    def housekeeping(self, now: float) -> None:
        if self._client is not None and self.connected:
            self._client.loop_misc()

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(int(getattr(reason, "value", reason)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        e = self._inflight.pop(mid, None)
        if e is not None:
            self._events.link_acked(self._owner, e)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was_connected = self.connected
        self.connected = False
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(f"disconnected: {reason}"))
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if was_connected and not self._closing:
            self._events.link_lost(self._owner, "connection_lost")

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock)

    def _drop(self) -> None:
        self._closing = True
        self.connected = False
        sock = self._sock
        # paho may have closed the socket itself already (fileno -1)
        if sock is not None and self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self._client is not None:
            try:
                self._client.disconnect()
            except Exception:  # noqa: BLE001 - best effort on a half-open client
                pass
        if sock is not None:
            sock.close()
