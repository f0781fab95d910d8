"""One MQTT 3.1.1 client connection: an `asyncio.Protocol` with an incremental parser.
This module is the hot path (parsing, PUBLISH, acknowledgements); the other control
packets (CONNECT and authentication, SUBSCRIBE, ...) are in `gateway.mqtt.control`.

The device path, in order, for a QoS 1 PUBLISH of a sensor reading:

1. `data_received` parses every complete packet in the chunk (a partial packet waits in a
   bytearray; nothing is copied until the whole frame is there);
2. the topic's ACL decision and `Origin` are cached per connection, so a sensor publishing
   on its one topic costs one dict lookup;
3. the payload is handed to the ingest at once (`Broker.submit`: the pipeline decodes it and
   queues its readings for the next group commit — no task, no future per PUBLISH);
4. only when the ingest calls back after the commit is the PUBACK written — and PUBACKs
   leave in the order the PUBLISHes arrived (§4.6), even when commits finish out of order;
5. the committed reading is then routed to subscribers and retained as its topic's last
   reading.

Ingest outcomes: rejected (dead-lettered by the pipeline) → still acknowledged (the gateway
took custody) and counted; `RetriableError` (the buffer cannot commit) → no acknowledgement,
the connection is closed so the client redelivers.  QoS 2 is acknowledged with PUBREC after
the commit; a redelivered PUBLISH with a packet id awaiting PUBREL is answered again but not
ingested twice.

At most `max_inflight_in` commits per connection are pending, and `max_inflight_total` for
the whole broker; beyond either, sockets stop being read (TCP back-pressure onto the clients)
until acknowledgements catch up — an overloaded gateway slows its sensors down instead of
growing its memory.

Anything the protocol forbids closes this connection with a counted reason
(`gateway.errors.ProtocolViolation`); other connections never notice.  The will is published
when the connection ends without DISCONNECT, except on session take-over and broker shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edge.errors import RetriableError
from gateway.auth.acl import ANONYMOUS
from gateway.auth.topics import valid_topic_name
from gateway.errors import ProtocolViolation
from gateway.ingest import Origin
from gateway.mqtt import codec
from gateway.mqtt.broker import Broker, bump, log
from gateway.mqtt.control import AUTH, CLOSED, CONNECTED, NEW, ControlPackets, cert_identity
from gateway.mqtt.router import Message
from gateway.mqtt.session import Session

_NO_PIDS: set[int] = set()  # never added to: replaced by a set of its own first

# A PUBLISH handed to the ingest is a list: [ack packet once committed (None until then),
# topic, payload, qos, pid, retain].  QoS 1/2 ones also sit in `acks` until their turn.
_ACK, _TOPIC, _PAYLOAD, _QOS, _PID, _RETAIN = range(6)


class _Topic:
    """Cached per (connection, topic bytes): the decoded name and what the ACL said."""

    __slots__ = ("name", "key", "allowed", "origin")

    def __init__(self, name: str, key: bytes, allowed: bool, origin: Origin | None) -> None:
        self.name = name
        self.key = key  # the topic as it arrived (routing reuses the bytes)
        self.allowed = allowed
        self.origin = origin  # None: control traffic (routed, not ingested)


class MqttConnection(ControlPackets, asyncio.Protocol):
    TOPIC_CACHE_MAX = 64

    # 10,000 of these live at once: slots keep each one small
    __slots__ = ("broker", "listener", "transport", "peer", "state", "buf", "need", "opened",
                 "last_rx", "ka_timeout", "client_id", "role", "username", "session", "will",
                 "publish_will", "write_paused", "read_paused", "acks", "pending_qos2",
                 "topics", "identity", "auth_task", "max_packet", "max_inflight_in", "_now",
                 "_counters")

    def __init__(self, broker: Broker, listener: str = "tcp") -> None:
        self.broker = broker
        self._now = broker.clock.monotonic
        self._counters = broker.counters
        self.listener = listener
        self.transport: Any = None
        self.peer = ""
        self.state = NEW
        self.buf = bytearray()
        self.need = 0
        self.opened = 0.0
        self.last_rx = 0.0
        self.ka_timeout = 0.0
        self.client_id = ""
        self.role: str | None = None
        self.username: str | None = None
        self.session: Session | None = None
        self.will: codec.Will | None = None
        self.publish_will = True
        self.write_paused = False
        self.read_paused = False
        # a list, not a deque: it rarely holds more than one entry, and 10,000 empty deques
        # cost 7 MB (a deque allocates a 64-slot block up front)
        self.acks: list[list[Any]] = []
        #: QoS 2 packet ids being committed; a shared empty set until the first one (rare)
        self.pending_qos2: set[int] = _NO_PIDS
        self.topics: dict[bytes, _Topic] = {}
        self.identity: str | None = None  # verified TLS client certificate CN
        self.auth_task: asyncio.Task[None] | None = None
        s = broker.settings
        self.max_packet = s.max_packet_bytes
        self.max_inflight_in = s.max_inflight_in

    # -- transport callbacks ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        broker = self.broker
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.opened = self.last_rx = broker.clock.monotonic()
        broker.counters.connections_opened += 1
        if broker.closing or len(broker.conns) >= broker.settings.max_connections:
            broker.counters.connections_refused += 1
            broker.limited.warning("max_connections", "MQTT connection refused: broker full",
                                   peer=self.peer, max=broker.settings.max_connections)
            self.state = CLOSED
            transport.abort()
            return
        broker.conns.add(self)
        if hasattr(transport, "set_write_buffer_limits"):
            transport.set_write_buffer_limits(high=256 * 1024)
        settings = broker.settings
        tls = (settings.tls.tls if self.listener == "tls" and settings.tls else
               settings.websocket.tls if self.listener == "websocket" and settings.websocket
               else None)
        if tls is not None and tls.identity_as_username:
            self.identity = cert_identity(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        broker = self.broker
        broker.conns.discard(self)
        broker.paused.discard(self)
        if self.auth_task is not None:
            self.auth_task.cancel()
        session, self.session = self.session, None
        if session is None:
            return
        if self.will is None and not self.publish_will:
            broker.counters.disconnects_clean += 1
        else:
            broker.counters.disconnects_abnormal += 1
        will = self.will
        if will is not None and self.publish_will and not broker.closing:
            broker.counters.wills_published += 1
            broker.route(Message(will.topic, will.payload, min(will.qos, 1), will.retain,
                                 username=self.username), store=will.retain)
        broker.detach(self, session)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.session is not None:
            self.session.drain()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._now()
        self._counters.bytes_in += len(data)
        if self.state == CLOSED:
            return
        if self.buf:
            self.buf += data
            if len(self.buf) < self.need or self.state == AUTH:
                return
            data = bytes(self.buf)
            self.buf.clear()
        elif self.state == AUTH:
            self.buf += data
            return
        self._parse(data)

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        pos, n = 0, len(data)
        try:
            while pos < n:
                b0 = data[pos]
                if self.state == NEW and b0 != 0x10:  # not even a CONNECT: do not wait for more
                    raise ProtocolViolation("first packet is not CONNECT",
                                            reason="protocol_violation")
                i, length, shift = pos + 1, 0, 0
                while True:
                    if i >= n:
                        self._stash(data, pos, 0)
                        return
                    digit = data[i]
                    i += 1
                    length |= (digit & 0x7F) << shift
                    if digit < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolViolation("remaining length longer than 4 bytes",
                                                reason="malformed_packet")
                end = i + length
                if end - pos > self.max_packet:
                    raise ProtocolViolation(f"packet of {end - pos} bytes over the cap",
                                            reason="oversize_frame")
                if end > n:
                    self._stash(data, pos, end - pos)
                    return
                if b0 >> 4 == codec.PUBLISH and self.state == CONNECTED:
                    self._publish(b0, data, i, end)
                else:
                    self._control(b0, data[i:end])
                pos = end
                if self.state != CONNECTED:
                    if self.state == AUTH and pos < n:
                        self.buf += data[pos:]  # parsed once the CONNECT is authenticated
                        self.need = 0
                    return
        except ProtocolViolation as exc:
            self._violation(exc)

    def _stash(self, data: bytes, pos: int, need: int) -> None:
        self.buf += data[pos:] if pos else data
        self.need = need

    def _violation(self, exc: ProtocolViolation) -> None:
        broker = self.broker
        bump(broker.counters.protocol_errors, exc.reason)
        broker.limited.warning(f"violation:{exc.reason}", "MQTT protocol violation; closing",
                               reason=exc.reason, detail=exc.message, peer=self.peer,
                               client_id=self.client_id)
        self.close()

    # -- PUBLISH (the hot path) -------------------------------------------------------------

    def _publish(self, b0: int, data: bytes, i: int, end: int) -> None:
        qos = (b0 >> 1) & 3
        if qos == 3 or (qos == 0 and b0 & 0x08):
            raise ProtocolViolation("PUBLISH with QoS 3 or DUP on QoS 0",
                                    reason="malformed_packet")
        if i + 2 > end:
            raise ProtocolViolation("PUBLISH too short", reason="malformed_packet")
        ts = i + 2
        te = ts + ((data[i] << 8) | data[i + 1])
        pid = 0
        if qos:
            ps = te + 2
            if ps > end:
                raise ProtocolViolation("PUBLISH too short", reason="malformed_packet")
            pid = (data[te] << 8) | data[te + 1]
            if pid == 0:
                raise ProtocolViolation("PUBLISH with packet id 0", reason="protocol_violation")
        else:
            ps = te
            if ps > end:
                raise ProtocolViolation("PUBLISH too short", reason="malformed_packet")
        tkey = data[ts:te]
        topic = self.topics.get(tkey)
        if topic is None:
            topic = self._resolve_topic(tkey)
        self._counters.messages_in += 1
        payload = data[ps:end]
        retain = b0 & 1 == 1
        if topic.origin is not None and qos < 2:  # the common case: a sensor reading
            slot: list[Any] = [None, topic, payload, qos, pid, retain]
            if qos:
                acks = self.acks
                acks.append(slot)
                if len(acks) >= self.max_inflight_in:
                    self.pause_input()
            broker = self.broker
            broker.in_flight += 1
            if broker.in_flight > broker.max_in_flight:
                broker.overloaded(self)
            broker.submit(payload, topic.origin, durable=qos > 0, done=self._ingested,
                          token=slot)
            return
        broker = self.broker
        if not topic.allowed:
            broker.counters.acl_refused_publish += 1
            broker.limited.warning(f"acl:{self.username}", "MQTT publish refused by the ACL",
                                   username=self.username, topic=topic.name, peer=self.peer)
            self._answer_taken(qos, pid)
            return
        if qos == 2 and (pid in self.pending_qos2 or pid in self.session.awaiting_rel):  # type: ignore[union-attr]
            if pid not in self.pending_qos2:
                self._ack(codec.pubrec(pid))  # already committed: answer again, no re-ingest
            return
        if topic.origin is None:
            broker.route(Message(topic.name, payload, qos, retain, tkey, self.username),
                         store=retain)
            self._answer_taken(qos, pid)
            return
        slot = [None, topic, payload, qos, pid, retain]  # a QoS 2 reading
        self.acks.append(slot)
        if self.pending_qos2 is _NO_PIDS:
            self.pending_qos2 = set()
        self.pending_qos2.add(pid)
        if len(self.acks) >= self.max_inflight_in:
            self.pause_input()
        broker.in_flight += 1
        if broker.in_flight > broker.max_in_flight:
            broker.overloaded(self)
        broker.submit(payload, topic.origin, durable=True, done=self._ingested, token=slot)

    def _resolve_topic(self, tkey: bytes) -> _Topic:
        name = codec.decode_text(tkey)
        if not valid_topic_name(name):
            raise ProtocolViolation(f"PUBLISH to invalid topic {name!r}",
                                    reason="protocol_violation")
        grant = self.broker.acl.publish(self.role or ANONYMOUS, self.username, name)
        origin = None
        if grant is not None and grant.reading:
            origin = Origin(protocol="mqtt", peer=self.peer, device_hint=grant.device_hint,
                            topic=name, username=self.username)
        entry = _Topic(name, tkey, grant is not None, origin)
        if len(self.topics) >= self.TOPIC_CACHE_MAX:
            self.topics.clear()
        self.topics[tkey] = entry
        return entry

    def _answer_taken(self, qos: int, pid: int) -> None:
        """Acknowledge a PUBLISH that needs no commit (ACL-refused or control traffic)."""
        if qos == 1:
            self._ack(codec.puback(pid))
        elif qos == 2:
            self.session.awaiting(pid)  # type: ignore[union-attr]
            self._ack(codec.pubrec(pid))

    def _ingested(self, slot: list[Any], outcome: Any, error: BaseException | None) -> None:
        """The ingest's callback for one PUBLISH: acknowledge it in arrival order (§4.6),
        route the committed reading, or close the connection so the client redelivers."""
        broker = self.broker
        broker.settled()
        if error is not None:
            self._ingest_failed(slot, error)
            return
        counters = self._counters
        topic: _Topic = slot[_TOPIC]
        qos: int = slot[_QOS]
        if outcome.rejected is not None:
            bump(counters.readings_rejected, outcome.rejected)
        else:
            counters.readings_accepted += 1
            broker.route_reading(topic.name, topic.key, slot[_PAYLOAD], qos, slot[_RETAIN],
                                 self.username)
        if qos == 0:
            return
        pid: int = slot[_PID]
        if qos == 1:
            slot[_ACK] = codec.puback(pid)
        else:
            self.pending_qos2.discard(pid)
            session = self.session
            if session is not None:
                session.awaiting(pid)
            slot[_ACK] = codec.pubrec(pid)
        if self.state == CLOSED:
            self.acks.clear()
            return
        counters.readings_acked += 1
        acks = self.acks
        if len(acks) == 1 and acks[0] is slot:  # nothing ahead of it: the common case
            acks.clear()
            self.send(slot[_ACK])
            if self.read_paused:
                self.resume_input()
        elif acks and acks[0] is slot:
            self._flush_acks()

    def _ingest_failed(self, slot: list[Any], exc: BaseException) -> None:
        broker = self.broker
        if isinstance(exc, RetriableError):
            broker.counters.ingest_unavailable += 1
            broker.limited.warning("ingest_unavailable",
                                   "ingest could not commit; closing so the client redelivers",
                                   reason=exc.reason, detail=exc.message)
        else:
            broker.counters.ingest_errors += 1
            log.error("ingest failed unexpectedly; closing so the client redelivers",
                      exc_info=exc, extra={"fields": {"topic": slot[_TOPIC].name,
                                                      "peer": self.peer}})
        self.close()

    def _ack(self, packet: bytes) -> None:
        """Send an acknowledgement, behind any that still wait for a commit (§4.6 order)."""
        if self.acks:
            self.acks.append([packet])
            self._flush_acks()
        else:
            self.send(packet)

    def _flush_acks(self) -> None:
        acks = self.acks
        if acks and acks[0][0] is not None:
            ready, n = 1, len(acks)
            while ready < n and acks[ready][0] is not None:
                ready += 1
            out = [a[0] for a in acks[:ready]]
            del acks[:ready]
            if self.state != CLOSED:
                self.send(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[arg-type]
        if self.read_paused:
            self.resume_input()

    def pause_input(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_input(self) -> None:
        """Read again once this connection's commits caught up, unless the broker as a whole
        is over its in-flight limit or shutting down."""
        broker = self.broker
        if (self.read_paused and self.state != CLOSED and not broker.closing
                and self not in broker.paused
                and len(self.acks) <= self.max_inflight_in // 2):
            self.read_paused = False
            self.transport.resume_reading()

    # -- output and closing -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        # is_closing: the peer may be gone before connection_lost has run
        if self.state != CLOSED and not self.transport.is_closing():
            self._counters.bytes_out += len(data)
            self.transport.write(data)

    def close(self) -> None:
        """Close after flushing what was written (CONNACK refusals, last acks)."""
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.close()

    def taken_over(self) -> None:
        """Another connection took this client id: close without the will."""
        self.publish_will = False
        self.session = None
        self.close()

    def check_deadline(self, now: float) -> None:
        if self.state == NEW and now - self.opened > self.broker.settings.connect_timeout_s:
            bump(self.broker.counters.timeouts, "connect")
            self.close()
        elif self.state == CONNECTED and self.ka_timeout and now - self.last_rx > self.ka_timeout:
            bump(self.broker.counters.timeouts, "keepalive")
            self.close()

