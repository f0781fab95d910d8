"""The gateway's own status record: a `gateway_status` event every `interval_s` (and at start).

    async with StatusReporter(buffer, gateway_id=cfg.gateway.id,
                              config_version=config_version(cfg),
                              uplink=lambda: uplink.stats() if uplink else None) as rep:
        ...                      # rep.sent, rep.failures

Route: the event goes through the buffer (`Buffer.append_events`), so it is durable like
any aggregate, is claimed ahead of raw readings, and reaches cloud ingest in an ordinary
batch; ingest produces it to the aggregates topic and the InfluxDB sink writes it as one
point of the measurement `gateway_status` (docs/dashboards.md, "Gateway status record").
During an outage the records queue up with everything else, so the dashboard later sees
how the backlog grew.

Body (`build_status_event`, pure — `now_ms` and the snapshots are arguments):

    gateway               the gateway id (also the event's device_id)
    firmware_version      `edge.__version__`
    config_version        12 hex digits of sha256 over the validated config model's JSON
                          (`config_version`): equal for configs that mean the same; secrets
                          are `SecretStr`, dumped masked, so they neither enter the digest
                          nor can be guessed from it (a changed secret alone keeps the version)
    backlog_rows          buffer rows not yet acknowledged by the cloud (claimed included)
    backlog_bytes         their estimated bytes (`BufferStats.est_bytes_by_class`)
    backlog_age_ms        age of the oldest unacknowledged row; 0 when nothing waits
    drops                 reason -> rows removed without an ack (persistent, summed over classes)
    deadletters           reason -> dead letters received (persistent)
    uplink_state          "up", "backoff" (failures since the last success) or
                          "circuit_open" (breaker open or half-open); "disabled" without uplink
    uplink_down_since_ms  wall-clock ms of the first failure since the last success, or None

Key: the first 16 bytes of blake2b(gateway id, ts_ms), so a record resent (or re-buffered
after a crash) under the same time is the same record everywhere downstream.

Failures: a buffer that refuses the event (busy, full) is logged and counted (`failures`);
the next attempt comes after a capped, jittered backoff, never later than the next interval.
The task is named "status-report"; `__aexit__` cancels it (SIGTERM shuts the gateway down
through the application's stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import pydantic

import edge
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from edge.model import Event
from gateway.buffer import Buffer
from gateway.buffer.results import BufferStats
from gateway.uplink.stats import UplinkStats

__all__ = ["KIND", "StatusReporter", "build_status_event", "config_version", "status_key",
           "uplink_state"]

log = logging.getLogger(__name__)

KIND = "gateway_status"


def status_key(gateway_id: str, ts_ms: int) -> bytes:
    """16 bytes, a function of (gateway id, ts_ms) only."""
    h = hashlib.blake2b(digest_size=16, person=b"fl-gw-status")
    h.update(gateway_id.encode())
    h.update(b"\0")
    h.update(str(ts_ms).encode())
    return h.digest()


def config_version(config: pydantic.BaseModel | bytes) -> str:
    """12 hex digits of sha256 over the validated config model's JSON (or raw bytes)."""
    data = config if isinstance(config, bytes) else config.model_dump_json().encode()
    return hashlib.sha256(data).hexdigest()[:12]


def uplink_state(stats: UplinkStats | None) -> str:
    if stats is None:
        return "disabled"
    if stats.circuit_open:
        return "circuit_open"
    if stats.uplink_down_since_ms is not None:
        return "backoff"
    return "up"


def build_status_event(now_ms: int, *, gateway_id: str, config_version: str,
                       buffer: BufferStats | None, uplink: UplinkStats | None,
                       firmware_version: str = edge.__version__) -> Event:
    """The `gateway_status` event at `now_ms` (pure).  Without a buffer snapshot (buffer
    closed or busy) the backlog fields are None: unknown, never reported as 0."""
    body: dict[str, Any] = {
        "gateway": gateway_id, "firmware_version": firmware_version,
        "config_version": config_version, "uplink_state": uplink_state(uplink),
        "uplink_down_since_ms": uplink.uplink_down_since_ms if uplink is not None else None,
        "backlog_rows": None, "backlog_bytes": None, "backlog_age_ms": None,
        "drops": {}, "deadletters": {},
    }
    if buffer is not None:
        body["backlog_rows"] = sum(buffer.rows.values())
        body["backlog_bytes"] = sum(buffer.est_bytes_by_class.values())
        body["backlog_age_ms"] = buffer.oldest_unsent_age_ms or 0
        body["drops"] = {reason: sum(by_class.values())
                         for reason, by_class in sorted(buffer.dropped.items())}
        body["deadletters"] = dict(sorted(buffer.dead_letters.items()))
    return Event(kind=KIND, key=status_key(gateway_id, now_ms), ts_ms=now_ms,
                 device_id=gateway_id, body=body)


class StatusReporter:
    """Buffers a `gateway_status` event at start and every `interval_s` (see module doc)."""

    def __init__(self, buffer: Buffer, *, gateway_id: str, config_version: str,
                 uplink: Callable[[], UplinkStats | None] = lambda: None,
                 interval_s: float = 60.0, clock: Clock | None = None,
                 backoff: Backoff | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("status interval must be positive")
        self.buffer = buffer
        self.gateway_id = gateway_id
        self.config_version = config_version
        self.uplink = uplink
        self.interval_s = interval_s
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff(base=1.0, cap=min(30.0, interval_s))
        self.sent = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatusReporter:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="status-report")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def snapshot(self) -> Event:
        try:
            buf: BufferStats | None = self.buffer.stats()
        except Exception:  # noqa: BLE001 - a closed/busy buffer: report the backlog unknown
            buf = None
        try:
            up = self.uplink()
        except Exception:  # noqa: BLE001 - the status must not die with a stats bug
            log.exception("uplink stats failed")
            up = None
        return build_status_event(self.clock.now_ms(), gateway_id=self.gateway_id,
                                  config_version=self.config_version, buffer=buf, uplink=up)

    async def report_once(self) -> None:
        """Build and buffer one record; raises what the buffer raises."""
        await self.buffer.append_events([self.snapshot()])
        self.sent += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.report_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - counted and retried, never fatal
                self.failures += 1
                delay = min(self.backoff.next_delay(), self.interval_s)
                log.warning("gateway status not buffered (%s); retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            await asyncio.sleep(self.interval_s)
