"""An HTTP JSON client that is polite to rate-limited APIs and patient with flaky ones.

    async with ApiClient("github", headers={"Authorization": "Bearer ..."}) as api:
        resp = await api.get("https://api.github.com/repos/o/r/commits", params={...})
        resp.status, resp.headers, resp.json, resp.links["next"]

Per request (decisions from `cloud.connectors.ratelimit.decide`):

* rate-limited (429; 403 with the quota spent or a secondary-limit message): waits what the
  API asks (`Retry-After`, else until `X-RateLimit-Reset`, else a minute) and sends the same
  request again — up to `max_rate_waits` times, and never a single wait longer than
  `max_rate_wait_s` (then `UpstreamUnavailable`: the poll round ends, the next one resumes
  from the saved cursor).
* a response that spends the quota (`X-RateLimit-Remaining: 0`) is returned, and the NEXT
  request waits until the reset — the API is never asked to refuse us.
* unreachable, timeouts, 5xx: retried with capped, jittered exponential backoff
  (`edge.backoff.Backoff`), `max_attempts` tries in all, then `UpstreamUnavailable`.
* other 4xx: `UpstreamRejected` at once (token, permission, unknown repository).

`sleep` and `clock` are seams for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter

from cloud.connectors.ratelimit import decide, parse_link
from cloud.errors import UpstreamRejected, UpstreamUnavailable
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock

__all__ = ["ApiClient", "ApiMetrics", "Response"]

log = logging.getLogger("fieldlink.cloud.connectors")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    json: Any
    url: str
    links: dict[str, str] = field(default_factory=dict)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("connectors_http_requests", "API requests by connector and "
                                "status", ["connector", "status"], registry=registry)
        self.waits = Counter("connectors_rate_limit_waits", "Waits a rate limit imposed, by "
                             "connector and header obeyed", ["connector", "why"],
                             registry=registry)
        self.wait_seconds = Counter("connectors_rate_limit_wait_seconds", "Seconds spent "
                                    "waiting for rate limits", ["connector"], registry=registry)
        self.retries = Counter("connectors_http_retries", "Requests retried after a failure",
                               ["connector"], registry=registry)


class ApiClient:
    def __init__(self, name: str, *, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, max_attempts: int = 8, max_rate_waits: int = 5,
                 max_rate_wait_s: float = 3600.0, backoff: Backoff | None = None,
                 metrics: ApiMetrics | None = None, clock: Clock | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_rate_waits = max_rate_waits
        self.max_rate_wait_s = max_rate_wait_s
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self.metrics = metrics or ApiMetrics(CollectorRegistry())
        self.clock = clock or SystemClock()
        self.sleep = sleep or asyncio.sleep
        self._session: aiohttp.ClientSession | None = None
        #: wall time (s) before which no request is sent: the quota is spent until then
        self._paused_until = 0.0

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": "fieldlink-connectors", **self.headers},
            timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _now(self) -> float:
        return self.clock.now_ms() / 1000

    async def _wait(self, seconds: float, why: str) -> None:
        self.metrics.waits.labels(self.name, why).inc()
        self.metrics.wait_seconds.labels(self.name).inc(seconds)
        log.info("rate limited: waiting", extra={"fields": {
            "connector": self.name, "why": why, "wait_s": round(seconds, 1)}})
        await self.sleep(seconds)

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  headers: Mapping[str, str] | None = None) -> Response:
        """GET `url`; the JSON answer (2xx or 304).  See the module docstring."""
        if self._session is None:
            raise RuntimeError("use the ApiClient inside `async with`")
        attempts = 0
        rate_waits = 0
        self.backoff.reset()
        while True:
            pause = self._paused_until - self._now()
            if pause > 0:
                await self._wait(pause, "quota spent")
            try:
                async with self._session.get(url, params=params, headers=headers) as resp:
                    status = resp.status
                    # case-insensitive, as HTTP header names are ("ETag" arrives as "etag")
                    resp_headers = CIMultiDict(resp.headers)
                    body = await resp.read()
                    final_url = str(resp.url)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                attempts += 1
                self.metrics.requests.labels(self.name, "unreachable").inc()
                if attempts >= self.max_attempts:
                    raise UpstreamUnavailable(f"{self.name}: {url} unreachable after "
                                              f"{attempts} attempts: {e!r}") from e
                self.metrics.retries.labels(self.name).inc()
                await self.sleep(self.backoff.next_delay())
                continue
            self.metrics.requests.labels(self.name, str(status)).inc()
            message = _message(body)
            verdict = decide(status, resp_headers, self._now(), body_hint=message)
            if verdict.action == "ok":
                if verdict.pause_s > 0:
                    self._paused_until = self._now() + min(verdict.pause_s,
                                                           self.max_rate_wait_s)
                try:
                    data = json.loads(body) if body and status != 304 else None
                except ValueError as e:
                    raise UpstreamUnavailable(f"{self.name}: {url} answered {status} with "
                                              f"a body that is not JSON") from e
                return Response(status, resp_headers, data, final_url,
                                parse_link(resp_headers.get("Link")))
            if verdict.action == "wait":
                rate_waits += 1
                if verdict.pause_s > self.max_rate_wait_s or rate_waits > self.max_rate_waits:
                    raise UpstreamUnavailable(f"{self.name}: rate limited ({verdict.why}, "
                                              f"{verdict.pause_s:.0f} s)")
                await self._wait(verdict.pause_s, verdict.why)
                continue
            if verdict.action == "retry":
                attempts += 1
                if attempts >= self.max_attempts:
                    raise UpstreamUnavailable(f"{self.name}: {url} failed {attempts} times, "
                                              f"last {status}: {message}")
                self.metrics.retries.labels(self.name).inc()
                await self.sleep(self.backoff.next_delay())
                continue
            raise UpstreamRejected(f"{self.name}: {url} refused with {status}: {message}")


def _message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return ""
