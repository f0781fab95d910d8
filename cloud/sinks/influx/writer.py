"""Writing a batch of lines until InfluxDB has every point it will ever accept.

    writer = BatchWriter(client.write, metrics)
    rejected = await writer.write(lines)      # [(index, reason, message)] — dead-letter these

What each answer means, and what happens:

    2xx              every point stored
    5xx, 429, 503,   nothing is known to be stored: the same request again, after Retry-After
    unreachable      when the server sent one (at most `retry_cap_s`), else capped jittered
                     backoff; forever — cancelling the caller is the only way out
    404              the database is gone (dropped?): `on_missing()` recreates it, then retry
    401, 403         SinkMisconfigured: no point is at fault, none is dead-lettered
    400, 413, 422,   some points are at fault.  InfluxDB 1.x stored the others ("partial
    other 4xx        write: ... dropped=N"), so rewriting them is harmless (same series and
                     timestamp: overwritten with the same values).  Narrowing down:
                     * dropped=N equal to the lines sent: all of them are refused;
                     * a field type conflict names its measurement: the lines of other
                       measurements are written apart from that measurement's lines;
                     * otherwise the batch is split in halves, recursively;
                     a single line still refused is rejected with the server's message.

One bad point therefore costs about 2*log2(batch) extra requests and never blocks the batch;
a measurement whose every point conflicts costs one request per halving.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Sequence

from cloud.errors import SinkMisconfigured, SinkUnavailable
from cloud.sinks.influx.client import WriteResponse
from cloud.sinks.metrics import SinkMetrics
from edge.backoff import Backoff

__all__ = ["BatchWriter", "Rejection", "classify", "gzip_lines"]

log = logging.getLogger("fieldlink.cloud.sinks.influx")

#: (index into the lines written, reason, the server's message)
Rejection = tuple[int, str, str]

_DROPPED = re.compile(r"dropped=(\d+)")
_CONFLICT = re.compile(r'field type conflict: input field "(?:[^"\\]|\\.)*" on measurement '
                       r'"((?:[^"\\]|\\.)*)"')
_RETRY = frozenset({408, 425, 429, 500, 502, 503, 504})


def gzip_lines(lines: Sequence[str], level: int = 1) -> bytes:
    """The lines, newline-separated, gzip-compressed (level 1: ~14 B/point at >1M lines/s)."""
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress("\n".join(lines).encode()) + c.flush()


def classify(message: str) -> str:
    """A dead-letter reason for a refused point, from InfluxDB's message."""
    m = message.lower()
    if "field type conflict" in m:
        return "field_type_conflict"
    if "unable to parse" in m:
        return "unparsable"
    if "points beyond retention policy" in m or "beyond retention" in m:
        return "beyond_retention"
    if "max-values-per-tag" in m or "max-series-per-database" in m:
        return "series_limit"
    if "too large" in m or "request entity" in m:
        return "too_large"
    return "rejected"


def _measurement_of(line: str) -> str:
    """The (escaped) measurement of a line: everything before the first unescaped ',' or ' '."""
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in ", ":
            break
        i += 1
    return line[:i].replace("\\,", ",").replace("\\ ", " ")


class BatchWriter:
    def __init__(self, send: Callable[[bytes], Awaitable[WriteResponse]],
                 metrics: SinkMetrics, *, backoff: Backoff | None = None,
                 retry_cap_s: float = 30.0, gzip_level: int = 1,
                 on_missing: Callable[[], Awaitable[object]] | None = None) -> None:
        self.send = send
        self.metrics = metrics
        self.backoff = backoff or Backoff(base=0.2, cap=retry_cap_s)
        self.retry_cap_s = retry_cap_s
        self.gzip_level = gzip_level
        self.on_missing = on_missing
        #: the last failure while retrying (None once a write succeeded), for /healthz
        self.failing: str | None = None

    async def write(self, lines: Sequence[str]) -> list[Rejection]:
        """Write `lines`; the ones InfluxDB refuses, sorted by index (see the module doc)."""
        if not lines:
            return []
        rejected = await self._write(list(lines), list(range(len(lines))))
        return sorted(rejected)

    async def _write(self, lines: list[str], idx: list[int]) -> list[Rejection]:
        resp = await self._send_until_answered([lines[i] for i in idx])
        if resp.ok:
            return []
        status, message = resp.status, resp.message
        if len(idx) == 1:
            return [(idx[0], classify(message) if status != 413 else "too_large", message)]
        m = _DROPPED.search(message)
        if m is not None and int(m[1]) == len(idx) and "unable to parse" not in message:
            return [(i, classify(message), message) for i in idx]
        self.metrics.influx_bisections.inc()
        conflict = _CONFLICT.search(message)
        if conflict is not None:
            name = conflict[1].replace('\\"', '"')
            suspects = [i for i in idx if _measurement_of(lines[i]) == name]
            if 0 < len(suspects) < len(idx):
                others = [i for i in idx if _measurement_of(lines[i]) != name]
                return await self._write(lines, others) + await self._write(lines, suspects)
        half = len(idx) // 2
        return await self._write(lines, idx[:half]) + await self._write(lines, idx[half:])

    async def _send_until_answered(self, lines: list[str]) -> WriteResponse:
        """Send until the answer is success or a refusal of points (4xx except 401/403/404)."""
        body = await asyncio.to_thread(gzip_lines, lines, self.gzip_level)
        while True:
            try:
                resp = await self.send(body)
            except SinkUnavailable as e:
                self.metrics.influx_request("unreachable")
                await self._wait("unreachable", str(e), None)
                continue
            self.metrics.influx_request(resp.status)
            if resp.ok:
                if self.failing is not None:
                    log.info("influxdb writes succeed again")
                self.failing = None
                self.backoff.reset()
                return resp
            if resp.status in (401, 403):
                self.failing = f"{resp.status}: {resp.message}"
                raise SinkMisconfigured(f"InfluxDB refuses writes ({resp.status}): "
                                        f"{resp.message}")
            if resp.status == 404:
                await self._wait("not_found", resp.message, None)
                if self.on_missing is not None:
                    try:
                        await self.on_missing()
                    except (SinkUnavailable, ValueError) as e:
                        log.warning("cannot recreate the database", extra={"fields": {
                            "error": str(e)}})
                continue
            if resp.status in _RETRY or resp.status >= 500:
                await self._wait(str(resp.status), resp.message, resp.retry_after_s)
                continue
            return resp

    async def _wait(self, reason: str, message: str, retry_after_s: float | None) -> None:
        self.metrics.store_error(reason)
        delay = self.backoff.next_delay()
        if retry_after_s is not None:
            delay = min(self.retry_cap_s, max(retry_after_s, self.backoff.floor))
        self.failing = f"{reason}: {message}"[:500]
        log.warning("influxdb write failed; retrying", extra={"fields": {
            "reason": reason, "error": message[:300], "retry_in_s": round(delay, 3)}})
        await asyncio.sleep(delay)
