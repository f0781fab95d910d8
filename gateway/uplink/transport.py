"""HTTP(S) to cloud ingest: one signed POST per attempt (aiohttp).

    async with HttpTransport(settings, clock) as transport:
        verdict, answer = await transport.post(frame)

Every attempt is signed afresh (`edge.signing.sign_request` with the clock's `now`), so a
batch resent an hour later is still inside ingest's replay window; the body is the frame,
byte for byte.  `post` never raises for what the network or the cloud does: a timeout, a
refused connection, a TLS failure or an unreadable answer become a `Verdict`
(`gateway.uplink.verdict`).  Only cancellation propagates.

TLS: for an https URL the ingest certificate is verified against `settings.cafile` (or the
system store), and `certfile`/`keyfile` are presented when set (mutual TLS).
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from edge.clock import Clock
from edge.signing import sign_request
from gateway.uplink.settings import BATCH_CONTENT_TYPE, UplinkSettings
from gateway.uplink.verdict import Action, Verdict, from_error, from_response

__all__ = ["Answer", "HttpTransport", "REQUEST_OVERHEAD_BYTES", "tls_context"]

#: request line, Host, Content-Length, User-Agent, ... beyond the headers we set ourselves:
#: counted against the bandwidth cap with the body (TCP/TLS framing is not)
REQUEST_OVERHEAD_BYTES = 160


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    #: seconds from the request's start to the end of the answer
    elapsed_s: float
    #: bytes of the request as counted against the bandwidth cap
    wire_bytes: int


def tls_context(settings: UplinkSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        cafile=str(settings.cafile) if settings.cafile is not None else None)
    if settings.certfile is not None:
        ctx.load_cert_chain(str(settings.certfile),
                            str(settings.keyfile) if settings.keyfile is not None else None)
    return ctx


def request_headers(settings: UplinkSettings, frame: bytes, now_ms: int) -> dict[str, str]:
    headers = sign_request(settings.secret, settings.gateway_id, frame, now_ms)
    headers["Content-Type"] = BATCH_CONTENT_TYPE
    return headers


def wire_bytes(headers: dict[str, str], frame: bytes) -> int:
    """What one attempt puts on the link, as the bandwidth cap counts it."""
    return len(frame) + REQUEST_OVERHEAD_BYTES + sum(len(k) + len(v) + 4
                                                      for k, v in headers.items())


class HttpTransport:
    def __init__(self, settings: UplinkSettings, clock: Clock, *,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> HttpTransport:
        if self._session is None:
            s = self.settings
            ssl_ctx: ssl.SSLContext | bool = (tls_context(s) if s.endpoint.startswith("https:")
                                              else False)
            connector = aiohttp.TCPConnector(ssl=ssl_ctx, limit=max(2, 2 * s.max_in_flight))
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=s.timeout_s),
                headers={"User-Agent": "fieldlink-gateway"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None and self._own_session:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the uplink transport is not open")
        return self._session

    def wire_size(self, frame: bytes) -> int:
        """The bytes one attempt of `frame` puts on the link (for the bandwidth cap; signed
        headers have a fixed length, so any timestamp gives the same count)."""
        return wire_bytes(request_headers(self.settings, frame, self.clock.now_ms()), frame)

    async def post(self, frame: bytes) -> Answer:
        """One attempt, signed now.  Never raises but for cancellation."""
        s = self.settings
        headers = request_headers(s, frame, self.clock.now_ms())
        n = wire_bytes(headers, frame)
        t0 = time.perf_counter()
        try:
            async with self.session.post(s.endpoint, data=frame, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=s.timeout_s),
                                         allow_redirects=False) as resp:
                raw = await resp.content.read(s.max_answer_bytes)
                status = resp.status
                resp_headers = {k: v for k, v in resp.headers.items()}
        except TimeoutError:
            return Answer(from_error("timeout", f"no answer within {s.timeout_s} s"),
                          time.perf_counter() - t0, n)
        except aiohttp.ClientSSLError as e:
            return Answer(from_error("tls", str(e)), time.perf_counter() - t0, n)
        except aiohttp.ClientConnectorError as e:
            return Answer(from_error("connect", str(e)), time.perf_counter() - t0, n)
        except (aiohttp.ClientError, OSError) as e:
            return Answer(from_error("connection", f"{type(e).__name__}: {e}"),
                          time.perf_counter() - t0, n)
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if status == 200 and not isinstance(body, dict):
            # a 200 that is not ingest's JSON answer (a proxy's page, a cut-off answer)
            # proves nothing about the batch: send it again, never delete it on that
            verdict = Verdict(Action.RETRY, status, "unreadable_answer",
                              detail=raw[:200].decode("utf-8", "replace"))
        else:
            verdict = from_response(status, resp_headers, body, self.clock.now_ms())
        return Answer(verdict, time.perf_counter() - t0, n)
