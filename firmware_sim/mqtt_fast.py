"""A minimal asyncio MQTT 3.1.1 publisher: what a sensor needs and nothing more.

Why not paho-mqtt for large fleets: a paho client costs ~10x the CPU per publish (locks,
per-message info objects, its own packet queue) and one paho client per device cannot
reach 10,000 publishes/s in one process (measured: see docs/simulator.md).  This client is
an `asyncio.Protocol`: one socket per device, all on one event loop, a publish is one
`transport.write`.  paho (`firmware_sim.mqtt_paho`) remains available as
`target.mqtt_client: paho`.

Supported: CONNECT (client id, clean/persistent session, username/password, keepalive),
CONNACK, PUBLISH QoS 0/1 (DUP on retransmission), PUBACK matching by packet id, PINGREQ/
PINGRESP, DISCONNECT, TLS through asyncio.  Not supported (a sensor does not need them):
SUBSCRIBE, QoS 2, will messages, receiving PUBLISH (ignored if a broker sends one).

Guarantees: acknowledgements are reported in the order PUBACKs arrive; `take_unacked()`
returns unacknowledged emissions in send order, so a reconnect resends them in order.
A connection the broker stops answering (no PINGRESP within the keepalive) is dropped and
reported lost.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from firmware_sim.device import Emission
from firmware_sim.errors import NotAuthorized, TargetUnavailable
from firmware_sim.link import LinkEvents

_CONNACK_REASONS = {1: "unacceptable protocol version", 2: "identifier rejected",
                    3: "server unavailable", 4: "bad user name or password",
                    5: "not authorized"}
_PINGREQ = b"\xc0\x00"
_RECV_BUF = bytearray(65536)
_RECV_VIEW = memoryview(_RECV_BUF)
_DISCONNECT = b"\xe0\x00"


@dataclass(frozen=True, slots=True)
class MqttOptions:
    host: str
    port: int
    keepalive_s: int = 60
    clean_session: bool = True
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None
    connect_timeout_s: float = 10.0


def _varint(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, opts: MqttOptions) -> bytes:
    flags = 0x02 if opts.clean_session else 0
    payload = _str(client_id)
    if opts.username is not None:
        flags |= 0x80
        payload += _str(opts.username)
        if opts.password is not None:
            flags |= 0x40
            payload += _str(opts.password)
    var = _str("MQTT") + bytes((4, flags)) + opts.keepalive_s.to_bytes(2, "big")
    body = var + payload
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int, dup: bool) -> bytes:
    """`topic` is the length-prefixed topic (see `_str`)."""
    if qos:
        head = 0x32 | (0x08 if dup else 0)
        return b"".join((bytes((head,)), _varint(len(topic) + 2 + len(payload)), topic,
                         pid.to_bytes(2, "big"), payload))
    return b"".join((b"\x30", _varint(len(topic) + len(payload)), topic, payload))


class FastMqttLink(asyncio.BufferedProtocol):
    def __init__(self, client_id: str, topic: str, opts: MqttOptions, events: LinkEvents,
                 owner: Any):
        self.client_id = client_id
        self._topic = _str(topic)
        self._topic_len = len(self._topic)
        self._opts = opts
        self._events = events
        self._owner = owner
        self.connected = False
        self.writable = True
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._inflight: dict[int, Emission] = {}
        self._next_pid = 1
        self._connack: asyncio.Future[tuple[int, bool]] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._closing = False
        self._active = False
        self._ping_sent_at: float | None = None
        self._last_ping_check = 0.0
        self.session_present = False

    # ------------------------------------------------------------------ Link API

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self._opts
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        try:
            async with asyncio.timeout(opts.connect_timeout_s):
                await loop.create_connection(
                    lambda: self, opts.host, opts.port, ssl=opts.ssl,
                    server_hostname=opts.host if opts.ssl is not None else None)
                assert self._transport is not None
                self._transport.write(connect_packet(self.client_id, opts))
                rc, present = await self._connack
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._drop()
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise TargetUnavailable(f"{self.client_id}: connect to {opts.host}:{opts.port} "
                                    f"failed: {what}",
                                    reason="connect_timeout" if isinstance(exc, TimeoutError)
                                    else "connect_error") from None
        if rc != 0:
            self._drop()
            why = _CONNACK_REASONS.get(rc, f"return code {rc}")
            if rc in (4, 5):
                raise NotAuthorized(f"{self.client_id}: broker refused the connection: {why}")
            raise TargetUnavailable(f"{self.client_id}: broker refused the connection: {why}",
                                    reason=f"connack_{rc}")
        self.session_present = present
        self.connected = True
        self._last_ping_check = loop.time()

    def send(self, e: Emission, qos: int) -> None:
        transport = self._transport
        assert transport is not None
        payload = e.payload
        if qos:
            pid = self._next_pid
            inflight = self._inflight
            while pid in inflight:
                pid = pid % 65535 + 1
            self._next_pid = pid % 65535 + 1
            e.pid = pid
            inflight[pid] = e
            n = self._topic_len + 2 + len(payload)
            # remaining length inline for the usual sizes (< 16 KiB): this runs per reading
            if n < 128:
                head = bytes((0x3A if e.attempts > 1 else 0x32, n))
            elif n < 16384:
                head = bytes((0x3A if e.attempts > 1 else 0x32, (n & 0x7F) | 0x80, n >> 7))
            else:
                head = bytes((0x3A if e.attempts > 1 else 0x32,)) + _varint(n)
            transport.write(b"".join((head, self._topic, pid.to_bytes(2, "big"), payload)))
        else:
            transport.write(publish_packet(self._topic, payload, 0, 0, False))
            self._events.link_sent(self._owner, e)
        self._active = True

    def inflight(self) -> int:
        return len(self._inflight)

    def take_unacked(self) -> list[Emission]:
        out = list(self._inflight.values())
        self._inflight.clear()
        return out

    def abort(self) -> None:
        self._closing = True
        self.connected = False
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.connected = False
        t = self._transport
        if t is None or t.is_closing():
            return
        t.write(_DISCONNECT)
        t.close()
        if self._closed is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._closed
            except TimeoutError:
                t.abort()

    def housekeeping(self, now: float) -> None:
        if not self.connected or self._transport is None:
            return
        keepalive = self._opts.keepalive_s
        if self._ping_sent_at is not None and now - self._ping_sent_at > keepalive:
            # the broker stopped answering: treat as a lost connection
            self._transport.abort()
            return
        if now - self._last_ping_check >= keepalive / 2:
            self._last_ping_check = now
            if not self._active and self._ping_sent_at is None:
                self._transport.write(_PINGREQ)
                self._ping_sent_at = now
            self._active = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        # one receive buffer for every connection: the loop fills it and calls
        # buffer_updated() before it reads any other socket, and nothing survives the call
        return _RECV_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self._buf:
            self._buf += _RECV_VIEW[:nbytes]
            self._parse(self._buf, len(self._buf))
        elif nbytes == 4 and _RECV_BUF[0] == 0x40 and _RECV_BUF[1] == 2:
            # one PUBACK, the read of nearly every reading at 1 Hz: no parse loop
            e = self._inflight.pop((_RECV_BUF[2] << 8) | _RECV_BUF[3], None)
            if e is not None:
                self._events.link_acked(self._owner, e)
        else:
            self._parse(_RECV_BUF, nbytes)

    def _parse(self, buf: bytearray, end: int) -> None:
        pos = 0
        inflight = self._inflight
        while end - pos >= 2:
            head = buf[pos]
            if head == 0x40 and buf[pos + 1] == 2:
                # PUBACK, the common case
                if end - pos < 4:
                    break
                e = inflight.pop((buf[pos + 2] << 8) | buf[pos + 3], None)
                pos += 4
                if e is not None:
                    self._events.link_acked(self._owner, e)
                continue
            # general frame: decode the remaining length
            length = 0
            mult = 1
            i = pos + 1
            while True:
                if i >= end:
                    length = -1
                    break
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
                if mult > 128**4:
                    self._protocol_error("malformed remaining length")
                    return
            if length < 0 or end - i < length:
                break
            body = bytes(buf[i:i + length])
            pos = i + length
            self._frame(head, body)
        if buf is self._buf:
            del buf[:pos]
        elif pos < end:
            # keep the partial frame: the shared buffer is reused by the next read
            self._buf += buf[pos:end]

    def _frame(self, head: int, body: bytes) -> None:
        kind = head >> 4
        if kind == 2 and self._connack is not None and not self._connack.done():
            if len(body) < 2:
                self._protocol_error("short CONNACK")
                return
            self._connack.set_result((body[1], bool(body[0] & 1)))
        elif kind == 13:
            self._ping_sent_at = None
        elif kind == 4 and len(body) >= 2:
            e = self._inflight.pop(int.from_bytes(body[:2], "big"), None)
            if e is not None:
                self._events.link_acked(self._owner, e)
        # anything else (a PUBLISH we never subscribed to, a second CONNACK) is ignored

    def _protocol_error(self, why: str) -> None:
        if self._transport is not None:
            self._transport.abort()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.connected:
            self._events.link_writable(self._owner)

    def connection_lost(self, exc: Exception | None) -> None:
        was_connected = self.connected
        self.connected = False
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError("connection closed before CONNACK"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if was_connected and not self._closing:
            self._events.link_lost(self._owner, "connection_lost" if exc is None
                                   else f"connection_lost:{type(exc).__name__}")

    def _drop(self) -> None:
        self._closing = True
        self.connected = False
        if self._transport is not None:
            self._transport.abort()
