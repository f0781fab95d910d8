"""The click window job: `web_events` in, 1-minute counts per event type out.

    async with open_bus(cfg.cloud_config()) as bus, \\
            ClickWindowJob(JobSettings.from_config(cfg), bus, writer) as job:
        await job.wait(stop)

One task ("clicks-window-job") loops: poll the topic, fold the events into
`cloud.clicks.windows.ClickWindows`, write the windows that became final (InfluxDB and the
archive, `cloud.clicks.results`), every `provisional_every_s` write the open windows that
changed (InfluxDB only), and checkpoint.

Checkpoints and exactly-once results.  A checkpoint (SQLite, synchronous=FULL) holds the
window state *and* the next offset of every partition it includes; the consumer group's
offsets are committed only after the checkpoint is durable.  On restart the job restores the
checkpoint and skips records below its offsets (the group's commit may lag it by one
checkpoint), so no event is counted twice and none is lost.  Final results are written
before the checkpoint that drops their windows: a crash in between closes the same windows
again after the restart and rewrites the same InfluxDB points and archive files (both are
idempotent by window).  A checkpoint is taken after every write of final results and at
least every `checkpoint_every_s`, and on shutdown.

Late events (their window was final already) are counted (`clicks_job_late_events_total`);
records that are not click events are counted and dead-lettered with reason "bad_record".

The window state spans all partitions (stream time is global), so ONE instance of the job
runs per consumer group; a second instance would split the partitions and the windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.bus import Record, TopicSpec
from cloud.bus.base import Bus, Consumer
from cloud.clicks.results import ResultWriter
from cloud.clicks.windows import ClickWindows, WindowResult
from cloud.errors import BrokerUnavailable, ConsumerFenced, FieldlinkError
from cloud.http import ServiceHttp
from edge.backoff import Backoff
from edge.clock import Clock, SystemClock

__all__ = ["Checkpoint", "ClickWindowJob", "JobSettings"]

log = logging.getLogger("fieldlink.cloud.clicks")

TP = tuple[str, int]


@dataclass(frozen=True)
class JobSettings:
    checkpoint_path: Path
    topic: str = "web_events"
    partitions: int = 6
    deadletter_topic: str = "web_events.deadletter"
    group: str = "clicks-windows"
    size_ms: int = 60_000
    grace_ms: int = 900_000
    idle_ms: int = 30_000
    provisional_every_ms: int = 10_000
    checkpoint_every_ms: int = 5_000
    replication_factor: int = 1
    max_records: int = 2000
    poll_ms: int = 500
    http_host: str = "127.0.0.1"
    http_port: int | None = 0

    @classmethod
    def from_config(cls, cfg: Any) -> JobSettings:
        """From an `edge.config.secondary.SecondaryConfig`."""
        c = cfg.clicks
        return cls(checkpoint_path=cfg.clicks_dir / "window-job.sqlite3", topic=c.topic.name,
                   partitions=c.topic.partitions, deadletter_topic=c.deadletter_topic.name,
                   group=c.group, size_ms=int(c.window_s * 1000),
                   grace_ms=int(c.grace_s * 1000), idle_ms=int(c.idle_s * 1000),
                   provisional_every_ms=int(c.provisional_every_s * 1000),
                   checkpoint_every_ms=int(c.checkpoint_every_s * 1000),
                   replication_factor=cfg.kafka.replication_factor, http_port=c.job_port)


class Checkpoint:
    """The job's durable state: window state + offsets, replaced as one row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY "
                           "CHECK (id = 1), state TEXT NOT NULL, offsets TEXT NOT NULL, "
                           "saved_ms INTEGER NOT NULL)")

    def load(self) -> tuple[dict[str, Any], dict[TP, int]] | None:
        row = self._conn.execute("SELECT state, offsets FROM checkpoint WHERE id = 1").fetchone()
        if row is None:
            return None
        offsets = {(t, int(p)): int(o) for t, p, o in json.loads(row[1])}
        return json.loads(row[0]), offsets

    def save(self, state: dict[str, Any], offsets: dict[TP, int], now_ms: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO checkpoint (id, state, offsets, saved_ms) "
            "VALUES (1, ?, ?, ?)",
            (json.dumps(state, separators=(",", ":")),
             json.dumps([[t, p, o] for (t, p), o in sorted(offsets.items())]), now_ms))

    def close(self) -> None:
        self._conn.close()


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("clicks_job_events", "Events folded into windows",
                              registry=registry)
        self.late = Counter("clicks_job_late_events", "Events whose window was already final "
                            "(later than the grace)", ["event_type"], registry=registry)
        self.bad = Counter("clicks_job_bad_records", "Records that are not click events "
                           "(dead-lettered)", registry=registry)
        self.skipped = Counter("clicks_job_replayed_records", "Records below the checkpoint "
                               "(already counted) skipped after a restart", registry=registry)
        self.finals = Counter("clicks_job_windows_final", "Windows closed and written",
                              registry=registry)
        self.provisional = Counter("clicks_job_points_provisional", "Provisional points "
                                   "written for open windows", registry=registry)
        self.checkpoints = Counter("clicks_job_checkpoints", "Checkpoints taken",
                                   registry=registry)
        self.open = Gauge("clicks_job_open_windows", "Windows open (within size + grace)",
                          registry=registry)
        self.stream_lag = Gauge("clicks_job_stream_lag_seconds", "Wall clock minus stream "
                                "time", registry=registry)


