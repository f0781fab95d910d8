"""The fleet: every simulated device on one asyncio loop, sending on schedule.

    async with Fleet(cfg) as fleet:            # opens the ledger, starts paced connects
        summary = await fleet.run(duration_s)  # waits for connects, sends, drains acks
    fleet.summary()                            # the same dictionary, final after exit

Who does what: `DeviceModel` (pure) decides what each device sends at each tick; the
scheduler task ("sim:scheduler") ticks devices when due — one cursor per distinct rate over
the devices sorted by phase, not a task or thread per device — and hands emissions to the device's `Link` (MQTT, CoAP or
serial); links report acknowledgements back here (`link_acked` & co.), and every reading's
fate goes to the ledger exactly once.

Guarantees:

* Accounting: every generated reading ends as exactly one of acknowledged, unconfirmed
  (sent on a transport without acknowledgements) or failed with a reason;
  `generated == acknowledged + unconfirmed + sum(failed)` after `run()` returns.
* Per device, readings are first sent in the order generated; readings a device could not
  send (disconnected, at its in-flight limit, transport buffer full) wait in a bounded
  queue (`offline_queue`, oldest dropped as ``offline_overflow``); unacknowledged QoS 1
  readings of a dropped connection are resent first after the reconnect (DUP set).
* Connections open at most `connect_rate` per second (start-up and reconnects alike), each
  device reconnecting with capped, jittered backoff (`edge.backoff.Backoff`).
* `stop()` (the CLI wires SIGTERM/SIGINT to it) ends sending at once; `run()` still drains
  acknowledgements for up to `drain_timeout_s` and returns the summary.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from edge.clock import Clock, SystemClock
from edge.config.sim import SimConfig, SimProtocol
from edge.errors import ConfigError
from firmware_sim.device import DeviceModel, expand_fleet
from firmware_sim.faults import storm_at, storm_hits
from firmware_sim.ledger import LedgerWriter
from firmware_sim.link import ssl_context
from firmware_sim.sessions import DeviceRuntime, Sessions

__all__ = ["Fleet", "DeviceRuntime"]

_UNSET: Any = object()
#: the scheduler sleeps at least this long, so 10,000 devices cost ~200 wake-ups/s, not 10,000
_GRANULARITY_S = 0.005
#: the longest the scheduler sleeps without looking at stop()
_MAX_SLEEP_S = 0.1
#: ticks processed before yielding to the loop when behind schedule (acks must get through)
_MAX_BATCH = 2000


def load_passwords(path: str) -> dict[str, str]:
    """device id → password from a YAML/JSON mapping.  Raises ConfigError."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, [("", f"cannot read credentials: {exc}")]) from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
        raise ConfigError(path, [("", "expected a mapping of device id to password")])
    return {str(k): str(v) for k, v in data.items()}


