"""Talking to InfluxDB: line-protocol writes (v1 `/write` or the v2 API) and the retention setup.

    target = InfluxTarget.from_config(cfg.influxdb)
    async with InfluxClient(target) as client:
        await client.ensure_retention()          # database + retention policy / bucket
        response = await client.write(gzipped_lines)

Two APIs, chosen by `influxdb.api`:

* v1 — `POST /write?db=<database>&rp=<policy>&precision=ms` (aiohttp), HTTP basic auth from
  a `user:password` token when one is set.  Retention: InfluxQL on `/query`:
  `CREATE DATABASE`, then `CREATE RETENTION POLICY "<rp>" ON "<db>" DURATION <retention>
  REPLICATION 1 DEFAULT` if the policy is missing (`ALTER ... DURATION` if its duration
  differs).  The policy is `retention_policy`, or "hot" when none is configured.
* v2 — writes through influxdb-client's async write service (`/api/v2/write`, org, bucket,
  `Authorization: Token`).  Retention: an InfluxDB 1.8 server (its `/ping` says
  `X-Influxdb-Version: 1.x`) has no buckets API — a bucket is `database/policy` — so the same
  InfluxQL statements run on its `/query` endpoint; a 2.x server gets its bucket created (or
  its retention updated) through influxdb-client's BucketsApi.

`write` returns the server's answer (status, message, Retry-After) for the caller to classify
(`cloud.sinks.influx.writer`); a connection failure or timeout raises `SinkUnavailable`.
The body is gzip-compressed by the caller (off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp

from cloud.errors import SinkMisconfigured, SinkUnavailable

if TYPE_CHECKING:
    from edge.config.cloud import InfluxSection

__all__ = ["DEFAULT_POLICY", "InfluxClient", "InfluxTarget", "WriteResponse",
           "duration_seconds"]

log = logging.getLogger("fieldlink.cloud.sinks.influx")

#: the retention policy created and written to when `retention_policy` is not configured
DEFAULT_POLICY = "hot"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600,
          "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)(ns|us|µs|ms|s|m|h|d|w)")


def duration_seconds(text: str) -> int:
    """Seconds of an InfluxDB duration ("7d", "1w2d", "36h"); 0 for INF / 0 (forever)."""
    t = text.strip()
    if t.upper() == "INF" or t == "0":
        return 0
    pos = 0
    total = 0.0
    for m in _PART.finditer(t.lower()):
        if m.start() != pos:
            break
        total += int(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if pos != len(t) or pos == 0:
        raise ValueError(f"{text!r} is not an InfluxDB duration")
    return int(total)


def _influxql_duration(seconds: int) -> str:
    return "INF" if seconds == 0 else f"{seconds}s"


def _ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class InfluxTarget:
    api: str
    url: str
    database: str
    retention_policy: str
    retention: str = "7d"
    token: str | None = None
    org: str | None = None
    bucket: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_config(cls, section: InfluxSection) -> InfluxTarget:
        token = section.token.get_secret_value() if section.token is not None else None
        database = section.database
        policy = section.retention_policy or DEFAULT_POLICY
        if section.api == "v2" and section.bucket:
            # on a 1.x server a bucket is "database/policy" (the policy part is optional)
            db, _, rp = section.bucket.partition("/")
            database, policy = db, rp or policy
        return cls(api=section.api, url=str(section.url).rstrip("/"), database=database,
                   retention_policy=policy, retention=section.retention, token=token,
                   org=section.org, bucket=section.bucket, timeout_s=section.timeout_s)

    @property
    def where(self) -> str:
        """Where points go, for logs: "db/rp" or "bucket <b> of org <o>"."""
        if self.api == "v2":
            return f"bucket {self.bucket} (org {self.org})"
        return f"{self.database}/{self.retention_policy}"


@dataclass(frozen=True, slots=True)
class WriteResponse:
    status: int
    message: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - time.time())


def _message(body: bytes | str | None, headers: Any) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        for key in ("error", "message"):
            if isinstance(obj.get(key), str):
                return str(obj[key])
    if headers is not None:
        for name in ("X-Influxdb-Error", "X-Platform-Error-Code"):
            value = headers.get(name)
            if value:
                return str(value)
    return text.strip()


class InfluxClient:
    """An open connection pool to one InfluxDB target (see the module docstring)."""

    def __init__(self, target: InfluxTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None
        self._v2: Any = None
        self._write_service: Any = None
        self.server_version: str | None = None

    async def __aenter__(self) -> Self:
        t = self.target
        auth = None
        if t.token and ":" in t.token and t.api == "v1":
            user, _, password = t.token.partition(":")
            auth = aiohttp.BasicAuth(user, password)
        headers = {"Authorization": f"Token {t.token}"} if t.api == "v2" and t.token else None
        self._session = aiohttp.ClientSession(
            auth=auth, headers=headers,
            timeout=aiohttp.ClientTimeout(total=t.timeout_s),
            connector=aiohttp.TCPConnector(limit=8))
        if t.api == "v2":
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
            from influxdb_client.service.write_service import WriteService

            self._v2 = InfluxDBClientAsync(url=t.url, token=t.token or "", org=t.org or "",
                                           timeout=int(t.timeout_s * 1000))
            self._write_service = WriteService(self._v2.api_client)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._v2 is not None:
            await self._v2.close()
            self._v2 = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _s(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the InfluxClient inside `async with`")
        return self._session

    # -- writes ------------------------------------------------------------------------------

    async def write(self, gzipped: bytes) -> WriteResponse:
        """POST one gzip-compressed line-protocol body (ms precision); the server's answer.

        Raises SinkUnavailable when the server cannot be reached or does not answer in time.
        """
        try:
            if self.target.api == "v2":
                return await self._write_v2(gzipped)
            return await self._write_v1(gzipped)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise SinkUnavailable(f"InfluxDB at {self.target.url} did not take the write: "
                                  f"{e!r}") from e

    async def _write_v1(self, gzipped: bytes) -> WriteResponse:
        t = self.target
        params = {"db": t.database, "rp": t.retention_policy, "precision": "ms"}
        async with self._s().post(f"{t.url}/write", params=params, data=gzipped, headers={
                "Content-Encoding": "gzip",
                "Content-Type": "text/plain; charset=utf-8"}) as resp:
            body = await resp.read()
            return WriteResponse(resp.status, _message(body, resp.headers) if body or
                                 resp.status >= 300 else "",
                                 _retry_after(resp.headers.get("Retry-After")))

    async def _write_v2(self, gzipped: bytes) -> WriteResponse:
        from influxdb_client.rest import ApiException

        t = self.target
        try:
            await self._write_service.post_write_async(
                org=t.org, bucket=t.bucket, body=gzipped, precision="ms",
                content_encoding="gzip", content_type="text/plain; charset=utf-8")
        except ApiException as e:
            if e.status is None or e.status == 0:
                raise SinkUnavailable(f"InfluxDB at {t.url}: {e}") from e
            headers: Any = e.headers or {}
            return WriteResponse(int(e.status), _message(e.body, headers),
                                 _retry_after(headers.get("Retry-After")))
        return WriteResponse(204)

    # -- queries and setup -------------------------------------------------------------------

    async def ping(self) -> str:
        """The server's version (`X-Influxdb-Version`); SinkUnavailable if it does not answer."""
        try:
            async with self._s().get(f"{self.target.url}/ping") as resp:
                if resp.status >= 500:
                    raise SinkUnavailable(f"InfluxDB /ping answered {resp.status}")
                self.server_version = resp.headers.get("X-Influxdb-Version", "")
                return self.server_version
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise SinkUnavailable(f"InfluxDB at {self.target.url} is unreachable: {e!r}") from e

    async def influxql(self, statement: str, *, database: str | None = None,
                       method: str = "POST") -> list[dict[str, Any]]:
        """Run InfluxQL on `/query`; the `results` list.  Raises SinkUnavailable (down, 5xx),
        SinkMisconfigured (401/403) or ValueError (the statement failed)."""
        params = {"q": statement}
        if database:
            params["db"] = database
        try:
            async with self._s().request(method, f"{self.target.url}/query",
                                         params=params) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise SinkUnavailable(f"InfluxDB at {self.target.url} is unreachable: {e!r}") from e
        if status in (401, 403):
            raise SinkMisconfigured(f"InfluxDB refused {statement.split()[0]} ({status}): "
                                    f"{_message(body, None)}")
        if status >= 500:
            raise SinkUnavailable(f"InfluxDB answered {status} to a query")
        obj = json.loads(body or b"{}")
        if status >= 300 or obj.get("error"):
            raise ValueError(f"InfluxQL {statement!r} failed: {_message(body, None)}")
        results = obj.get("results") or []
        for item in results:
            if item.get("error"):
                raise ValueError(f"InfluxQL {statement!r} failed: {item['error']}")
        return list(results)

    async def ensure_retention(self) -> str:
        """Create the database and retention policy (or bucket) if missing; a description."""
        version = await self.ping()
        t = self.target
        if t.api == "v1" or version.lstrip("v").startswith("1."):
            return await self._ensure_v1_policy()
        return await asyncio.to_thread(self._ensure_v2_bucket)

    async def _ensure_v1_policy(self) -> str:
        t = self.target
        want = duration_seconds(t.retention)
        await self.influxql(f"CREATE DATABASE {_ident(t.database)}")
        results = await self.influxql(f"SHOW RETENTION POLICIES ON {_ident(t.database)}",
                                      method="GET")
        existing: dict[str, int] = {}
        for series in (results[0].get("series") or []) if results else []:
            columns = series["columns"]
            for row in series.get("values") or []:
                item = dict(zip(columns, row))
                existing[item["name"]] = duration_seconds(_go_duration(item["duration"]))
        rp, db = _ident(t.retention_policy), _ident(t.database)
        if t.retention_policy not in existing:
            await self.influxql(f"CREATE RETENTION POLICY {rp} ON {db} DURATION "
                                f"{_influxql_duration(want)} REPLICATION 1 DEFAULT")
            action = "created"
        elif existing[t.retention_policy] != want:
            await self.influxql(f"ALTER RETENTION POLICY {rp} ON {db} DURATION "
                                f"{_influxql_duration(want)} DEFAULT")
            action = f"duration changed from {existing[t.retention_policy]} s"
        else:
            action = "exists"
        detail = f"{t.database}/{t.retention_policy} ({t.retention}): {action}"
        log.info("influxdb retention", extra={"fields": {"target": detail}})
        return detail

    def _ensure_v2_bucket(self) -> str:
        from influxdb_client import BucketRetentionRules, InfluxDBClient
        from influxdb_client.rest import ApiException

        t = self.target
        seconds = duration_seconds(t.retention)
        rules = [BucketRetentionRules(type="expire", every_seconds=seconds)] if seconds else []
        try:
            with InfluxDBClient(url=t.url, token=t.token or "", org=t.org or "",
                                timeout=int(t.timeout_s * 1000)) as client:
                api = client.buckets_api()
                bucket = api.find_bucket_by_name(t.bucket)
                if bucket is None:
                    api.create_bucket(bucket_name=t.bucket, retention_rules=rules, org=t.org)
                    action = "created"
                else:
                    current = [r.every_seconds for r in (bucket.retention_rules or [])]
                    if current != [r.every_seconds for r in rules]:
                        bucket.retention_rules = rules
                        api.update_bucket(bucket)
                        action = "retention updated"
                    else:
                        action = "exists"
        except ApiException as e:
            if e.status in (401, 403):
                raise SinkMisconfigured(f"InfluxDB refused the bucket setup: {e.status}") from e
            raise SinkUnavailable(f"InfluxDB bucket setup failed: {e.status} {e.reason}") from e
        except OSError as e:
            raise SinkUnavailable(f"InfluxDB at {t.url} is unreachable: {e!r}") from e
        detail = f"bucket {t.bucket} ({t.retention}): {action}"
        log.info("influxdb retention", extra={"fields": {"target": detail}})
        return detail


def _go_duration(text: str) -> str:
    """InfluxDB 1.x shows durations the Go way ("168h0m0s"); as "168h" for duration_seconds."""
    if text in ("0s", "0", ""):
        return "0"
    return "".join(f"{n}{u}" for n, u in re.findall(r"(\d+)(h|m|s)", text) if int(n)) or "0"
