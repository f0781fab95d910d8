"""Reading the hot store: InfluxQL over InfluxDB's `/query` endpoint (aiohttp).

    async with InfluxReader(InfluxTarget.from_config(cfg.influxdb)) as influx:
        [series] = await influx.query('SELECT ... WHERE "device_id" = $d', {"d": "s-1"})

The same target resolution as the sink (`cloud.sinks.influx.client.InfluxTarget`): the
database and retention policy the sink writes are the ones read.  v1 sends the
`user:password` token as HTTP Basic; v2 sends `Authorization: Token` to the v1-compatible
`/query` endpoint (an InfluxDB 2.x needs a DBRP mapping for the bucket; InfluxDB 1.8 takes
`db`/`rp` as they are).  Parameters are bound (`params=`), never spliced into the text.

Errors: `SinkUnavailable` (unreachable, timeout, 5xx) — the API answers 503 and the page
says the hot store is down; `SinkMisconfigured` (401/403); ValueError (the statement failed).
`measurements()` is cached for `cache_s` seconds (the list changes only when a new reading
type appears).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp

from cloud.errors import SinkMisconfigured, SinkUnavailable
from cloud.web.queries import Series, ident, is_reading_measurement, parse_results

if TYPE_CHECKING:
    from cloud.sinks.influx.client import InfluxTarget

__all__ = ["InfluxReader"]


class InfluxReader:
    def __init__(self, target: InfluxTarget, *, cache_s: float = 30.0) -> None:
        self.target = target
        self.cache_s = cache_s
        self._session: aiohttp.ClientSession | None = None
        self._measurements: tuple[float, list[str]] | None = None
        self.queries = 0
        self.failures = 0

    async def __aenter__(self) -> Self:
        t = self.target
        auth = None
        if t.token and ":" in t.token and t.api == "v1":
            user, _, password = t.token.partition(":")
            auth = aiohttp.BasicAuth(user, password)
        headers = {"Authorization": f"Token {t.token}"} if t.api == "v2" and t.token else None
        self._session = aiohttp.ClientSession(
            auth=auth, headers=headers, timeout=aiohttp.ClientTimeout(total=t.timeout_s),
            connector=aiohttp.TCPConnector(limit=8))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def query(self, statements: str, params: Mapping[str, Any] | None = None
                    ) -> list[list[Series]]:
        """The series of each statement (times in ms)."""
        if self._session is None:
            raise RuntimeError("use the InfluxReader inside `async with`")
        t = self.target
        form = {"q": statements, "db": t.database, "rp": t.retention_policy, "epoch": "ms"}
        if params:
            form["params"] = json.dumps(dict(params))
        self.queries += 1
        try:
            async with self._session.post(f"{t.url}/query", data=form) as resp:
                status = resp.status
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.failures += 1
            raise SinkUnavailable(f"InfluxDB at {t.url} is unreachable: {e!r}") from e
        if status in (401, 403):
            self.failures += 1
            raise SinkMisconfigured(f"InfluxDB refused the dashboard's query ({status})")
        if status >= 500:
            self.failures += 1
            raise SinkUnavailable(f"InfluxDB answered {status}")
        try:
            obj = json.loads(body or b"{}")
        except ValueError as e:
            raise SinkUnavailable(f"InfluxDB answered {status} with a body that is not "
                                  "JSON") from e
        if status >= 300 and not obj.get("error"):
            raise ValueError(f"InfluxDB answered {status}")
        return parse_results(obj)

    async def measurements(self) -> list[str]:
        """The reading measurements (not window aggregates, alerts or gateway status)."""
        now = time.monotonic()
        if self._measurements is not None and now - self._measurements[0] < self.cache_s:
            return self._measurements[1]
        try:
            [series] = await self.query("SHOW MEASUREMENTS")
        except ValueError as e:
            if "database not found" not in str(e):
                raise
            series = []  # nothing written yet: the sink creates the database
        names = sorted({str(v[0]) for s in series for v in s.values})
        self._measurements = (now, names)
        return names

    async def reading_measurements(self) -> list[str]:
        return [m for m in await self.measurements() if is_reading_measurement(m)]

    async def tag_values(self, key: str, measurements: list[str]) -> list[str]:
        """Every value of tag `key` in `measurements` (within the retention window)."""
        if not measurements:
            return []
        sources = ",".join(ident(m) for m in measurements)
        [series] = await self.query(f"SHOW TAG VALUES FROM {sources} WITH KEY = {ident(key)}")
        return sorted({str(v[1]) for s in series for v in s.values if len(v) > 1 and v[1]})

    async def healthy(self) -> tuple[bool, str]:
        try:
            await self.query("SHOW MEASUREMENTS LIMIT 1")
        except (SinkUnavailable, SinkMisconfigured, ValueError) as e:
            return False, str(e)
        return True, f"{self.target.url} {self.target.database}/{self.target.retention_policy}"
