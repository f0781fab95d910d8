"""`AlertService`: the gateway's local alerts — the `AlertEngine` driven, persisted, delivered.

    service = AlertService(AlertSettings.from_config(cfg), buffer=buffer, mqtt=mqtt_server,
                           auth=authenticator, status=gateway_status)
    async with service:                              # restores state, starts the tasks
        pipeline.add_observer(service.observe)       # every committed reading
        http.add_routes(service.routes())            # GET /alerts, POST /alerts/{key}/ack
        metrics.register_source("alerts", service.stats, kind="alerts")
        loop.add_signal_handler(signal.SIGHUP, service.reload)
        ...                                          # until SIGTERM: leaving saves state

Who calls what: the pipeline calls `observe(readings)` (synchronous, cheap: the engine files
the readings; nothing else happens on that path).  The ticker task (`alerts-ticker`) calls
`step()` every `tick_s` (100 ms): `engine.advance(now, status())` closes due windows and runs
stale, gateway and re-notification checks; window aggregates go to the buffer
(`alerts-aggregates`), alert transitions are committed and handed to the channel tasks
(`alerts-deliver-<channel>`).  Operators acknowledge on MQTT (`<prefix>ack/<dedup_key>`) or
HTTP (`acknowledge`).  `reload()` (SIGHUP) swaps the rule set, keeping window and alert state.

Persistence and the crash guarantee (the SQLite file `state_path`, `gateway.alerts.store`):

1. Every transition is committed to the outbox — one durable transaction per batch, with a
   delivery row per channel — *before* any channel sees it.  Channels deliver from the
   outbox until each row is delivered or dead; after a restart, pending rows are delivered
   (at least once: a delivery done just before a crash may be repeated; every notification
   carries its dedup key and the event key is stable).
2. A full engine snapshot (alerts, `for N windows` counts, stale bookkeeping and every open
   window) is saved every `snapshot_interval_s` when something changed — preferably in a
   lull between window closes, less often when it is expensive (`snapshot_cpu_share`) —
   and at shutdown.  It records the last outbox row it includes.
3. On start the engine is restored from that snapshot with the outbox rows committed after
   it replayed onto it (`gateway.alerts.journal`).  So a restart neither forgets a firing
   alert nor fires it twice: every committed firing, acknowledgement and resolution is in
   the restored state, and the same condition does not fire again; its clear resolves it
   once.  Lost in a crash: window data since the last full snapshot (subjects with a
   transition since then restart their windows from new readings), and transitions of the
   last tick that were computed but not yet committed — none of which any channel had seen.

Channels: MQTT retained state (`alerts/<severity>/<rule_id>/<device_id>`), webhooks
(PagerDuty Events v2 or generic JSON), the buffer (alert events, a priority class above raw
readings), and the log (one JSON line per transition, written at commit).  See
`gateway.alerts.channels` and `gateway.alerts.delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from edge.errors import ConfigError, RetriableError
from edge.model import Event, Reading
from edge.rules import (
    AlertEngine,
    AlertTransition,
    GatewayStatus,
    Output,
    RuleSet,
    load_rules,
    parse_rules,
)
from gateway.alerts.channels import (
    BufferChannel,
    Channel,
    EventSink,
    MqttClearChannel,
    MqttStateChannel,
    Publisher,
    WebhookChannel,
)
from gateway.alerts.delivery import ChannelWorker
from gateway.alerts.formats import log_fields
from gateway.alerts.journal import apply_transitions
from gateway.alerts.settings import AlertSettings
from gateway.alerts.store import DEAD, AlertStore, Entry, Loaded, Mark, encode_snapshot

log = logging.getLogger("fieldlink.gateway.alerts")

T = TypeVar("T")
#: a lull: no window closed for this long — the moment for an expensive snapshot
LULL_S = 1.0
PRUNE_EVERY_S = 600.0
AGGREGATE_BATCH = 5000


class MqttBroker(Publisher, Protocol):
    """`gateway.mqtt.MqttServer` as the alert service uses it."""

    def subscribe_internal(self, flt: str, callback: Callable[[Any], Any], *,
                           retained: bool = False) -> Any: ...


def _cpu() -> float:
    return time.thread_time()


class AlertService:
    def __init__(self, settings: AlertSettings, *, buffer: EventSink | None = None,
                 mqtt: MqttBroker | None = None, auth: Any = None,
                 status: Callable[[], GatewayStatus | None] | None = None,
                 clock: Clock | None = None, session: aiohttp.ClientSession | None = None,
                 ruleset: RuleSet | None = None) -> None:
        """`status()` is called every tick for the gateway rules (buffer_fill, uplink_down);
        None (or no callable) leaves their state unchanged.  `auth` is the broker's
        `gateway.auth.Authenticator` (operator accounts for the HTTP routes).  `ruleset`
        overrides `settings.rules_file` (tests)."""
        self.settings = settings
        self.buffer = buffer
        self.mqtt = mqtt
        self.auth = auth
        self.status = status
        self.clock: Clock = clock or SystemClock()
        self._own_session = session is None
        self._session = session
        self._ruleset = ruleset
        self._engine: AlertEngine | None = None
        self._store: AlertStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._collected: list[AlertTransition] = []
        self._commit_lock = asyncio.Lock()
        self._workers: dict[str, ChannelWorker] = {}
        self._mqtt_state: MqttStateChannel | None = None
        self._aggregates: deque[Event] = deque()
        self._aggregates_wake = asyncio.Event()
        self._aggregates_idle = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._ack_sub: Any = None
        self._aborted = False
        self._dirty = False
        self._last_snapshot = float("-inf")
        self._last_close = float("-inf")
        self._snapshot_every = settings.snapshot_interval_s
        self._last_tick = float("-inf")
        self._started_mono = 0.0
        # counters (see stats())
        self.transitions: Counter[str] = Counter()
        self.late: Counter[str] = Counter()
        self.windows_closed: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.acks: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.engine_cpu_s = 0.0
        self.snapshot_info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def engine(self) -> AlertEngine:
        if self._engine is None:
            raise RuntimeError("the alert service is not running")
        return self._engine

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs))

    def _load_ruleset(self) -> RuleSet:
        if self._ruleset is not None:
            return self._ruleset
        if self.settings.rules_file is None:
            return parse_rules({"version": 1}, file="<no rules file>")
        return load_rules(self.settings.rules_file)

    async def __aenter__(self) -> AlertService:
        """Open the state file, restore the engine, start the tasks.  Raises ConfigError for
        an invalid rules file (check-config reports it before a start)."""
        ruleset = self._load_ruleset()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alerts-store")
        try:
            self._store = await self._io(AlertStore, self.settings.state_path)
            loaded = await self._io(self._store.load)
            self._engine = await self._io(self._restore, ruleset, loaded)
            orphans = self._start_channels(loaded)
            if orphans:
                await self._io(self._store.mark, orphans)
        except BaseException:
            await self._close_store()
            raise
        self._started_mono = self._last_snapshot = self.clock.monotonic()
        self._dirty = bool(loaded.replay)
        if self.mqtt is not None:
            self._ack_sub = self.mqtt.subscribe_internal(
                f"{self.settings.topic_prefix}ack/#", self._on_mqtt_ack)
        loop = asyncio.get_running_loop()
        for w in self._workers.values():
            self._spawn(loop, w.run(), f"alerts-deliver-{w.name}")
        if self.buffer is not None:
            self._spawn(loop, self._aggregate_loop(), "alerts-aggregates")
        if self.settings.tick_s is not None:
            self._spawn(loop, self._ticker(self.settings.tick_s), "alerts-ticker")
        self._spawn(loop, self._maintenance(), "alerts-maintenance")
        log.info("alert service started", extra={"fields": {
            "rules": len(ruleset.rules), "windows": list(ruleset.windows),
            "active_alerts": len(self.engine.active_alerts()),
            "replayed_transitions": len(loaded.replay),
            "pending_deliveries": sum(w.depth() for w in self._workers.values()),
            "channels": list(self._workers)}})
        return self

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any, name: str) -> None:
        task = loop.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.counters["task_failures"] += 1
            log.critical("alert service task died", exc_info=task.exception(),
                         extra={"fields": {"task": task.get_name()}})

    def _restore(self, ruleset: RuleSet, loaded: Loaded) -> AlertEngine:
        now = self.clock.now_ms()
        gw = self.settings.gateway_id
        if loaded.snapshot is None and not loaded.replay:
            return AlertEngine(ruleset, now_ms=now, gateway_id=gw)
        base = loaded.snapshot
        if base is None:  # transitions were committed before the first snapshot
            base = AlertEngine(ruleset, now_ms=now, gateway_id=gw).snapshot(
                include_windows=True)
        try:
            snap = apply_transitions(base, loaded.replay)
            return AlertEngine.restore(ruleset, snap, now_ms=now, gateway_id=gw)
        except Exception:
            # Keep the unusable state for a post-mortem, start clean, say so loudly.
            aside = Path(f"{self.settings.state_path}.unrestorable-{now}.json")
            with contextlib.suppress(Exception):
                aside.write_text(json.dumps({"snapshot": base, "replay": loaded.replay},
                                            default=str))
            self.counters["restore_failed"] += 1
            log.critical("alert state could not be restored; starting without it",
                         exc_info=True, extra={"fields": {"kept_in": str(aside)}})
            return AlertEngine(ruleset, now_ms=now, gateway_id=gw)

    def _start_channels(self, loaded: Loaded) -> list[Mark]:
        """Build the channels and queue the pending deliveries; returns dead marks for rows
        of channels that are no longer configured."""
        s = self.settings
        channels: list[Channel] = []
        if self.mqtt is not None:
            self._mqtt_state = MqttStateChannel(self.mqtt, s.topic_prefix, s.gateway_id)
            channels.append(self._mqtt_state)
            channels.append(MqttClearChannel(self._mqtt_state))
        if self.buffer is not None:
            channels.append(BufferChannel(self.buffer))
        for hook in s.webhooks:
            channels.append(WebhookChannel(hook, self._http_session, s.gateway_id))
        for ch in channels:
            self._workers[ch.name] = ChannelWorker(
                ch, clock=self.clock, backoff=Backoff(base=s.retry_base_s, cap=s.retry_cap_s),
                persist=self._persist_marks)
        if self._mqtt_state is not None:
            for p in loaded.pending:
                if p.channel == "mqtt":
                    self._mqtt_state.note(p.outbox_id, p.record)
            for newer in loaded.newer.values():
                for newer_id, rec in newer:
                    self._mqtt_state.note(newer_id, rec)
        for name, worker in self._workers.items():
            worker.add(p for p in loaded.pending if p.channel == name)
        orphans = [p for p in loaded.pending if p.channel not in self._workers]
        if orphans:
            self.counters["orphaned_deliveries"] += len(orphans)
            log.warning("pending alert deliveries of channels no longer configured are "
                        "marked dead", extra={"fields": {"rows": len(orphans), "channels":
                                                         sorted({p.channel for p in orphans})}})
        return [Mark(p.outbox_id, p.channel, DEAD, p.attempts, "channel no longer configured")
                for p in orphans]

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        """Clean shutdown: stop the ticker, commit what is pending, save a full snapshot, give
        the channels `shutdown_grace_s` to deliver, close the file."""
        if self._engine is None or self._aborted:
            return
        if self._ack_sub is not None:
            self._ack_sub.cancel()
        ticker = [t for t in self._tasks if t.get_name() == "alerts-ticker"]
        for t in ticker:
            t.cancel()
        await asyncio.gather(*ticker, return_exceptions=True)
        try:
            await self.save_snapshot()
        except Exception:
            log.exception("alert state could not be saved at shutdown")
        for w in self._workers.values():
            await w.drain(self.settings.shutdown_grace_s)
        if self._aggregates:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._aggregates_idle.wait(),
                                       self.settings.shutdown_grace_s)
        if self._aggregates:
            self.counters["aggregates_unsaved_at_shutdown"] += len(self._aggregates)
            log.warning("aggregates not buffered at shutdown",
                        extra={"fields": {"aggregates": len(self._aggregates)}})
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None and self._own_session:
            await self._session.close()
        await self._close_store()
        self._engine = None
        log.info("alert service stopped")

    async def _close_store(self) -> None:
        if self._store is not None:
            await self._io(self._store.close)
            self._store = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def abort(self) -> None:
        """Stop as a crash would: tasks cancelled, nothing saved or recorded any more, the
        file left as it is.  For crash tests; a real gateway leaves through `__aexit__`."""
        self._aborted = True
        if self._ack_sub is not None:
            self._ack_sub.cancel()
        for t in self._tasks:
            t.cancel()
        if self._session is not None and self._own_session:
            asyncio.get_running_loop().create_task(self._session.close(),
                                                   name="alerts-abort-session")
        if self._executor is not None:
            store, self._store = self._store, None
            if store is not None:
                self._executor.submit(store.close)
            self._executor.shutdown(wait=False)
            self._executor = None
        self._engine = None

    # -- input -----------------------------------------------------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Pipeline observer: file committed readings with the engine.  Synchronous, never
        raises for data, never blocks; transitions it yields are committed by the next tick."""
        eng = self._engine
        if eng is None:
            self.counters["readings_before_start"] += len(readings)
            return
        self._dirty = True
        t0 = _cpu() if self.settings.measure_cpu else 0.0
        for r in readings:
            out = eng.observe(r, r.received_ms or None)
            if out:
                if out.transitions:
                    self._collected.extend(out.transitions)
                for late in out.late:
                    self.late[late.reason] += 1
        if self.settings.measure_cpu:
            self.engine_cpu_s += _cpu() - t0

    def _gateway_status(self) -> GatewayStatus | None:
        if self.status is None:
            return None
        try:
            return self.status()
        except Exception:
            self.counters["status_errors"] += 1
            log.exception("gateway status callable failed; gateway rules keep their state")
            return None

    async def step(self) -> None:
        """One tick: advance the engine, buffer the aggregates, commit and hand out the
        transitions, save a snapshot when one is due."""
        eng = self.engine
        now = self.clock.now_ms()
        status = self._gateway_status()
        t0 = _cpu() if self.settings.measure_cpu else 0.0
        out = eng.advance(now, status)
        if self.settings.measure_cpu:
            self.engine_cpu_s += _cpu() - t0
        self._last_tick = self.clock.monotonic()
        if out:
            self._absorb(out)
        if await self.commit():
            # let the channel tasks take the new transitions before anything else runs
            # (a snapshot would hold the loop); the snapshot waits for a later tick
            await asyncio.sleep(0)
            return
        await self._maybe_snapshot()

    async def _ticker(self, period: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += period
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # far behind (a stall): resume the rhythm, do not burst
                self.counters["ticks_skipped"] += int(-delay / period)
                next_at = loop.time()
            try:
                await self.step()
            except Exception:
                self.counters["step_errors"] += 1
                log.exception("alert tick failed")

    def _absorb(self, out: Output) -> None:
        self._dirty = True
        if out.aggregates:
            self._last_close = self.clock.monotonic()
            for res in out.aggregates:
                self.windows_closed[res.closed_by] += 1
            if self.buffer is not None:
                self._aggregates.extend(a.to_event() for a in out.aggregates)
                overflow = len(self._aggregates) - self.settings.max_pending_aggregates
                if overflow > 0:
                    for _ in range(overflow):
                        self._aggregates.popleft()
                    self.counters["aggregates_dropped"] += overflow
                    log.error("aggregates dropped: the buffer does not keep up",
                              extra={"fields": {"dropped": overflow}})
                self._aggregates_idle.clear()
                self._aggregates_wake.set()
        if out.transitions:
            self._collected.extend(out.transitions)
        for late in out.late:
            self.late[late.reason] += 1

    # -- commit and delivery ------------------------------------------------------------------

    def _entry(self, t: AlertTransition) -> Entry:
        record = {"transition": t.transition, "at_ms": t.at_ms, **t.body}
        channels = [(name, 0) for name in self._workers if name != "mqtt-clear"]
        retain = self.settings.retain_resolved_s
        if t.transition == "resolved" and "mqtt-clear" in self._workers and retain is not None:
            channels.append(("mqtt-clear", t.at_ms + int(retain * 1000)))
        return Entry(record, tuple(channels))

    async def commit(self, snapshot: bool = False) -> int:
        """Make every transition produced so far durable (and, with `snapshot`, a full engine
        snapshot that includes them), then hand them to the channels and the log.  Returns
        the number of transitions committed."""
        async with self._commit_lock:
            if not self._collected and not snapshot:
                return 0
            batch, self._collected = self._collected, []
            entries = [self._entry(t) for t in batch]
            blob_of: Callable[[], bytes | None] = lambda: None  # noqa: E731
            if snapshot:
                t0 = _cpu()
                snap = self.engine.snapshot(include_windows=True)
                cpu_loop = _cpu() - t0
                blob_of = functools.partial(self._encode, snap)
            assert self._store is not None
            store = self._store
            try:
                pendings, encode_cpu, size = await self._io(self._write, store, entries, blob_of)
            except BaseException:
                self._collected[:0] = batch  # retried with the next commit
                raise
            if snapshot:
                self._snapshot_done(cpu_loop + encode_cpu, size)
        for entry in entries:
            rec = entry.record
            self.transitions[rec["transition"]] += 1
            level = logging.INFO if rec["transition"] in ("acknowledged", "resolved") else (
                logging.ERROR if rec["severity"] == "critical" else logging.WARNING)
            log.log(level, f"alert {rec['transition']}: {rec.get('message', '')}",
                    extra={"fields": log_fields(rec)})
        for p in pendings:
            if p.channel == "mqtt" and self._mqtt_state is not None:
                self._mqtt_state.note(p.outbox_id, p.record)
        by_channel: dict[str, list[Any]] = {}
        for p in pendings:
            by_channel.setdefault(p.channel, []).append(p)
        for name, items in by_channel.items():
            self._workers[name].add(items)
        return len(entries)

    @staticmethod
    def _encode(snap: dict[str, Any]) -> bytes:
        return encode_snapshot(snap)

    @staticmethod
    def _write(store: AlertStore, entries: list[Entry], blob_of: Callable[[], bytes | None]
               ) -> tuple[list[Any], float, int]:
        t0 = _cpu()
        blob = blob_of()
        cpu = _cpu() - t0
        return store.commit(entries, blob), cpu, len(blob or b"")

    def _snapshot_done(self, cpu_s: float, size: int) -> None:
        s = self.settings
        self._last_snapshot = self.clock.monotonic()
        self._dirty = False
        # keep the snapshot's CPU under its share of a core: stretch the interval if needed
        self._snapshot_every = max(s.snapshot_interval_s, cpu_s / max(s.snapshot_cpu_share,
                                                                      1e-6))
        self.counters["snapshots"] += 1
        self.snapshot_info = {"cpu_ms": round(cpu_s * 1000, 1), "bytes": size,
                              "interval_s": round(self._snapshot_every, 1),
                              "at_ms": self.clock.now_ms()}

    async def save_snapshot(self) -> None:
        """Commit pending transitions together with a full engine snapshot now."""
        await self.commit(snapshot=True)

    async def _maybe_snapshot(self) -> None:
        now = self.clock.monotonic()
        since = now - self._last_snapshot
        if not self._dirty or since < self._snapshot_every:
            return
        if now - self._last_close < LULL_S and since < 3 * self._snapshot_every:
            return  # windows are closing right now: wait for the lull, within reason
        await self.save_snapshot()

    async def _persist_marks(self, marks: list[Mark]) -> None:
        if self._aborted or self._store is None:
            return
        await self._io(self._store.mark, marks)

    async def _aggregate_loop(self) -> None:
        assert self.buffer is not None
        backoff = Backoff(base=self.settings.retry_base_s, cap=self.settings.retry_cap_s)
        while True:
            if not self._aggregates:
                self._aggregates_wake.clear()
                self._aggregates_idle.set()
                await self._aggregates_wake.wait()
                continue
            n = min(len(self._aggregates), AGGREGATE_BATCH)
            batch = [self._aggregates[i] for i in range(n)]
            try:
                result = await self.buffer.append_events(batch)
            except RetriableError as exc:
                self.counters["aggregate_retries"] += 1
                log.warning("buffer busy; aggregates retried",
                            extra={"fields": {"error": str(exc), "aggregates": n}})
                await asyncio.sleep(backoff.next_delay())
                continue
            except Exception:
                log.exception("aggregates could not be buffered")
                self.counters["aggregates_dropped"] += n
                result = None
            for _ in range(n):
                self._aggregates.popleft()
            backoff.reset()
            if result is not None:
                self.counters["aggregates_buffered"] += result.stored
                self.counters["aggregates_duplicate"] += result.duplicates
                if result.refused:
                    self.counters["aggregates_dropped"] += result.refused
                    log.error("buffer refused aggregates", extra={"fields": {
                        "refused": result.refused, "reason": result.refused_reason}})

    async def _maintenance(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            if self._store is None:
                continue
            try:
                cutoff = self.clock.now_ms() - int(s.outbox_retention_s * 1000)
                pruned = await self._io(self._store.prune, older_than_ms=cutoff,
                                        keep_rows=s.outbox_max_rows)
                self.counters["outbox_pruned"] += pruned
            except Exception:
                log.exception("alert outbox pruning failed")

    # -- operators ---------------------------------------------------------------------------

    async def acknowledge(self, dedup_key: str, by: str, *, source: str = "api"
                          ) -> AlertTransition | None:
        """Acknowledge a firing alert; returns the transition once it is durable (it is then
        delivered on every channel), or None when the alert is not firing."""
        t = self.engine.acknowledge(dedup_key, by, self.clock.now_ms())
        if t is None:
            self.acks[f"{source}_refused"] += 1
            return None
        self.acks[source] += 1
        self._collected.append(t)
        self._dirty = True
        await self.commit()
        return t

    def alert(self, dedup_key: str) -> dict[str, Any] | None:
        """The active alert with this dedup key (body), or None."""
        for body in self.engine.active_alerts():
            if body["dedup_key"] == dedup_key:
                return body
        return None

    def _on_mqtt_ack(self, msg: Any) -> Any:
        prefix = f"{self.settings.topic_prefix}ack/"
        dedup_key = msg.topic[len(prefix):]
        if msg.retain and msg.payload:
            # a retained ack would be replayed to every subscriber: clear it
            with contextlib.suppress(Exception):
                assert self.mqtt is not None
                self.mqtt.publish(msg.topic, b"", retain=True)
        by = getattr(msg, "username", None) or "mqtt-operator"
        if msg.payload:
            try:
                body = json.loads(msg.payload)
                if isinstance(body, dict) and isinstance(body.get("by"), str) and body["by"]:
                    by = body["by"][:128]
            except (ValueError, UnicodeDecodeError):
                self.acks["mqtt_invalid"] += 1
                log.warning("MQTT acknowledgement with a payload that is not JSON; acked "
                            "anyway", extra={"fields": {"topic": msg.topic}})
        if not dedup_key or self._engine is None:
            self.acks["mqtt_refused"] += 1
            return None
        return self._mqtt_ack(dedup_key, by)

    async def _mqtt_ack(self, dedup_key: str, by: str) -> None:
        t = await self.acknowledge(dedup_key, by, source="mqtt")
        log.info("alert acknowledgement over MQTT", extra={"fields": {
            "dedup_key": dedup_key, "by": by, "accepted": t is not None}})

    def reload(self) -> bool:
        """Re-read the rules file and swap the rules in, keeping window and alert state
        (SIGHUP).  An invalid file is logged and counted; the old rules stay."""
        if self._engine is None or self.settings.rules_file is None:
            self.reloads["failed"] += 1
            log.error("rules reload: no rules file configured or service not running")
            return False
        try:
            ruleset = load_rules(self.settings.rules_file)
        except ConfigError as exc:
            self.reloads["failed"] += 1
            log.error("rules reload refused; the previous rules stay in force",
                      extra={"fields": {"file": exc.file, "problems": [
                          f"{k or '<root>'}: {why}" for k, why in exc.problems]}})
            return False
        result = self._engine.replace_rules(ruleset)
        self._absorb(result.output)
        self.reloads["ok"] += 1
        log.info("rules reloaded", extra={"fields": {
            "rules": len(ruleset.rules), "rules_added": list(result.rules_added),
            "rules_removed": list(result.rules_removed),
            "windows_kept": list(result.windows_kept),
            "windows_restarted": list(result.windows_restarted),
            "windows_added": list(result.windows_added),
            "windows_removed": list(result.windows_removed),
            "resolved": len(result.output.transitions)}})
        return True

    # -- status ------------------------------------------------------------------------------

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest transitions with their delivery status per channel, newest first."""
        assert self._store is not None
        return await self._io(self._store.recent, limit)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges; field names follow `gateway.http.metrics` kind "alerts"."""
        now = self.clock.now_ms()
        active = self.engine.active_alerts() if self._engine is not None else []
        firing: Counter[str] = Counter()
        acked: Counter[str] = Counter()
        for a in active:
            (firing if a["state"] == "firing" else acked)[a["severity"]] += 1
        deliveries: dict[str, dict[str, int]] = {}
        depth = 0
        oldest: int | None = None
        for name, w in self._workers.items():
            deliveries[name] = dict(w.outcomes)
            if name == "mqtt-clear":
                continue
            depth += w.depth(now)
            at = w.oldest_at_ms(now)
            if at is not None and (oldest is None or at < oldest):
                oldest = at
        return {
            "firing": sum(firing.values()), "acknowledged": sum(acked.values()),
            "firing_by_severity": dict(firing), "acknowledged_by_severity": dict(acked),
            "transitions": dict(self.transitions),
            "notifications_failed": sum(w.outcomes["retried"] + w.outcomes[DEAD]
                                        for w in self._workers.values()),
            "deliveries": deliveries,
            "outbox_depth": depth,
            "outbox_oldest_age_ms": None if oldest is None else max(0, now - oldest),
            "retained_clears_scheduled": (self._workers["mqtt-clear"].depth()
                                          if "mqtt-clear" in self._workers else 0),
            "late": dict(self.late), "windows_closed": sum(self.windows_closed.values()),
            "windows_closed_by": dict(self.windows_closed),
            "rule_reloads": {"ok": self.reloads["ok"], "failed": self.reloads["failed"]},
            "acks": dict(self.acks),
            "aggregates_pending": len(self._aggregates),
            "engine_cpu_s": round(self.engine_cpu_s, 4),
            "snapshot": dict(self.snapshot_info),
            **{k: v for k, v in self.counters.items()},
        }

    def health(self) -> tuple[bool, str]:
        """Healthy while the ticker runs (a tick within the last 2 s) and the file is open."""
        if self._engine is None or self._store is None:
            return False, "not running"
        if self.settings.tick_s is not None:
            since = self.clock.monotonic() - max(self._last_tick, self._started_mono)
            if since > 2.0:
                return False, f"no alert tick for {since:.1f} s"
        s = self.stats()
        return True, (f"{s['firing']} firing, {s['acknowledged']} acknowledged, outbox "
                      f"{s['outbox_depth']} pending")

    def routes(self) -> list[Any]:
        """aiohttp routes for `GatewayHttp.add_routes`: GET /alerts, POST /alerts/{key}/ack."""
        from gateway.alerts.http import alert_routes
        return alert_routes(self)
