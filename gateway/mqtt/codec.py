"""MQTT 3.1.1 control packets: parse what clients send, encode what the broker sends.  Pure.

Parsers take the *body* of one packet (the bytes after the fixed header) and raise
`gateway.errors.ProtocolViolation` with a counted `reason` for anything the spec forbids.
PUBLISH is parsed inline by the connection (it is the hot path); everything else is here.
Encoders return complete packets as `bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ProtocolViolation

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    8, 9, 10, 11, 12, 13, 14)

#: CONNACK return codes (§3.2.2.3)
ACCEPTED = 0
REFUSED_PROTOCOL_VERSION = 1
REFUSED_IDENTIFIER = 2
REFUSED_UNAVAILABLE = 3
REFUSED_BAD_CREDENTIALS = 4
REFUSED_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80

#: protocol name → protocol level accepted (3.1.1, and 3.1 which some old firmware speaks)
PROTOCOLS = {b"MQTT": 4, b"MQIsdp": 3}

PINGRESP_PACKET = b"\xd0\x00"


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    level: int  # 4 = 3.1.1, 3 = 3.1; anything else is refused with CONNACK 1
    clean_session: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None


def _bad(reason: str, message: str) -> ProtocolViolation:
    return ProtocolViolation(message, reason=reason)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise _bad("malformed_packet", "packet ends early")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise _bad("malformed_packet", "packet ends early")
        v = (self.data[self.pos] << 8) | self.data[self.pos + 1]
        self.pos += 2
        return v

    def binary(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.data):
            raise _bad("malformed_packet", "length prefix beyond the packet end")
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(v)

    def text(self) -> str:
        return decode_text(self.binary())

    def remaining(self) -> int:
        return len(self.data) - self.pos


def decode_text(raw: bytes) -> str:
    """UTF-8 string per §1.5.3: well-formed and without U+0000."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("bad_utf8", "a string is not valid UTF-8") from None
    if "\x00" in s:
        raise _bad("bad_utf8", "a string contains U+0000")
    return s


def parse_connect(body: bytes) -> Connect:
    r = _Reader(body)
    name = r.binary()
    level = r.u8()
    if PROTOCOLS.get(name) != level:
        if name not in PROTOCOLS:
            raise _bad("protocol_violation", f"unknown protocol name {name!r}")
        # a known name at an unknown level is answered with CONNACK 1 (§3.1.2.2)
        return Connect(level, True, 0, "", None, None, None)
    flags = r.u8()
    if flags & 0x01:
        raise _bad("protocol_violation", "CONNECT reserved flag is set")
    clean = bool(flags & 0x02)
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if not will_flag and (will_qos or will_retain):
        raise _bad("protocol_violation", "will QoS/retain set without a will")
    if will_qos == 3:
        raise _bad("protocol_violation", "will QoS 3")
    if has_password and not has_username and level == 4:
        raise _bad("protocol_violation", "password without username")
    keepalive = r.u16()
    client_id = r.text()
    will = None
    if will_flag:
        will_topic = r.text()
        will_payload = r.binary()
        will = Will(will_topic, will_payload, will_qos, will_retain)
    username = r.text() if has_username else None
    password = r.binary() if has_password else None
    if r.remaining():
        raise _bad("malformed_packet", "bytes after the CONNECT payload")
    return Connect(level, clean, keepalive, client_id, will, username, password)


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    r = _Reader(body)
    pid = r.u16()
    if pid == 0:
        raise _bad("protocol_violation", "SUBSCRIBE with packet id 0")
    out = []
    while r.remaining():
        flt = r.text()
        qos = r.u8()
        if qos > 2:  # QoS 3, or reserved upper bits set
            raise _bad("protocol_violation", "SUBSCRIBE requested QoS above 2 / reserved bits")
        out.append((flt, qos))
    if not out:
        raise _bad("protocol_violation", "SUBSCRIBE without a topic filter")
    return pid, out


def parse_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    r = _Reader(body)
    pid = r.u16()
    if pid == 0:
        raise _bad("protocol_violation", "UNSUBSCRIBE with packet id 0")
    out = []
    while r.remaining():
        out.append(r.text())
    if not out:
        raise _bad("protocol_violation", "UNSUBSCRIBE without a topic filter")
    return pid, out


def parse_packet_id(body: bytes) -> int:
    if len(body) != 2:
        raise _bad("malformed_packet", "acknowledgement packet must have a 2-byte body")
    return (body[0] << 8) | body[1]


def encode_remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def connack(session_present: bool, code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present and code == ACCEPTED else 0, code))


def puback(pid: int) -> bytes:
    return bytes((0x40, 2, pid >> 8, pid & 0xFF))


def pubrec(pid: int) -> bytes:
    return bytes((0x50, 2, pid >> 8, pid & 0xFF))


def pubcomp(pid: int) -> bytes:
    return bytes((0x70, 2, pid >> 8, pid & 0xFF))


def suback(pid: int, codes: list[int]) -> bytes:
    return bytes((0x90,)) + encode_remaining_length(2 + len(codes)) + bytes(
        (pid >> 8, pid & 0xFF, *codes))


def unsuback(pid: int) -> bytes:
    return bytes((0xB0, 2, pid >> 8, pid & 0xFF))


def publish_parts(topic: bytes, payload: bytes, qos: int, retain: bool,
                  dup: bool = False) -> tuple[bytes, bytes]:
    """(head, payload) of a PUBLISH whose packet id (QoS > 0) goes between them.

    Fan-out encodes the head once per message and only the 2-byte id per subscriber.
    """
    flags = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    length = 2 + len(topic) + (2 if qos else 0) + len(payload)
    head = bytes((flags,)) + encode_remaining_length(length) + len(topic).to_bytes(2, "big") + topic
    return head, payload


def publish(topic: bytes, payload: bytes, qos: int, retain: bool, pid: int = 0,
            dup: bool = False) -> bytes:
    head, body = publish_parts(topic, payload, qos, retain, dup)
    if qos:
        return head + pid.to_bytes(2, "big") + body
    return head + body
