"""Per-device sessions: sending, acknowledgements and connections of every device.

`Sessions` is the half of `firmware_sim.fleet.Fleet` that deals with links; the fleet adds
the lifecycle and the scheduler.  Everything runs on one event loop thread.

Per device (`DeviceRuntime`): a reading goes straight to the link when the device is
connected, its transport buffer has room and it is under `target.max_inflight`
unacknowledged readings; otherwise it waits in `pending` (bounded by `offline_queue`, oldest
dropped as ``offline_overflow``), sent in order once possible.  When a connection drops, its
unacknowledged readings go back to the front of `pending` and are resent after the
reconnect (DUP set).  Each reading's fate — acknowledged, unconfirmed or failed with a
reason — is counted and written to the ledger exactly once.

Connections: opened by one task ("sim:connector") at most `connect_rate` per second, each
attempt its own task ("sim:connect:{device_id}"); a failed attempt or a dropped connection
is retried after capped, jittered backoff (`edge.backoff.Backoff`); a device whose
credentials are refused (`NotAuthorized`) is not retried and fails its readings with
``not_authorized``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import replace
from typing import Any

from edge.backoff import Backoff
from edge.clock import Clock
from edge.config.sim import SimConfig, SimProtocol
from firmware_sim.device import DeviceModel, DeviceSpec, Emission
from firmware_sim.errors import NotAuthorized, TargetUnavailable
from firmware_sim.ledger import LedgerWriter
from firmware_sim.link import Link
from firmware_sim.stats import RunStats

log = logging.getLogger("fieldlink.sim")


class DeviceRuntime:
    """One device's moving parts: its model, its link and what it has not sent yet."""

    __slots__ = ("spec", "model", "link", "pending", "state", "backoff", "confirmed",
                 "attempted")

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.model: DeviceModel | None = None
        self.link: Link | None = None
        self.pending: deque[Emission] = deque()
        #: idle | queued | connecting | up | down | refused | closed
        self.state = "idle"
        self.backoff: Backoff | None = None
        self.confirmed = spec.confirmed
        self.attempted = False