class Fleet(Sessions):
    def __init__(self, cfg: SimConfig, *, ledger: str | None = _UNSET,
                 clock: Clock | None = None):
        self.specs = expand_fleet(cfg)
        super().__init__(cfg, self.specs, clock or SystemClock())
        self.ledger_path: str | None = cfg.ledger if ledger is _UNSET else ledger
        self.start_ms: int | None = None
        self._storms = 0
        self._ran = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Fleet:
        cfg = self.cfg
        try:
            if self.ledger_path:
                self._ledger = LedgerWriter(self.ledger_path)
                await self._ledger.open({"seed": cfg.seed, "devices": len(self.specs),
                                         "config": cfg.model_dump(mode="json",
                                                                  exclude={"target"})},
                                        self.specs)
            protocols = {s.protocol for s in self.specs}
            if SimProtocol.COAP in protocols:
                from firmware_sim.coap import CoapClient

                self._coap = CoapClient()
                await self._coap.__aenter__()
            if SimProtocol.MQTT in protocols:
                from firmware_sim.mqtt_fast import MqttOptions

                t = cfg.target
                if t.credentials_file:
                    self._passwords = load_passwords(t.credentials_file)
                self._mqtt_opts = {
                    clean: MqttOptions(
                        host=t.host, port=0, keepalive_s=t.keepalive_s, clean_session=clean,
                        username=t.username, password=t.password, ssl=ssl_context(t.tls),
                        connect_timeout_s=t.connect_timeout_s)
                    for clean in (True, False)}
            # built now, while nothing is sending: 10,000 models take a while
            for rt in self.runtimes:
                rt.model = DeviceModel(rt.spec, cfg, 0)
            self._t_enter = asyncio.get_running_loop().time()
            for rt in self.runtimes:
                self._want_connect(rt)
            if not self.runtimes:
                self._all_attempted.set()
            self._spawn(self._connector(), "sim:connector")
            self._spawn(self._housekeeping(), "sim:housekeeping")
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    def stop(self) -> None:
        """End sending now (signal handlers call this); `run()` drains and returns."""
        self._stop.set()

    async def wait_connected(self, timeout: float) -> int:  # noqa: ASYNC109 - a deadline, not a cancel
        """Wait until every device has tried to connect once (or `timeout`); the number up."""
        waits = [asyncio.ensure_future(self._all_attempted.wait()),
                 asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout if timeout > 0 else None,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.stats.connected

    async def run(self, duration_s: float | None = _UNSET, *,
                  start_ms: int | None = None) -> dict[str, Any]:
        """Send for `duration_s` (None: until `stop()`), drain, return the summary.

        Tick 0 of device d is at ``start_ms + phase_d``; `start_ms` defaults to the config's,
        else the wall clock when sending starts (after the initial connections).
        """
        if self._ran:
            raise RuntimeError("a Fleet runs once")
        self._ran = True
        cfg = self.cfg
        duration = cfg.duration_s if duration_s is _UNSET else duration_s
        loop = asyncio.get_running_loop()
        await self.wait_connected(cfg.connect_wait_s)
        if not self._all_attempted.is_set():
            self.stats.connect_phase_s = loop.time() - self._t_enter
        self._check_failure()
        if start_ms is None:
            start_ms = cfg.start_ms if cfg.start_ms is not None else self.clock.now_ms()
        self.start_ms = start_ms
        for rt in self.runtimes:
            assert rt.model is not None
            rt.model.set_start(start_ms)
        if self._ledger is not None:
            self._ledger.event(None, "start", start_ms, f"duration_s={duration}")
        cpu0 = time.process_time()
        mono0 = loop.time()
        sched = self._spawn(self._schedule(mono0, start_ms, duration), "sim:scheduler")
        await asyncio.wait([sched])
        self._check_failure()
        self.stats.duration_s = loop.time() - mono0
        await self._drain(cfg.drain_timeout_s)
        self.stats.cpu_s = time.process_time() - cpu0
        self.stats.cpu_wall_s = loop.time() - mono0
        if self._ledger is not None:
            await self._ledger.flush()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        faults: Counter[str] = Counter()
        for rt in self.runtimes:
            if rt.model is not None:
                faults.update(rt.model.injected)
        if self._storms:
            faults["reconnect_storm"] = self._storms
        self.stats.faults = faults
        out = self.stats.summary()
        out["outstanding"] = self._outstanding
        ports = self.serial_ports
        if ports:
            out["serial_ports"] = ports
        if self.ledger_path:
            out["ledger"] = self.ledger_path
        if self.start_ms is not None:
            out["start_ms"] = self.start_ms
        return out

    @property
    def serial_ports(self) -> dict[str, str]:
        """device id → pty path of serial devices (open once the device has connected)."""
        out = {}
        for rt in self.runtimes:
            port = getattr(rt.link, "port", None)
            if port:
                out[rt.spec.device_id] = port
        return out

    # ------------------------------------------------------------------ tasks

    def _check_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _schedule(self, mono0: float, start_ms: int, duration: float | None) -> None:
        """Ticks every device when due: device d's tick k is due `phase_d + k * period` ms
        after `start_ms` (the integer formula of `DeviceModel.tick_ms`), and sent iff that is
        before the end.

        Devices sharing a period fire in the same order every round (sorted by phase), so
        each period needs only a cursor into that order — no per-tick heap operation, which
        with 10,000 devices cost as much as generating the reading.
        """
        loop = asyncio.get_running_loop()
        stats = self.stats
        dur_ms = None if duration is None else round(duration * 1000)
        by_period: dict[float, list[tuple[int, int]]] = {}
        for i, rt in enumerate(self.runtimes):
            by_period.setdefault(rt.spec.period_ms, []).append((rt.spec.phase_ms, i))
        # [period, order, position in order, round k, finished]
        cursors: list[list[Any]] = [[period, sorted(order), 0, 0, False]
                                    for period, order in by_period.items()]
        storm = self.cfg.faults.reconnect_storm
        next_storm = 1
        runtimes = self.runtimes
        while not self._stop.is_set():
            now_ms = (loop.time() - mono0) * 1000.0
            if storm.rate > 0 and now_ms >= next_storm * 1000:
                self._storm(next_storm)
                next_storm += 1
            done = 0
            next_due = None
            for c in cursors:
                period, order, pos, k, finished = c
                if finished:
                    continue
                offset = round(k * period)
                while done < _MAX_BATCH:
                    phase, i = order[pos]
                    due = phase + offset
                    if dur_ms is not None and due >= dur_ms:
                        finished = True
                        break
                    if due > now_ms:
                        break
                    lag = now_ms - due
                    if lag > stats.max_lag_s * 1000.0:
                        stats.max_lag_s = lag / 1000.0
                    rt = runtimes[i]
                    model = rt.model
                    assert model is not None
                    for e in model.tick(k):
                        self._submit(rt, e)
                    if model.events:
                        self._model_events(rt, model)
                    if model.disconnect:
                        self._drop(rt, "fault:disconnect")
                    done += 1
                    pos += 1
                    if pos == len(order):
                        pos = 0
                        k += 1
                        offset = round(k * period)
                c[2], c[3], c[4] = pos, k, finished
                if not finished:
                    due = order[pos][0] + offset
                    next_due = due if next_due is None else min(next_due, due)
            if next_due is None:
                break  # every device has sent its last tick
            if done >= _MAX_BATCH:
                await asyncio.sleep(0)
                continue
            # a plain sleep (no timeout machinery: this runs ~200 times a second); stop() is
            # noticed within _MAX_SLEEP_S
            wait = (next_due - (loop.time() - mono0) * 1000.0) / 1000.0
            await asyncio.sleep(min(_MAX_SLEEP_S, max(_GRANULARITY_S, wait)))
        if duration is not None and not self._stop.is_set():
            # the run lasts its duration even when the last tick came earlier
            try:
                async with asyncio.timeout(max(0.0, mono0 + duration - loop.time())):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def _storm(self, second: int) -> None:
        cfg = self.cfg
        if not storm_at(cfg.seed, second, cfg.faults.reconnect_storm.rate):
            return
        self._storms += 1
        fraction = cfg.faults.reconnect_storm.fraction
        hit = 0
        for rt in self.runtimes:
            if rt.state == "up" and storm_hits(cfg.seed, rt.spec.device_id, second, fraction):
                self._drop(rt, "fault:reconnect_storm")
                hit += 1
        if self._ledger is not None:
            self._ledger.event(None, "reconnect_storm", self.clock.now_ms(),
                               f"second={second} devices={hit}")

    def _model_events(self, rt: DeviceRuntime, model: DeviceModel) -> None:
        if self._ledger is not None:
            for kind, at_ms, detail in model.events:
                self._ledger.event(rt.spec.device_id, kind, at_ms, detail)
        model.events.clear()

    # ------------------------------------------------------------------ shutdown

    async def _drain(self, timeout: float) -> None:  # noqa: ASYNC109
        for rt in self.runtimes:
            if rt.model is not None:
                for e in rt.model.drain_held():
                    self._submit(rt, e)
        self._draining = True
        if self._outstanding > 0:
            self._drained.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
            except TimeoutError:
                pass
        self._settle()
    async def _shutdown(self) -> None:
        self._closing = True
        self._stop.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_links()
        if self._coap is not None:
            await self._coap.__aexit__(None, None, None)
            self._coap = None
        if self._ledger is not None:
            ledger, self._ledger = self._ledger, None
            await ledger.close({"summary": self.summary()})