class ClickWindowJob:
    def __init__(self, settings: JobSettings, bus: Bus, writer: ResultWriter, *,
                 clock: Clock | None = None, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.writer = writer
        self.clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = JobMetrics(self.registry)
        self.windows = ClickWindows(size_ms=settings.size_ms, grace_ms=settings.grace_ms,
                                    idle_ms=settings.idle_ms)
        self.offsets: dict[TP, int] = {}
        self._checkpoint: Checkpoint | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_checkpoint = 0.0
        self._last_provisional = 0.0
        self._dirty = False
        self.http: ServiceHttp | None = None
        self.running = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        s = self.settings
        self._checkpoint = await asyncio.to_thread(Checkpoint, s.checkpoint_path)
        restored = await asyncio.to_thread(self._checkpoint.load)
        if restored is not None:
            state, self.offsets = restored
            self.windows = ClickWindows.from_state(state, idle_ms=s.idle_ms,
                                                   now_ms=self.clock.now_ms())
            log.info("click windows restored", extra={"fields": {
                "open_windows": self.windows.open_windows, "offsets": len(self.offsets)}})
        if s.http_port is not None:
            self.http = ServiceHttp(s.http_host, s.http_port, self.registry,
                                    {"bus": self.bus.healthy, "job": self._healthy},
                                    name="clicks-job")
            await self.http.__aenter__()
        self._task = asyncio.create_task(self._run(), name="clicks-window-job")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=30)
            if not done:
                log.warning("click window job did not stop in 30 s; cancelled")
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        if self._checkpoint is not None:
            self._checkpoint.close()

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set, or the job task ends (its exception is raised)."""
        assert self._task is not None
        stopper = asyncio.create_task(stop.wait(), name="clicks-job-stop")
        try:
            await asyncio.wait({self._task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if self._task.done():
            self._task.result()

    def _healthy(self) -> tuple[bool, str]:
        if self._task is not None and self._task.done():
            return False, "the job stopped"
        if not self.running.is_set():
            return False, "starting"
        return True, f"{self.windows.open_windows} open windows"

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        backoff = Backoff(base=0.5, cap=30.0)
        specs = [TopicSpec(s.topic, s.partitions, s.replication_factor),
                 TopicSpec(s.deadletter_topic, 1, s.replication_factor)]
        while not self._stop.is_set():
            try:
                await self.bus.ensure_topics(specs)
                async with self.bus.consumer(s.group, [s.topic]) as consumer:
                    self.running.set()
                    backoff.reset()
                    while not self._stop.is_set():
                        await self.step(consumer)
                    await self._save(consumer)
                    return
            except (BrokerUnavailable, ConsumerFenced) as e:
                self.running.clear()
                delay = backoff.next_delay()
                log.warning("click window job: bus trouble; retrying", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 2)}})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()

    async def step(self, consumer: Consumer) -> None:
        """One poll: fold, write what closed, checkpoint when due."""
        s = self.settings
        records = await consumer.getmany(timeout_ms=s.poll_ms, max_records=s.max_records)
        bad = self._fold(records)
        if bad:
            await self._deadletter(bad)
        now = self.clock.now_ms()
        finals = self.windows.advance(now)
        results: list[WindowResult] = list(finals)
        mono = self.clock.monotonic()
        if s.provisional_every_ms and mono - self._last_provisional >= \
                s.provisional_every_ms / 1000:
            self._last_provisional = mono
            updates = self.windows.provisional()
            self.metrics.provisional.inc(len(updates))
            results += updates
        if results:
            await self._write(results)
            self.metrics.finals.inc(len(finals))
        self.metrics.open.set(self.windows.open_windows)
        if self.windows.stream_ms:
            self.metrics.stream_lag.set(max(0, now - self.windows.stream_ms) / 1000)
        if finals or (self._dirty and mono - self._last_checkpoint >=
                      s.checkpoint_every_ms / 1000):
            await self._save(consumer)

    def _fold(self, records: list[Record]) -> list[tuple[bytes | None, bytes,
                                                          list[tuple[str, bytes]]]]:
        """Fold records into the windows; the dead letters of the ones that are not events."""
        now = self.clock.now_ms()
        bad = []
        for r in records:
            tp = (r.topic, r.partition)
            if r.offset < self.offsets.get(tp, 0):
                self.metrics.skipped.inc()
                continue
            self.offsets[tp] = r.offset + 1
            self._dirty = True
            try:
                event = json.loads(r.value)
                event_type = event["event_type"]
                ts_ms = int(event["ts_ms"])
                user_id = str(event["user_id"])
                session_id = event.get("session_id")
                if not isinstance(event_type, str):
                    raise TypeError("event_type is not a string")
            except (ValueError, KeyError, TypeError) as e:
                self.metrics.bad.inc()
                bad.append((r.key, r.value, [("reason", b"bad_record"),
                                             ("detail", repr(e)[:300].encode()),
                                             ("topic", r.topic.encode()),
                                             ("offset", str(r.offset).encode())]))
                continue
            if self.windows.observe(event_type, ts_ms, user_id,
                                    str(session_id) if session_id is not None else None,
                                    arrival_ms=now, stored_ms=r.ts_ms or None):
                self.metrics.events.inc()
            else:
                self.metrics.late.labels(event_type).inc()
        return bad

    async def _deadletter(self, records: list[tuple[bytes | None, bytes,
                                                    list[tuple[str, bytes]]]]) -> None:
        # the records are past the offsets already: their dead letters must not be dropped
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                await self.bus.producer().send_batch(self.settings.deadletter_topic, records)
                return
            except BrokerUnavailable as e:
                delay = backoff.next_delay()
                log.warning("click dead letters not produced; retrying", extra={"fields": {
                    "error": str(e), "retry_in_s": round(delay, 2)}})
                await asyncio.sleep(delay)

    async def _write(self, results: list[WindowResult]) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                await self.writer.write(results)
                return
            except (OSError, FieldlinkError) as e:
                if isinstance(e, FieldlinkError) and not e.reason.endswith("unavailable"):
                    raise
                delay = backoff.next_delay()
                log.warning("click window results not written; retrying", extra={"fields": {
                    "error": repr(e), "retry_in_s": round(delay, 2)}})
                await asyncio.sleep(delay)

    async def _save(self, consumer: Consumer) -> None:
        assert self._checkpoint is not None
        state = self.windows.to_state()
        offsets = dict(self.offsets)
        await asyncio.to_thread(self._checkpoint.save, state, offsets, self.clock.now_ms())
        self._dirty = False
        self._last_checkpoint = self.clock.monotonic()
        self.metrics.checkpoints.inc()
        if offsets:
            try:
                await consumer.commit(offsets)
            except ConsumerFenced as e:
                # the checkpoint is the truth; records below it are skipped when re-read
                log.warning("click window job: commit refused", extra={"fields": {
                    "error": str(e)}})
                await consumer.seek_to_committed()
            except BrokerUnavailable as e:
                log.warning("click window job: commit failed; next checkpoint retries",
                            extra={"fields": {"error": str(e)}})
