"""Bad input over real sockets: every broken connection is closed and counted, and the broker
keeps serving everyone else."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.mqtt import MqttServer, MqttSettings
from gateway.testing import RecordingIngest

HOST = "127.0.0.1"
MAX_PACKET = 4096


def s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def frame(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray((first,))
    while True:
        d, n = n & 0x7F, n >> 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out) + body


CONNECT = frame(0x10, s(b"MQTT") + bytes((4, 0x02, 0, 60)) + s(b"raw"))


@dataclass
class Gateway:
    server: MqttServer
    ingest: RecordingIngest


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    ingest = RecordingIngest()
    settings = MqttSettings(host=HOST, port=0, allow_anonymous=True, max_packet_bytes=MAX_PACKET,
                            connect_timeout_s=1.0)
    async with MqttServer(settings, ingest=ingest) as server:
        yield Gateway(server, ingest)


async def send_and_wait_close(port: int, data: bytes, *, connect_first: bool) -> bytes:
    """Send `data` (after a CONNECT if asked); return everything read until the server
    closed the connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    if connect_first:
        writer.write(CONNECT)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
    writer.write(data)
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(4096), 5):
            got += chunk
    except ConnectionResetError:
        pass
    writer.close()
    return got


async def still_serves(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection(HOST, gw.server.port)
    writer.write(CONNECT + frame(0x32, s(b"devices/d9/t") + b"\x00\x01" + b"9.9"))
    assert await asyncio.wait_for(reader.readexactly(8), 5) == (
        b"\x20\x02\x00\x00" + b"\x40\x02\x00\x01")
    writer.close()


@pytest.mark.parametrize("data,connect_first,reason", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", False, "protocol_violation"),  # TLS hello
    (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", False, "protocol_violation"),
    (b"\x10\xff\xff\xff\xff\xff", False, "malformed_packet"),  # remaining length > 4 bytes
    (b"\xf0\x00", True, "unknown_packet_type"),
    (b"\x30\x05\x00\x09abc", True, "malformed_packet"),  # topic longer than the packet
    (b"\x30\x05\x00\x03a#b", True, "protocol_violation"),  # wildcard in a topic name
    (CONNECT, True, "protocol_violation"),  # a second CONNECT
])
async def test_garbage_is_closed_and_counted(gw: Gateway, data: bytes, connect_first: bool,
                                             reason: str) -> None:
    await send_and_wait_close(gw.server.port, data, connect_first=connect_first)
    assert gw.server.stats()["protocol_errors"] == {reason: 1}
    await still_serves(gw)


async def test_oversize_frame_drops_the_connection(gw: Gateway) -> None:
    payload = b"x" * MAX_PACKET
    await send_and_wait_close(gw.server.port, frame(0x30, s(b"devices/d1/t") + payload),
                              connect_first=True)
    assert gw.server.stats()["protocol_errors"] == {"oversize_frame": 1}
    assert gw.ingest.calls == []
    await still_serves(gw)


async def test_big_payload_under_the_frame_cap_goes_to_the_pipeline(gw: Gateway) -> None:
    """Payload limits are the pipeline's (it dead-letters with reason `oversize`); the broker
    only enforces the hard frame cap."""
    gw.ingest.reject[b"y" * 3000] = "oversize"
    reader, writer = await asyncio.open_connection(HOST, gw.server.port)
    writer.write(CONNECT + frame(0x32, s(b"devices/d1/t") + b"\x00\x01" + b"y" * 3000))
    assert await asyncio.wait_for(reader.readexactly(8), 5) == (
        b"\x20\x02\x00\x00" + b"\x40\x02\x00\x01")
    writer.close()
    assert gw.server.stats()["readings_rejected"] == {"oversize": 1}


async def test_half_a_connect_times_out(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection(HOST, gw.server.port)
    writer.write(CONNECT[:5])
    assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed by the connect timeout
    writer.close()
    assert gw.server.stats()["timeouts"] == {"connect": 1}


async def test_random_garbage_storm_never_hurts_the_broker(gw: Gateway) -> None:
    """200 connections of random bytes (some after a valid CONNECT) at once."""
    rng = random.Random(1234)

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, gw.server.port)
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        writer.write((CONNECT if i % 2 else b"") + junk)
        try:
            await asyncio.wait_for(reader.read(65536), 3)
        except (TimeoutError, ConnectionResetError):
            pass
        writer.close()

    await asyncio.gather(*(one(i) for i in range(200)))
    stats = gw.server.stats()
    assert sum(stats["protocol_errors"].values()) > 100
    await still_serves(gw)
