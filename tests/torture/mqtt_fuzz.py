"""Raw MQTT packets against a running gateway over real sockets: random bytes, truncated and
oversize frames, protocol violations — and, between them, a well-behaved client that must
still be served (CONNACK, then PUBACK for a QoS 1 reading).

    stats = asyncio.run(fuzz(port, cases=500, seed=1, good_every=25))

Each case opens its own connection, sends its bytes, then reads until the gateway closes the
connection or 1 s passes.  `FuzzStats` counts cases per kind, how each connection ended,
and the well-behaved client's successes and failures.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from .procs import HOST


def s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        d, n = n & 0x7F, n >> 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + remaining(len(body)) + body


def connect(client_id: bytes = b"fuzz", keepalive: int = 30, flags: int = 0x02,
            extra: bytes = b"") -> bytes:
    return frame(0x10, s(b"MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
                 + s(client_id) + extra)


def connect_auth(client_id: str, username: str | None, password: str | None) -> bytes:
    """CONNECT (clean session) with a user name and/or password."""
    flags, extra = 0x02, b""
    if username is not None:
        flags |= 0x80
        extra += s(username.encode())
    if password is not None:
        flags |= 0x40
        extra += s(password.encode())
    return connect(client_id.encode(), flags=flags, extra=extra)


def subscribe(pid: int, topic_filter: str, qos: int = 1) -> bytes:
    return frame(0x82, pid.to_bytes(2, "big") + s(topic_filter.encode()) + bytes((qos,)))


def publish(topic: bytes, payload: bytes, qos: int = 1, pid: int = 1, first: int | None = None
            ) -> bytes:
    head = 0x30 | (qos << 1) if first is None else first
    return frame(head, s(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload)


def reading(device: str, seq: int) -> bytes:
    return json.dumps({"device_id": device, "device_type": "temperature", "unit": "celsius",
                       "timestamp": int(time.time() * 1000), "value": 21.5,
                       "seq": seq}).encode()


def _case(rng: random.Random, max_packet: int) -> tuple[str, bytes]:
    """One hostile byte string and its kind."""
    kind = rng.choice(KINDS)
    good = connect(f"fz{rng.randrange(10**6)}".encode())
    topic = f"factory/l1/temperature/fz_dev_{rng.randrange(50):02d}".encode()
    pub = publish(topic, reading(topic.rsplit(b"/", 1)[1].decode(), rng.randrange(10**6)))
    if kind == "random_bytes":
        return kind, rng.randbytes(rng.randrange(1, 400))
    if kind == "random_after_connect":
        return kind, good + rng.randbytes(rng.randrange(1, 400))
    if kind == "truncated_connect":
        return kind, good[:rng.randrange(1, len(good))]
    if kind == "truncated_publish":
        return kind, good + pub[:rng.randrange(1, len(pub))]
    if kind == "bit_flipped_publish":
        b = bytearray(good + pub)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(good), len(b))
            b[i] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "oversize_frame":
        # announces more than max_packet_bytes and really sends it
        size = max_packet + rng.randrange(1, 4096)
        return kind, good + bytes((0x32,)) + remaining(size) + rng.randbytes(size)
    if kind == "oversize_header_only":
        return kind, good + bytes((0x32,)) + remaining(max_packet + 10**6)
    if kind == "remaining_length_5_bytes":
        return kind, good + b"\x30\xff\xff\xff\xff\x7f"
    if kind == "bad_utf8_topic":
        return kind, good + publish(b"factory/l1/t/\xff\xfe", b"1", qos=1)
    if kind == "nul_in_topic":
        return kind, good + publish(b"factory/l1/t/a\x00b", b"1", qos=1)
    if kind == "qos3":
        return kind, good + publish(topic, b"1", qos=0, first=0x36)
    if kind == "packet_id_zero":
        return kind, good + publish(topic, b"1", qos=1, pid=0)
    if kind == "wildcard_topic":
        return kind, good + publish(b"factory/+/t/#", b"1", qos=1)
    if kind == "second_connect":
        return kind, good + good
    if kind == "server_only_packet":
        return kind, good + bytes((rng.choice((0x20, 0x90, 0xB0, 0xD0)), 2, 0, 1))
    if kind == "reserved_type":
        return kind, good + bytes((rng.choice((0x00, 0xF0)), 0))
    if kind == "unknown_protocol":
        return kind, frame(0x10, s(b"MQXX") + bytes((4, 2, 0, 30)) + s(b"x"))
    if kind == "garbage_payload":
        return kind, good + publish(topic, rng.randbytes(rng.randrange(0, 2000)))
    if kind == "many_small_packets":
        return kind, good + b"".join(publish(topic, rng.randbytes(rng.randrange(0, 20)),
                                             pid=i + 1) for i in range(rng.randrange(5, 60)))
    if kind == "http_request":
        return kind, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    if kind == "tls_hello":
        return kind, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(64)
    raise AssertionError(kind)


#: kinds the gateway must answer by closing the connection (docs/mqtt-ingest.md, "Bad
#: input"); the others may legitimately stay open (a truncated packet waits for its rest, a
#: valid PUBLISH with a garbage payload is acknowledged)
MUST_CLOSE = frozenset({"oversize_frame", "oversize_header_only", "remaining_length_5_bytes",
                        "bad_utf8_topic", "nul_in_topic", "qos3", "packet_id_zero",
                        "wildcard_topic", "second_connect", "server_only_packet",
                        "reserved_type", "unknown_protocol", "http_request", "tls_hello"})

KINDS = ("random_bytes", "random_after_connect", "truncated_connect", "truncated_publish",
         "bit_flipped_publish", "oversize_frame", "oversize_header_only",
         "remaining_length_5_bytes", "bad_utf8_topic", "nul_in_topic", "qos3",
         "packet_id_zero", "wildcard_topic", "second_connect", "server_only_packet",
         "reserved_type", "unknown_protocol", "garbage_payload", "many_small_packets",
         "http_request", "tls_hello")


@dataclass
class FuzzStats:
    cases: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)
    #: kind -> how its connections ended
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    good_ok: int = 0
    good_failed: list[str] = field(default_factory=list)
    good_latency_ms: list[float] = field(default_factory=list)


    def ended(self, kind: str, how: str) -> None:
        self.endings[how] += 1
        self.by_kind.setdefault(kind, Counter())[how] += 1

    def left_open(self) -> dict[str, int]:
        """MUST_CLOSE kinds whose connection was still open after 1 s."""
        return {k: c["still_open"] for k, c in self.by_kind.items()
                if k in MUST_CLOSE and c["still_open"]}


async def _one(port: int, kind: str, data: bytes, stats: FuzzStats) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    except (OSError, TimeoutError):
        stats.ended(kind, "connect_failed")
        return
    try:
        writer.write(data)
        await writer.drain()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not chunk:
                stats.ended(kind, "closed_by_gateway")
                return
        stats.ended(kind, "still_open")
    except TimeoutError:
        stats.ended(kind, "still_open")
    except (ConnectionResetError, BrokenPipeError):
        stats.ended(kind, "reset_by_gateway")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass


async def good_client(port: int, device: str, seq: int) -> float:
    """CONNECT + a QoS 1 reading; the ms until its PUBACK.  Raises if not served."""
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    try:
        writer.write(connect(device.encode()))
        connack = await asyncio.wait_for(reader.readexactly(4), 10)
        if connack != b"\x20\x02\x00\x00":
            raise AssertionError(f"CONNACK {connack!r}")
        writer.write(publish(f"factory/l1/temperature/{device}".encode(), reading(device, seq),
                             pid=7))
        puback = await asyncio.wait_for(reader.readexactly(4), 10)
        if puback != b"\x40\x02\x00\x07":
            raise AssertionError(f"PUBACK {puback!r}")
        writer.write(b"\xe0\x00")  # DISCONNECT
        return (time.monotonic() - t0) * 1000
    finally:
        writer.close()


async def fuzz(port: int, *, cases: int, seed: int, max_packet: int = 262_144,
               good_every: int = 25, concurrency: int = 8) -> FuzzStats:
    rng = random.Random(seed)
    stats = FuzzStats()
    sem = asyncio.Semaphore(concurrency)

    async def run_case(kind: str, data: bytes) -> None:
        async with sem:
            await _one(port, kind, data, stats)

    batch: list[asyncio.Task[None]] = []
    for i in range(cases):
        kind, data = _case(rng, max_packet)
        stats.cases[kind] += 1
        batch.append(asyncio.create_task(run_case(kind, data), name=f"fuzz-{i}"))
        if (i + 1) % good_every == 0:
            await asyncio.gather(*batch)
            batch = []
            try:
                stats.good_latency_ms.append(await good_client(port, "fz_good", i))
                stats.good_ok += 1
            except (OSError, TimeoutError, AssertionError,
                    asyncio.IncompleteReadError) as exc:
                stats.good_failed.append(f"after case {i}: {type(exc).__name__}: {exc}")
    await asyncio.gather(*batch)
    return stats
