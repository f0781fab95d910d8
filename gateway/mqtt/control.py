"""Every MQTT control packet but PUBLISH: CONNECT (authentication, sessions), SUBSCRIBE,
UNSUBSCRIBE, PUBACK, PUBREL, PINGREQ, DISCONNECT — the slow path of `MqttConnection`, kept
apart from the per-reading hot path in `gateway.mqtt.connection`.

CONNECT, in order: protocol level (CONNACK 1), keepalive cap (CONNACK 2), client id (CONNACK
2 for an empty one with clean_session=0), identity — a verified TLS client certificate, or
username/password (the verified cache answers at once; otherwise the socket stops being read
while argon2 runs in the authenticator's worker pool), anonymous only if allowed (CONNACK 5)
— then the will topic's ACL (CONNACK 5), session take-over, CONNACK 0, and redelivery of a
persistent session's unacknowledged messages.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import TYPE_CHECKING, Any, cast

from gateway.auth.acl import ANONYMOUS
from gateway.auth.credentials import Account
from gateway.auth.topics import valid_topic_filter, valid_topic_name
from gateway.errors import ProtocolViolation, Unauthorized
from gateway.mqtt import codec
from gateway.mqtt.broker import bump, log
from gateway.mqtt.codec import Connect

if TYPE_CHECKING:
    from gateway.mqtt.broker import Broker
    from gateway.mqtt.connection import MqttConnection
    from gateway.mqtt.session import Session

NEW, AUTH, CONNECTED, CLOSED = 0, 1, 2, 3


class ControlPackets:
    """Mixed into `MqttConnection`, which owns the state declared here."""

    if not TYPE_CHECKING:
        __slots__ = ()  # MqttConnection declares the slots
    else:
        broker: Broker
        state: int
        buf: bytearray
        peer: str
        client_id: str
        role: str | None
        username: str | None
        session: Session | None
        will: codec.Will | None
        publish_will: bool
        write_paused: bool
        ka_timeout: float
        identity: str | None
        auth_task: asyncio.Task[None] | None

        def send(self, data: bytes) -> None: ...
        def close(self) -> None: ...
        def _ack(self, packet: bytes) -> None: ...
        def _parse(self, data: bytes) -> None: ...
        def pause_input(self) -> None: ...
        def resume_input(self) -> None: ...

    def _control(self, b0: int, body: bytes) -> None:
        kind, flags = b0 >> 4, b0 & 0x0F
        if self.state == NEW:
            if kind != codec.CONNECT:
                raise ProtocolViolation("first packet is not CONNECT", reason="protocol_violation")
            if flags:
                raise ProtocolViolation("CONNECT flags set", reason="malformed_packet")
            self._connect(codec.parse_connect(body))
            return
        if kind in (codec.PUBREL, codec.SUBSCRIBE, codec.UNSUBSCRIBE):
            if flags != 2:
                raise ProtocolViolation("reserved header flags", reason="malformed_packet")
        elif flags:
            raise ProtocolViolation("reserved header flags", reason="malformed_packet")
        session = self.session
        assert session is not None
        if kind == codec.PUBACK:
            session.acked(codec.parse_packet_id(body))
        elif kind == codec.PINGREQ:
            if body:
                raise ProtocolViolation("PINGREQ with a body", reason="malformed_packet")
            self.send(codec.PINGRESP_PACKET)
        elif kind == codec.PUBREL:
            pid = codec.parse_packet_id(body)
            session.awaiting_rel.discard(pid)
            self._ack(codec.pubcomp(pid))
        elif kind == codec.SUBSCRIBE:
            self._subscribe(*codec.parse_subscribe(body))
        elif kind == codec.UNSUBSCRIBE:
            pid, filters = codec.parse_unsubscribe(body)
            for flt in filters:
                self.broker.unsubscribe(session, flt)
            self.send(codec.unsuback(pid))
        elif kind == codec.DISCONNECT:
            if body:
                raise ProtocolViolation("DISCONNECT with a body", reason="malformed_packet")
            self.will = None
            self.publish_will = False
            self.close()
        elif kind in (codec.CONNECT, codec.PUBREC, codec.PUBCOMP, codec.CONNACK, codec.SUBACK,
                      codec.UNSUBACK, codec.PINGRESP):
            raise ProtocolViolation(f"unexpected packet type {kind}",
                                    reason="protocol_violation")
        else:
            raise ProtocolViolation(f"packet type {kind}", reason="unknown_packet_type")

    def _subscribe(self, pid: int, requests: list[tuple[str, int]]) -> None:
        broker = self.broker
        session = self.session
        assert session is not None
        codes, granted = [], []
        for flt, qos in requests:
            if not valid_topic_filter(flt):
                bump(broker.counters.protocol_errors, "bad_topic_filter")
                codes.append(codec.SUBACK_FAILURE)
            elif not broker.acl.subscribe(self.role or ANONYMOUS, self.username, flt):
                broker.counters.acl_refused_subscribe += 1
                broker.limited.warning(f"acl-sub:{self.username}",
                                       "MQTT subscription refused by the ACL",
                                       username=self.username, filter=flt, peer=self.peer)
                codes.append(codec.SUBACK_FAILURE)
            else:
                codes.append(min(qos, 1))
                granted.append((flt, qos))
        self.send(codec.suback(pid, codes))  # SUBACK before any retained message (§3.8.4)
        for flt, qos in granted:
            broker.subscribe(session, flt, qos)

    def _connect(self, c: Connect) -> None:
        broker = self.broker
        settings = broker.settings
        if c.level not in (3, 4):
            return self._refuse(codec.REFUSED_PROTOCOL_VERSION, "protocol_version")
        cap = settings.keepalive_cap_s
        if cap and (c.keepalive == 0 or c.keepalive > cap):
            return self._refuse(codec.REFUSED_IDENTIFIER, "keepalive_over_cap")
        client_id = c.client_id
        if not client_id:
            if not c.clean_session:
                return self._refuse(codec.REFUSED_IDENTIFIER, "empty_client_id")
            client_id = "auto-" + uuid.uuid4().hex
        if c.will is not None and not valid_topic_name(c.will.topic):
            raise ProtocolViolation("invalid will topic", reason="protocol_violation")
        self.client_id = client_id
        auth = broker.auth
        if self.identity is not None:
            account = auth.account(self.identity) if auth is not None else None
            if account is None:
                return self._refuse(codec.REFUSED_NOT_AUTHORIZED, "unknown_identity")
            return self._accept(c, account.role, account.username)
        if c.username is None:
            if not settings.allow_anonymous:
                return self._refuse(codec.REFUSED_NOT_AUTHORIZED, "anonymous_refused")
            return self._accept(c, ANONYMOUS, None)
        if auth is None:  # no credentials file: only reachable with allow_anonymous
            return self._accept(c, ANONYMOUS, c.username)
        account = auth.check_cached(c.username, c.password or b"")
        if account is not None:
            return self._accept(c, account.role, account.username)
        self.state = AUTH
        self.pause_input()  # what the client sends meanwhile waits in the kernel, not here
        self.auth_task = broker.spawn(self._authenticate(c), "mqtt-auth")

    async def _authenticate(self, c: Connect) -> None:
        assert self.broker.auth is not None and c.username is not None
        try:
            account: Account = await self.broker.auth.authenticate(c.username, c.password or b"")
        except Unauthorized as exc:
            if self.state != CLOSED:
                self._refuse(codec.REFUSED_BAD_CREDENTIALS, exc.reason)
            return
        except Exception:
            log.exception("authentication failed unexpectedly")
            if self.state != CLOSED:
                self._refuse(codec.REFUSED_UNAVAILABLE, "auth_error")
            return
        finally:
            self.auth_task = None
        if self.state == CLOSED:
            return
        self._accept(c, account.role, account.username)
        if self.state == CONNECTED:
            self.resume_input()
            if self.buf:
                data = bytes(self.buf)
                self.buf.clear()
                self._parse(data)

    def _refuse(self, code: int, reason: str) -> None:
        broker = self.broker
        bump(broker.counters.auth_failures, reason)
        broker.limited.warning(f"refused:{reason}", "MQTT connection refused",
                               reason=reason, peer=self.peer, client_id=self.client_id)
        self.send(codec.connack(False, code))
        self.close()

    def _accept(self, c: Connect, role: str, username: str | None) -> None:
        broker = self.broker
        if c.will is not None and broker.acl.publish(role, username, c.will.topic) is None:
            broker.counters.acl_refused_publish += 1
            return self._refuse(codec.REFUSED_NOT_AUTHORIZED, "will_acl")
        self.role, self.username = role, username
        self.will = c.will
        self.ka_timeout = c.keepalive * 1.5
        session, present = broker.attach(cast("MqttConnection", self), self.client_id,
                                         c.clean_session)
        self.session = session
        self.state = CONNECTED
        broker.counters.connects += 1
        self.send(codec.connack(present, codec.ACCEPTED))
        session.resume(self)


def cert_identity(transport: Any) -> str | None:
    """The CN of a verified client certificate, if the peer presented one."""
    sslobj = transport.get_extra_info("ssl_object")
    if not isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
        return None
    cert = sslobj.getpeercert()
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
