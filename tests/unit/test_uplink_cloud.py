"""A scripted stand-in for cloud ingest on 127.0.0.1 (a real aiohttp server), used by the
uplink tests, and the tests that show it checks what the real one checks.

It verifies every request's signature with `edge.signing` and decodes the frame with
`edge.codec`, answers like `cloud.ingest` (200 with `duplicate`, 400, 401, 413, 503 +
Retry-After) and keeps what it received.  `script` holds one action per request, in order;
when it is empty every request is accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from edge.codec import Batch, decode_batch, peek_header
from edge.errors import DecodeError
from edge.signing import AuthError, sign_request, verify_request

GATEWAY = "gw-test"
SECRET = b"uplink-test-secret-0123456789"


@dataclass(frozen=True)
class Answer:
    """Answer with `status` (and `headers`, JSON `error`); 200 produces the batch."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = "scripted"
    #: seconds to wait before answering
    delay_s: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Never answer (the client times out).  `produce`: the batch was taken before the
    answer got lost — its resend must be answered as a duplicate."""

    produce: bool = False


@dataclass
class Request:
    t: float
    body: bytes
    headers: dict[str, str]
    sequence: int
    status: int | None = None


class FakeIngest:
    def __init__(self, secret: bytes = SECRET, gateway: str = GATEWAY) -> None:
        self.secrets = {gateway: secret}
        self.script: deque[Answer | Hang] = deque()
        self.requests: list[Request] = []
        #: (gateway, sequence) -> the batch, for every batch produced (once each)
        self.produced: dict[tuple[str, int], Batch] = {}
        #: batches in the order they were produced
        self.order: list[Batch] = []
        self.auth_failures: list[str] = []
        self.max_body_bytes: int | None = None
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    # -- server ------------------------------------------------------------------------------
    async def start(self, port: int = 0) -> FakeIngest:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/batches", self._post)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _produce(self, body: bytes) -> bool:
        """Decode and keep; False when it had been produced before."""
        batch = decode_batch(body)
        key = (batch.gateway_id, batch.sequence)
        if key in self.produced:
            return False
        self.produced[key] = batch
        self.order.append(batch)
        return True

    async def _post(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_request(self.secrets, request.headers, body, time.time_ns() // 1_000_000,
                           300_000)
        except AuthError as e:
            self.auth_failures.append(e.reason)
            return web.json_response({"error": e.reason, "detail": str(e)}, status=401)
        try:
            header = peek_header(body)
        except DecodeError as e:
            return web.json_response({"error": e.reason, "detail": str(e)}, status=400)
        req = Request(time.monotonic(), body, dict(request.headers), header.sequence)
        self.requests.append(req)
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            req.status = 413
            return web.json_response({"error": "too_large", "detail": "body"}, status=413)
        action = self.script.popleft() if self.script else Answer()
        if isinstance(action, Hang):
            if action.produce:
                self._produce(body)
            await asyncio.sleep(3600)
        assert isinstance(action, Answer)
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        req.status = action.status
        if action.status != 200:
            return web.json_response({"error": action.error, "detail": "scripted answer"},
                                     status=action.status, headers=action.headers or None)
        fresh = self._produce(body)
        return web.json_response({"batch_id": f"{header.gateway_id}:{header.sequence}",
                                  "readings": header.reading_count,
                                  "events": header.event_count, "duplicate_readings": 0,
                                  "rejected": 0, "duplicate": not fresh})

    # -- views -------------------------------------------------------------------------------
    def bodies(self, sequence: int) -> list[bytes]:
        return [r.body for r in self.requests if r.sequence == sequence]

    def readings(self) -> list[Any]:
        return [r for b in self.order for r in b.readings]


@asynccontextmanager
async def fake_ingest(**kwargs: Any) -> AsyncIterator[FakeIngest]:
    cloud = await FakeIngest(**kwargs).start()
    try:
        yield cloud
    finally:
        await cloud.stop()


# --------------------------------------------------------------------------- the fake itself


async def _post(url: str, body: bytes, secret: bytes = SECRET) -> tuple[int, Any]:
    headers = sign_request(secret, GATEWAY, body, time.time_ns() // 1_000_000)
    async with aiohttp.ClientSession() as http, \
            http.post(url + "/v1/batches", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_fake_ingest_checks_signatures_and_answers_duplicates() -> None:
    from edge.codec import encode_batch
    from edge.model import Reading

    frame = encode_batch(Batch(GATEWAY, 7, 1, [Reading("d1", 1_705_322_445_000, 1.5)]))
    async with fake_ingest() as cloud:
        assert (await _post(cloud.url, frame, b"wrong-secret-0123456789"))[0] == 401
        assert cloud.auth_failures == ["bad_signature"]
        status, body = await _post(cloud.url, frame)
        assert status == 200 and body["duplicate"] is False
        status, body = await _post(cloud.url, frame)
        assert status == 200 and body["duplicate"] is True
        assert len(cloud.order) == 1 and cloud.readings()[0].device_id == "d1"
        cloud.script.append(Answer(503, {"Retry-After": "2"}))
        assert (await _post(cloud.url, frame))[0] == 503
        assert (await _post(cloud.url, b"not a frame"))[0] == 400
