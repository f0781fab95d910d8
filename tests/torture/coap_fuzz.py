"""Hostile CoAP against a running gateway: random UDP datagrams, and well-formed POSTs
(aiocoap client) carrying random payloads and content formats.

    stats = asyncio.run(fuzz(port, datagrams=200, posts=50, seed=1, path="r/cx_dev"))
    code = asyncio.run(post(port, "r/sensor_1", payload))      # "2.04 Changed" etc.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from .procs import HOST


@dataclass
class CoapFuzzStats:
    datagrams: int = 0
    posts: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def _payload(rng: random.Random) -> tuple[bytes, int | None]:
    pick = rng.randrange(6)
    if pick == 0:
        return rng.randbytes(rng.randrange(0, 300)), rng.choice((None, 0, 50, 60, 65001, 42))
    if pick == 1:
        return b"{" + rng.randbytes(rng.randrange(0, 50)), 50
    if pick == 2:  # a message with a hostile field
        msg = {"device_id": "cx_dev", "value": rng.choice(("x", None, [1], 1e400, True)),
               "timestamp": rng.choice((0, -1, "soon", 10**20))}
        return json.dumps(msg, default=str).encode(), 50
    if pick == 3:  # many readings
        return json.dumps([{"value": i} for i in range(rng.randrange(1000, 1500))]).encode(), 50
    if pick == 4:  # a CBOR / msgpack claim over JSON bytes
        return b'{"value": 1}', rng.choice((60, 65001))
    return str(rng.uniform(-1e6, 1e6)).encode(), rng.choice((None, 0))


def _datagram(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randrange(0, 200))
    # a CoAP header (version 1, CON/NON, a POST or a bogus code) with garbage after it
    first = 0x40 | (rng.randrange(2) << 4) | rng.randrange(9)
    head = bytes((first, rng.choice((2, 1, 0x45, 0xFF)))) + rng.randbytes(2)
    return head + rng.randbytes(rng.randrange(0, 100))


async def post(port: int, path: str, payload: bytes, content_format: int | None = 50,
               timeout_s: float = 20) -> str:
    from aiocoap import POST, Context, Message

    ctx = await Context.create_client_context()
    try:
        msg = Message(code=POST, uri=f"coap://{HOST}:{port}/{path}", payload=payload)
        if content_format is not None:
            msg.opt.content_format = content_format
        resp = await asyncio.wait_for(ctx.request(msg).response, timeout_s)
        return str(resp.code)
    finally:
        await ctx.shutdown()


async def fuzz(port: int, *, datagrams: int, posts: int, seed: int, path: str
               ) -> CoapFuzzStats:
    from aiocoap import POST, Context, Message

    rng = random.Random(seed)
    stats = CoapFuzzStats()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(datagrams):
            sock.sendto(_datagram(rng), (HOST, port))
            stats.datagrams += 1
    ctx = await Context.create_client_context()
    try:
        for _ in range(posts):
            payload, fmt = _payload(rng)
            msg = Message(code=POST, uri=f"coap://{HOST}:{port}/{path}", payload=payload)
            if fmt is not None:
                msg.opt.content_format = fmt
            t0 = time.monotonic()
            try:
                resp = await asyncio.wait_for(ctx.request(msg).response, 30)
                stats.codes[str(resp.code)] += 1
            except Exception as exc:  # noqa: BLE001 - counted: no answer is a finding
                stats.errors[f"{type(exc).__name__} after {time.monotonic() - t0:.0f} s"] += 1
            stats.posts += 1
    finally:
        await ctx.shutdown()
    return stats
