"""`AlertService`: the gateway's local alerts — the `AlertEngine` driven, persisted, delivered.

    service = AlertService(AlertSettings.from_config(cfg), buffer=buffer,
                           auth=authenticator, status=gateway_status)
    async with service:                              # restores state, starts the tasks
        pipeline.add_observer(service.observe)       # every committed reading
        http.add_routes(service.routes())            # GET /alerts, POST /alerts/{key}/ack
        metrics.register_source("alerts", service.stats, kind="alerts")
        loop.add_signal_handler(signal.SIGHUP, service.reload)
        async with mqtt_server:
            service.attach_mqtt(mqtt_server)         # MQTT states flow, MQTT acks taken
            ...                                      # until SIGTERM
            service.detach_mqtt()                    # before the broker stops
                                                     # leaving: final snapshot, drain

Who calls what: the pipeline calls `observe(readings)` (synchronous, cheap: the engine files
the readings and says whether windows became due — then the ticker is woken; nothing else
happens on that path).  The ticker task (`alerts-ticker`, `gateway.alerts.ticker`) calls
`step()` every `tick_s` (100 ms): `engine.advance(now, status())` closes due windows and
runs stale, gateway and re-notification checks; in between it calls `close_windows()` as
soon as windows are due (a reading moved a watermark past a window's end, an idle deadline
passed).  Windows close `close_batch` at a time with the loop free in between; each batch's
alert transitions are committed and handed to the channel tasks
(`alerts-deliver-<channel>`) before the next batch, and the aggregates go to the buffer
(`alerts-aggregates`) only when no backlog is left.  Operators acknowledge on MQTT
(`<prefix>ack/<dedup_key>`) or HTTP (`acknowledge`).  `reload()` (SIGHUP) swaps the rule
set, keeping window and alert state.

Persistence and the crash guarantee (the SQLite file `state_path`, `gateway.alerts.store`):

1. Every transition is committed to the outbox — one durable transaction per batch, with a
   delivery row per channel — *before* any channel sees it.  Channels deliver from the
   outbox until each row is delivered or dead; after a restart, pending rows are delivered
   (at least once: a delivery done just before a crash may be repeated; every notification
   carries its dedup key and the event key is stable).
2. A full engine snapshot (alerts, `for N windows` counts, stale bookkeeping and every open
   window) is saved every `snapshot_interval_s` when something changed — preferably in a
   lull between window closes, less often when it is expensive (`snapshot_cpu_share`) —
   and at shutdown.  The engine's state is copied on the loop (`AlertEngine.capture`, about
   a µs per open window pane: ~60 ms for 10,000 devices with the shipped windows) and the
   snapshot built, encoded and written on the store thread.  It records the last outbox row
   it includes.
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
import gc
import logging
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from edge.errors import ConfigError
from edge.model import Reading
from edge.rules import (
    AlertEngine,
    AlertTransition,
    GatewayStatus,
    Output,
    RuleSet,
    load_rules,
    parse_rules,
)
from edge.windows import WindowResult
from edge.windows.aggregate import compute_batch
from edge.windows.batch import closed_by_counts
from gateway.alerts.aggregates import AggregateForwarder
from gateway.alerts.cadence import SnapshotCadence
from gateway.alerts.channels import (
    BufferChannel,
    Channel,
    EventSink,
    MqttBroker,
    MqttClearChannel,
    MqttStateChannel,
    WebhookChannel,
)
from gateway.alerts.journal import restore_engine
from gateway.alerts.operators import MqttAcks, alert_routes
from gateway.alerts.outbox import Cancelled, Outbox
from gateway.alerts.settings import AlertSettings
from gateway.alerts.status import service_health, service_stats
from gateway.alerts.store import Loaded
from gateway.alerts.ticker import CloseLag, run_ticker

log = logging.getLogger("fieldlink.gateway.alerts")


#: a lull: no window closed for this long — the moment for an expensive snapshot
LULL_S = 1.0
PRUNE_EVERY_S = 600.0


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
        self.outbox = Outbox(settings.state_path, clock=self.clock,
                             retry_base_s=settings.retry_base_s,
                             retry_cap_s=settings.retry_cap_s,
                             retain_resolved_s=settings.retain_resolved_s)
        self._collected: list[AlertTransition] = []
        self._commit_lock = asyncio.Lock()
        self._forwarder: AggregateForwarder | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ack_sub: Any = None
        self._aborted = False
        #: (advance now_ms, clock after advance, windows closed, transitions) of recent ticks
        #: that produced something — how long the engine itself took to close windows
        self.ticks: deque[tuple[int, int, int, int]] = deque(maxlen=1000)
        #: set when a reading made windows due (the ticker closes them at once)
        self.woken = asyncio.Event()
        #: clear while a backlog of due windows is being closed (aggregates wait)
        self._no_backlog = asyncio.Event()
        self._no_backlog.set()
        self.close_lag = CloseLag()
        self.cadence = SnapshotCadence(settings.snapshot_interval_s, settings.snapshot_cpu_share,
                                       LULL_S)
        self.last_tick = float("-inf")
        self.started_mono = 0.0
        # counters (see stats())
        self.late: Counter[str] = Counter()
        self.windows_closed: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.acks: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.engine_cpu_s = 0.0
        self.snapshot_info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._engine is not None

    @property
    def aggregates_pending(self) -> int:
        return len(self._forwarder or ())

    @property
    def aggregate_events_cpu_s(self) -> float:
        return self._forwarder.cpu_s if self._forwarder is not None else 0.0

    @property
    def engine(self) -> AlertEngine:
        if self._engine is None:
            raise RuntimeError("the alert service is not running")
        return self._engine

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
        try:
            loaded = await self.outbox.open()
            self._engine = await self.outbox.io(self._restore, ruleset, loaded)
            await self.outbox.start(self._channels(), loaded)
        except BaseException:
            await self.outbox.close()
            raise
        self.started_mono = self.cadence.last_s = self.clock.monotonic()
        self.cadence.dirty = bool(loaded.replay)
        if self.mqtt is not None:
            self.attach_mqtt(self.mqtt)
        loop = asyncio.get_running_loop()
        for w in self.outbox.workers.values():
            self._spawn(loop, w.run(), f"alerts-deliver-{w.name}")
        if self.buffer is not None:
            self._forwarder = AggregateForwarder(
                self.buffer, backoff=Backoff(base=self.settings.retry_base_s,
                                             cap=self.settings.retry_cap_s),
                max_pending=self.settings.max_pending_aggregates, counters=self.counters,
                clear=self._no_backlog)
            self._spawn(loop, self._forwarder.run(), "alerts-aggregates")
        if self.settings.tick_s is not None:
            self._spawn(loop, run_ticker(self, self.settings.tick_s,
                                         self.settings.close_coalesce_s), "alerts-ticker")
        self._spawn(loop, self._maintenance(), "alerts-maintenance")
        log.info("alert service started", extra={"fields": {
            "rules": len(ruleset.rules), "windows": list(ruleset.windows),
            "active_alerts": len(self.engine.active_alerts()),
            "replayed_transitions": len(loaded.replay),
            "pending_deliveries": sum(w.depth() for w in self.outbox.workers.values()),
            "channels": list(self.outbox.workers)}})
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
        # Window closes compute with numpy, whose modules load on first use (numpy itself,
        # then what np.unique / np.isin use): run a few tiny closes here, off the loop, taking
        # every path, so the first real close does not stall the ticker for those imports.
        counts = [1] * 40 + [7]
        compute_batch(array("d", range(47)), array("q", range(47)), counts)
        compute_batch(array("d", [0.0, 1.0, 2.0]), array("q", [0, 1, 2]), [1, 2])

        now = self.clock.now_ms()
        engine, failed = restore_engine(
            ruleset, loaded.snapshot, loaded.replay, now_ms=now,
            gateway_id=self.settings.gateway_id,
            aside=Path(f"{self.settings.state_path}.unrestorable-{now}.json"))
        if failed:
            self.counters["restore_failed"] += 1
        return engine

    def attach_mqtt(self, broker: MqttBroker) -> None:
        """The broker runs: start publishing alert states (pending ones first) and take
        acknowledgements from ``<prefix>ack/#``.  Call after `MqttServer.__aenter__` (which
        loads the retained messages a state published earlier would be overwritten by)."""
        self.mqtt = broker
        self.outbox.attach_mqtt(broker)
        if self._ack_sub is None:
            self._ack_sub = broker.subscribe_internal(f"{self.settings.topic_prefix}ack/#",
                                                      MqttAcks(self))

    def detach_mqtt(self) -> None:
        """The broker is about to stop: hold the MQTT channels (their rows stay pending and
        are published after the next start) and stop taking acknowledgements."""
        if self._ack_sub is not None:
            self._ack_sub.cancel()
            self._ack_sub = None
        self.outbox.detach_mqtt()

    def _channels(self) -> list[Channel]:
        s = self.settings
        channels: list[Channel] = []
        if self.mqtt is not None or s.mqtt_delivery:
            state = MqttStateChannel(None, s.topic_prefix, s.gateway_id)
            channels += [state, MqttClearChannel(state)]
        if self.buffer is not None:
            channels.append(BufferChannel(self.buffer))
        channels += [WebhookChannel(hook, self._http_session, s.gateway_id)
                     for hook in s.webhooks]
        return channels

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        """Clean shutdown: stop the ticker, commit what is pending, save a full snapshot, give
        the channels `shutdown_grace_s` to deliver, close the file."""
        if self._engine is None or self._aborted:
            return
        if self._ack_sub is not None:  # no acknowledgements while shutting down
            self._ack_sub.cancel()
            self._ack_sub = None
        ticker = [t for t in self._tasks if t.get_name() == "alerts-ticker"]
        for t in ticker:
            t.cancel()
        await asyncio.gather(*ticker, return_exceptions=True)
        try:
            await self.save_snapshot()
        except Exception:
            log.exception("alert state could not be saved at shutdown")
        await self.outbox.drain(self.settings.shutdown_grace_s)
        fwd = self._forwarder
        if fwd is not None and not await fwd.drain(self.settings.shutdown_grace_s):
            self.counters["aggregates_unsaved_at_shutdown"] += len(fwd)
            log.warning("aggregates not buffered at shutdown",
                        extra={"fields": {"aggregates": len(fwd)}})
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None and self._own_session:
            await self._session.close()
        await self.outbox.close()
        self._engine = None
        log.info("alert service stopped")

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
        self.outbox.abort()
        self._engine = None

    # -- input -----------------------------------------------------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Pipeline observer: file committed readings with the engine.  Synchronous, never
        raises for data, never blocks; transitions it yields are committed by the next tick.
        While a snapshot is being taken the readings are held and filed right after it."""
        eng = self._engine
        if eng is None:
            self.counters["readings_before_start"] += len(readings)
            return
        self.cadence.dirty = True
        t0 = _cpu() if self.settings.measure_cpu else 0.0
        for r in readings:
            out = eng.observe(r, r.received_ms or None)
            if out:
                if out.transitions:
                    self._collected.extend(out.transitions)
                for late in out.late:
                    self.late[late.reason] += 1
        if eng.windows_due and not self.woken.is_set():
            self.woken.set()
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
        """One tick: `advance` the engine (window closes, stale, gateway and re-notification
        checks), then close whatever windows are still due; see `close_windows`.  Saves a
        snapshot when one is due and the tick delivered nothing."""
        eng = self.engine
        now = self.clock.now_ms()
        status = self._gateway_status()
        t0 = _cpu() if self.settings.measure_cpu else 0.0
        out = eng.advance(now, status, max_windows=self.settings.close_batch)
        if self.settings.measure_cpu:
            self.engine_cpu_s += _cpu() - t0
        self.last_tick = self.clock.monotonic()
        committed = await self._deliver(out, now)
        committed += await self.close_windows()
        if not committed:  # a snapshot waits for a tick that delivered nothing
            await self._maybe_snapshot()

    async def close_windows(self) -> int:
        """Close the windows due now, `close_batch` at a time, the loop free in between,
        until no backlog is left (windows that become due meanwhile wait for the next call:
        the ticker's).  Each batch's transitions are committed and handed to the channels
        before the next batch is closed and before its aggregates go to the buffer (alert
        latency: the bulk work comes after).  Returns the transitions committed."""
        eng = self.engine
        batch = self.settings.close_batch
        committed = 0
        try:
            while True:
                now = self.clock.now_ms()
                if not eng.closes_pending(now):
                    return committed
                t0 = _cpu() if self.settings.measure_cpu else 0.0
                out = eng.close_windows(now, max_windows=batch)
                if self.settings.measure_cpu:
                    self.engine_cpu_s += _cpu() - t0
                committed += await self._deliver(out, now)
                if len(out.aggregates) < batch:
                    return committed
                self._no_backlog.clear()
                await asyncio.sleep(0)  # the broker, the readings, the channels
        finally:
            self._no_backlog.set()

    async def _deliver(self, out: Output, now: int) -> int:
        """Transitions committed and handed to the channels, then aggregates queued."""
        if out:
            # (engine call's now, clock when it returned, windows closed, transitions)
            self.ticks.append((now, self.clock.now_ms(), len(out.aggregates),
                               len(out.transitions)))
            self._collected.extend(out.transitions)
            for late in out.late:
                self.late[late.reason] += 1
        committed = await self.commit()
        if committed:
            # let the channel tasks take the new transitions before anything else runs
            await asyncio.sleep(0)
        if out.aggregates:
            self.close_lag.add(out.aggregates, now)
            self._absorb_aggregates(out.aggregates)
        return committed

    def _absorb(self, out: Output) -> None:
        """Take an output that did not come from `step` (a reload)."""
        self.cadence.changed()
        self._collected.extend(out.transitions)
        for late in out.late:
            self.late[late.reason] += 1
        if out.aggregates:
            self._absorb_aggregates(out.aggregates)

    def _absorb_aggregates(self, aggregates: Sequence[WindowResult]) -> None:
        self.cadence.closed(self.clock.monotonic())
        self.windows_closed.update(closed_by_counts(aggregates))
        if self._forwarder is not None:
            self._forwarder.add(aggregates)

    # -- commit and delivery ------------------------------------------------------------------

    async def commit(self, snapshot: bool = False) -> int:
        """Make every transition produced so far durable, then hand them to the channels and
        the log.  With `snapshot`, also save a full engine snapshot that includes exactly
        those transitions: the engine's state is copied together with taking the batch (about a
        µs per window series and open pane, on the loop), and the snapshot is built, encoded and written
        after the batch's commit, off the loop — recording the batch's last outbox id, so
        transitions committed meanwhile are replayed onto it after a restart.  Returns the
        number of transitions committed."""
        # A snapshot of 10,000 devices' windows is a few hundred thousand short-lived lists
        # and dicts (the capture, then the JSON-safe tree encoded on the store thread).  Left
        # to the cyclic collector they survive a young collection, and the next middle-
        # generation one walks them all: a 300 ms pause of the event loop, measured.  They
        # form no cycles, so the collector is paused until they are freed by refcounting.
        paused = snapshot and gc.isenabled()
        if paused:
            gc.disable()
        try:
            async with self._commit_lock:
                if not self._collected and not snapshot:
                    return 0
                batch, self._collected = self._collected, []
                t0 = _cpu()
                capture = self.engine.capture(include_windows=True) if snapshot else None
                capture_cpu = _cpu() - t0
                try:
                    covers = await self.outbox.commit(batch)
                except Cancelled:
                    raise  # committed all the same
                except BaseException:
                    self._collected[:0] = batch  # retried with the next commit
                    raise
            if capture is not None:
                cpu, size = await self.outbox.save_snapshot(capture, covers,
                                                            self._commit_lock)
                del capture
                self._snapshot_done(capture_cpu + cpu, size)
            return len(batch)
        finally:
            if paused:
                gc.enable()

    def _snapshot_done(self, cpu_s: float, size: int) -> None:
        self.cadence.taken(self.clock.monotonic(), cpu_s)
        self.counters["snapshots"] += 1
        self.snapshot_info = {"cpu_ms": round(cpu_s * 1000, 1), "bytes": size,
                              "interval_s": round(self.cadence.every_s, 1),
                              "at_ms": self.clock.now_ms()}

    async def save_snapshot(self) -> None:
        """Commit pending transitions together with a full engine snapshot now."""
        await self.commit(snapshot=True)

    async def _maybe_snapshot(self) -> None:
        if self.cadence.due(self.clock.monotonic()):
            await self.save_snapshot()

    async def _maintenance(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            try:
                cutoff = self.clock.now_ms() - int(s.outbox_retention_s * 1000)
                pruned = await self.outbox.prune(older_than_ms=cutoff,
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
        self.cadence.changed()
        await self.commit()
        return t

    def alert(self, dedup_key: str) -> dict[str, Any] | None:
        """The active alert with this dedup key (body), or None."""
        for body in self.engine.active_alerts():
            if body["dedup_key"] == dedup_key:
                return body
        return None

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
        changes = ("rules_added", "rules_removed", "windows_kept", "windows_restarted",
                   "windows_added", "windows_removed")
        log.info("rules reloaded", extra={"fields": {
            "rules": len(ruleset.rules), "resolved": len(result.output.transitions),
            **{name: list(getattr(result, name)) for name in changes}}})
        return True

    # -- status ------------------------------------------------------------------------------

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest transitions with their delivery status per channel, newest first."""
        return await self.outbox.recent(limit)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges; field names follow `gateway.http.metrics` kind "alerts"
        (`gateway.alerts.status`)."""
        return service_stats(self)

    def health(self) -> tuple[bool, str]:
        """Healthy while the ticker runs (a tick within the last 2 s) and the file is open."""
        return service_health(self)

    def routes(self) -> list[Any]:
        """aiohttp routes for `GatewayHttp.add_routes`: GET /alerts, POST /alerts/{key}/ack."""
        return alert_routes(self)