class Sessions:
    def __init__(self, cfg: SimConfig, specs: list[DeviceSpec], clock: Clock):
        self.cfg = cfg
        self.clock = clock
        self.runtimes = [DeviceRuntime(s) for s in specs]
        self.stats = RunStats(devices=len(specs))
        self._ledger: LedgerWriter | None = None
        self._coap: Any = None
        self._mqtt_opts: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self._stop = asyncio.Event()
        self._connect_q: deque[DeviceRuntime] = deque()
        self._connect_wake = asyncio.Event()
        self._first_outcomes = 0
        self._all_attempted = asyncio.Event()
        self._drained = asyncio.Event()
        self._draining = False
        self._closing = False
        self._outstanding = 0
        self._rng = random.Random(cfg.seed)
        self._max_inflight = cfg.target.max_inflight
        self._logged: set[str] = set()
        self._now_ms = clock.now_ms
        #: device id → password, from target.credentials_file
        self._passwords: dict[str, str] = {}
        self._latency_add = self.stats.latency.add
        self._t_enter = 0.0

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._failure is None:
            log.error("simulator task failed", exc_info=exc,
                      extra={"fields": {"task": task.get_name()}})
            self._failure = exc
            self._stop.set()

    # ------------------------------------------------------------------ connections

    async def _connector(self) -> None:
        """Opens connections in queue order, at most `connect_rate` per second."""
        loop = asyncio.get_running_loop()
        rate = self.cfg.connect_rate
        interval = 1.0 / rate if rate > 0 else 0.0
        next_at = loop.time()
        while True:
            while not self._connect_q:
                self._connect_wake.clear()
                await self._connect_wake.wait()
            rt = self._connect_q.popleft()
            if rt.state != "queued":
                continue
            if interval and rt.spec.protocol == SimProtocol.MQTT:
                now = loop.time()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at = max(next_at, now) + interval
            rt.state = "connecting"
            self._spawn(self._connect(rt), f"sim:connect:{rt.spec.device_id}")

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for rt in self.runtimes:
                if rt.link is not None and rt.state == "up":
                    rt.link.housekeeping(now)
            if self._coap is not None:
                self._coap.housekeeping(now)
            if self._ledger is not None:
                self._ledger.flush_soon()

    # ------------------------------------------------------------------ sending

    def _submit(self, rt: DeviceRuntime, e: Emission) -> None:
        self.stats.generated += 1
        self._outstanding += 1
        if rt.state == "refused":
            self._fail(rt, e, "not_authorized")
            return
        link = rt.link
        if (not rt.pending and link is not None and link.connected and link.writable
                and (not rt.confirmed or link.inflight() < self._max_inflight)):
            # _transmit inlined: this is the path of nearly every reading
            e.attempts = 1
            e.sent_ms = self._now_ms()
            e.sent_mono = time.monotonic()
            self.stats.sent += 1
            link.send(e, rt.spec.qos)
            return
        rt.pending.append(e)
        self._trim(rt)

    def _trim(self, rt: DeviceRuntime) -> None:
        limit = self.cfg.offline_queue
        while len(rt.pending) > limit:
            self._fail(rt, rt.pending.popleft(), "offline_overflow")

    def _can_send(self, rt: DeviceRuntime) -> bool:
        link = rt.link
        return (link is not None and link.connected and link.writable
                and (not rt.confirmed or link.inflight() < self._max_inflight))

    def _transmit(self, rt: DeviceRuntime, e: Emission) -> None:
        e.attempts += 1
        if e.attempts == 1:
            e.sent_ms = self.clock.now_ms()
            self.stats.sent += 1
        else:
            self.stats.retransmitted += 1
        e.sent_mono = time.monotonic()
        assert rt.link is not None
        rt.link.send(e, rt.spec.qos)

    def _pump(self, rt: DeviceRuntime) -> None:
        pending = rt.pending
        while pending and self._can_send(rt):
            self._transmit(rt, pending.popleft())

    def _resolved(self) -> None:
        self._outstanding -= 1
        if self._draining and self._outstanding <= 0:
            self._drained.set()

    def _fail(self, rt: DeviceRuntime, e: Emission, reason: str) -> None:
        e.failure = reason
        self.stats.failed[reason] += 1
        if self._ledger is not None:
            self._ledger.record(e)
        self._resolved()

    # ------------------------------------------------------------------ LinkEvents

    def link_acked(self, rt: DeviceRuntime, e: Emission) -> None:
        # runs once per reading: bound methods looked up once, _resolved() inlined
        e.ack_ms = self._now_ms()
        self.stats.acknowledged += 1
        self._latency_add((time.monotonic() - e.sent_mono) * 1000.0)
        if self._ledger is not None:
            self._ledger.record(e)
        self._outstanding -= 1
        if self._draining and self._outstanding <= 0:
            self._drained.set()
        if rt.pending:
            self._pump(rt)

    def link_sent(self, rt: DeviceRuntime, e: Emission) -> None:
        self.stats.unconfirmed += 1
        if self._ledger is not None:
            self._ledger.record(e)
        self._resolved()

    def link_failed(self, rt: DeviceRuntime, e: Emission, reason: str) -> None:
        self._fail(rt, e, reason)
        if rt.pending:
            self._pump(rt)

    def link_lost(self, rt: DeviceRuntime, reason: str) -> None:
        self._disconnected(rt, reason)

    def link_writable(self, rt: DeviceRuntime) -> None:
        self._pump(rt)

    # ------------------------------------------------------------------ connections

    def _want_connect(self, rt: DeviceRuntime, delay: float = 0.0) -> None:
        if self._closing or rt.state in ("refused", "closed"):
            return
        if delay > 0:
            rt.state = "down"
            asyncio.get_running_loop().call_later(delay, self._want_connect, rt)
            return
        rt.state = "queued"
        self._connect_q.append(rt)
        self._connect_wake.set()

    def _make_link(self, rt: DeviceRuntime) -> Link:
        spec = rt.spec
        if spec.protocol == SimProtocol.MQTT:
            password = self._passwords.get(spec.device_id, self.cfg.target.password)
            opts = replace(self._mqtt_opts[spec.group.clean_session], port=spec.port,
                           username=spec.username, password=password)
            if self.cfg.target.mqtt_client == "paho":
                from firmware_sim.mqtt_paho import PahoLink

                return PahoLink(spec.device_id, spec.topic, opts, self, rt)
            from firmware_sim.mqtt_fast import FastMqttLink

            return FastMqttLink(spec.device_id, spec.topic, opts, self, rt)
        if spec.protocol == SimProtocol.COAP:
            from firmware_sim.coap import CoapLink

            host = self.cfg.target.host
            host = f"[{host}]" if ":" in host else host
            uri = f"coap://{host}:{spec.port}/{spec.coap_path.lstrip('/')}"
            return CoapLink(self._coap, uri, spec.fmt == "json", self, rt)
        if rt.link is not None:
            return rt.link  # a serial device keeps its pty
        from firmware_sim.serial_pty import SerialLink

        return SerialLink(self, rt)

    async def _connect(self, rt: DeviceRuntime) -> None:
        link = self._make_link(rt)
        try:
            await link.connect()
        except NotAuthorized as exc:
            rt.state = "refused"
            self.stats.connect_failures["not_authorized"] += 1
            self._log_once("not_authorized", str(exc))
            while rt.pending:
                self._fail(rt, rt.pending.popleft(), "not_authorized")
            self._attempted(rt)
            return
        except TargetUnavailable as exc:
            self.stats.connect_failures[exc.reason] += 1
            self._log_once(exc.reason, str(exc))
            self._attempted(rt)
            if rt.backoff is None:
                rt.backoff = Backoff(base=0.5, cap=30.0, rng=self._rng)
            self._want_connect(rt, rt.backoff.next_delay())
            return
        if self._closing:
            await link.close()
            return
        rt.link = link
        rt.state = "up"
        self.stats.connected += 1
        self.stats.connects += 1
        if rt.backoff is not None:
            rt.backoff.reset()
        self._attempted(rt)
        self._pump(rt)

    def _attempted(self, rt: DeviceRuntime) -> None:
        if not rt.attempted:
            rt.attempted = True
            self._first_outcomes += 1
            if self._first_outcomes >= len(self.runtimes):
                self.stats.connect_phase_s = asyncio.get_running_loop().time() - self._t_enter
                self._all_attempted.set()

    def _drop(self, rt: DeviceRuntime, reason: str) -> None:
        """Fault injection: cut the device's connection now and let it reconnect."""
        if rt.spec.protocol != SimProtocol.MQTT or rt.link is None or rt.state != "up":
            return
        rt.link.abort()
        self._disconnected(rt, reason)

    def _disconnected(self, rt: DeviceRuntime, reason: str) -> None:
        link = rt.link
        if link is None or rt.state != "up":
            return
        self.stats.connected -= 1
        self.stats.disconnects += 1
        # unacknowledged readings go first when the device is back (QoS 1 redelivery)
        rt.pending.extendleft(reversed(link.take_unacked()))
        self._trim(rt)
        rt.link = None
        if self._ledger is not None:
            self._ledger.event(rt.spec.device_id, "disconnect", self.clock.now_ms(), reason)
        if rt.backoff is None:
            rt.backoff = Backoff(base=0.5, cap=30.0, rng=self._rng)
        self._want_connect(rt, rt.backoff.next_delay())

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, extra={"fields": {"reason": key}})

    def _settle(self) -> None:
        """After the drain: whatever is still unacknowledged or unsent fails, with why."""
        for rt in self.runtimes:
            if rt.link is not None:
                for e in rt.link.take_unacked():
                    self._fail(rt, e, "no_ack")
            while rt.pending:
                e = rt.pending.popleft()
                self._fail(rt, e, "no_ack" if e.attempts else
                           "not_connected" if rt.state != "up" else "not_sent")

    async def _close_links(self) -> None:
        links = [rt.link for rt in self.runtimes if rt.link is not None]
        for rt in self.runtimes:
            rt.state = "closed"
        for i in range(0, len(links), 1000):
            await asyncio.gather(*(link.close() for link in links[i:i + 1000]),
                                 return_exceptions=True)
