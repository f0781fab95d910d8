"""`Outbox`: the durable half of alert delivery — the `AlertStore` on its own thread and one
`ChannelWorker` task per channel.

    outbox = Outbox(settings.state_path, clock=clock, ...)
    loaded = await outbox.open()                       # snapshot, replay, pending rows
    await outbox.start(channels, loaded)               # workers get the pending rows
    last_id = await outbox.commit(transitions)         # durable, then delivered and logged
    await outbox.save_snapshot(engine.capture(include_windows=True), last_id, lock)

`commit` writes the transitions (one outbox row each, one delivery row per channel; a
resolution also gets a delayed ``mqtt-clear`` row) in one ``synchronous=FULL`` transaction,
on the loop (it is on the alert's latency path); only after it returned are the rows handed
to the channel workers and each transition logged (the log channel: one structured line per
transition).  `save_snapshot` builds the snapshot from an engine capture, encodes it and
writes it — recording the outbox id it covers — on the one ``alerts-store`` thread, where
every other store call runs too, in submission order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edge.backoff import Backoff
from edge.clock import Clock
from edge.rules import AlertTransition
from edge.rules.engine import EngineCapture
from gateway.alerts.channels import Channel, MqttStateChannel, Publisher
from gateway.alerts.delivery import ChannelWorker
from gateway.alerts.formats import log_fields
from gateway.alerts.store import DEAD, AlertStore, Entry, Loaded, Mark, Pending, encode_snapshot

log = logging.getLogger("fieldlink.gateway.alerts")

T = TypeVar("T")
CLEAR = "mqtt-clear"
MQTT_CHANNELS = ("mqtt", CLEAR)


class Cancelled(asyncio.CancelledError):
    """The task was cancelled during a commit that went through: the transitions are
    durable and handed to the channels (`last_id` is the commit's last outbox id)."""

    def __init__(self, last_id: int) -> None:
        super().__init__()
        self.last_id = last_id


class Outbox:
    def __init__(self, path: Path, *, clock: Clock, retry_base_s: float, retry_cap_s: float,
                 retain_resolved_s: float | None) -> None:
        self.path = path
        self.clock = clock
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.retain_resolved_s = retain_resolved_s
        self.store: AlertStore | None = None
        self.workers: dict[str, ChannelWorker] = {}
        self.mqtt_state: MqttStateChannel | None = None
        #: transitions committed, by kind
        self.transitions: Counter[str] = Counter()
        self.orphaned = 0
        self.aborted = False
        self._executor: ThreadPoolExecutor | None = None
        self._committer: ThreadPoolExecutor | None = None

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the store thread."""
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs))

    async def open(self) -> Loaded:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alerts-store")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="alerts-commit")
        self.store = await self.io(AlertStore, self.path)
        return await self.io(self.store.load)

    async def start(self, channels: Sequence[Channel], loaded: Loaded) -> None:
        """Create the workers and queue the pending rows; rows of channels no longer
        configured are marked dead (counted, logged)."""
        for ch in channels:
            if isinstance(ch, MqttStateChannel):
                self.mqtt_state = ch
            self.workers[ch.name] = ChannelWorker(
                ch, clock=self.clock, backoff=Backoff(base=self.retry_base_s,
                                                      cap=self.retry_cap_s),
                persist=self.persist_marks)
        if self.mqtt_state is not None:
            for p in loaded.pending:
                if p.channel == "mqtt":
                    self.mqtt_state.note(p.outbox_id, p.record)
            for newer in loaded.newer.values():
                for newer_id, rec in newer:
                    self.mqtt_state.note(newer_id, rec)
        for name, worker in self.workers.items():
            worker.add(p for p in loaded.pending if p.channel == name)
        if self.mqtt_state is not None and self.mqtt_state.broker is None:
            self.detach_mqtt()  # until the broker runs
        orphans = [p for p in loaded.pending if p.channel not in self.workers]
        if orphans:
            self.orphaned += len(orphans)
            log.warning("pending alert deliveries of channels no longer configured are "
                        "marked dead", extra={"fields": {"rows": len(orphans), "channels":
                                                         sorted({p.channel for p in orphans})}})
            assert self.store is not None
            await self.io(self.store.mark, [
                Mark(p.outbox_id, p.channel, DEAD, p.attempts, "channel no longer configured")
                for p in orphans])

    def attach_mqtt(self, broker: Publisher) -> None:
        if self.mqtt_state is None:
            raise RuntimeError("MQTT delivery is off (AlertSettings.mqtt_delivery)")
        self.mqtt_state.broker = broker
        for name in MQTT_CHANNELS:
            self.workers[name].release()

    def detach_mqtt(self) -> None:
        """Hold the MQTT channels: their rows stay pending until `attach_mqtt`."""
        for name in MQTT_CHANNELS:
            if name in self.workers:
                self.workers[name].hold()
        if self.mqtt_state is not None:
            self.mqtt_state.broker = None

    # -- commit ---------------------------------------------------------------------------

    def _entry(self, t: AlertTransition) -> Entry:
        record = {"transition": t.transition, "at_ms": t.at_ms, **t.body}
        channels = [(name, 0) for name in self.workers if name != CLEAR]
        retain = self.retain_resolved_s
        if t.transition == "resolved" and CLEAR in self.workers and retain is not None:
            channels.append((CLEAR, t.at_ms + int(retain * 1000)))
        return Entry(record, tuple(channels))

    async def commit(self, batch: Sequence[AlertTransition]) -> int:
        """Commit `batch` durably, then deliver and log the transitions.  Returns the last
        outbox id committed so far (this batch's, or an earlier one's when it is empty)."""
        entries = [self._entry(t) for t in batch]
        assert self.store is not None
        if not entries:
            return self.store.last_id
        # The rows are written right here, on the loop (a few statements, no disk wait: on
        # another thread each statement would wait for the GIL while the loop is busy); the
        # COMMIT — the fsync — runs on a thread of its own, so the loop goes on (closing the
        # next windows) meanwhile.  It always completes: a cancellation waits for it, and
        # the transitions are then handed on all the same.
        pendings = self.store.begin_commit(entries)
        assert self._committer is not None
        done = asyncio.get_running_loop().run_in_executor(self._committer,
                                                          self.store.finish_commit)
        cancelled = False
        while True:
            try:
                await asyncio.shield(done)
                break
            except asyncio.CancelledError:
                if not done.done():
                    cancelled = True
                    continue
                raise
        for entry in entries:
            rec = entry.record
            self.transitions[rec["transition"]] += 1
            level = logging.INFO if rec["transition"] in ("acknowledged", "resolved") else (
                logging.ERROR if rec["severity"] == "critical" else logging.WARNING)
            log.log(level, f"alert {rec['transition']}: {rec.get('message', '')}",
                    extra={"fields": log_fields(rec)})
        by_channel: dict[str, list[Pending]] = {}
        for p in pendings:
            if p.channel == "mqtt" and self.mqtt_state is not None:
                self.mqtt_state.note(p.outbox_id, p.record)
            by_channel.setdefault(p.channel, []).append(p)
        for name, items in by_channel.items():
            self.workers[name].add(items)
        if cancelled:
            raise Cancelled(self.store.last_id)
        return self.store.last_id

    async def save_snapshot(self, capture: EngineCapture, covers_id: int,
                            lock: asyncio.Lock) -> tuple[float, int]:
        """Build, encode (store thread) and write the snapshot of `capture`, which includes
        the transitions up to outbox id `covers_id`; the write holds `lock` (the service's
        commit lock: transition commits wait rather than block the loop on the store).
        Returns (CPU seconds building and encoding it, its size in bytes)."""
        blob, cpu = await self.io(_encode, capture)
        assert self.store is not None
        async with lock:
            await self.io(self.store.save_snapshot, blob, covers_id)
        return cpu, len(blob)

    async def persist_marks(self, marks: list[Mark]) -> None:
        if self.aborted or self.store is None:
            return
        await self.io(self.store.mark, marks)

    # -- reads and housekeeping -----------------------------------------------------------

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        assert self.store is not None
        return await self.io(self.store.recent, limit)

    async def prune(self, *, older_than_ms: int, keep_rows: int) -> int:
        assert self.store is not None
        return await self.io(self.store.prune, older_than_ms=older_than_ms,
                             keep_rows=keep_rows)

    async def drain(self, grace_s: float) -> None:
        for w in self.workers.values():
            await w.drain(grace_s)

    async def close(self) -> None:
        if self.store is not None:
            await self.io(self.store.close)
            self.store = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None

    def abort(self) -> None:
        """Stop recording anything (a simulated crash): the file stays as it is."""
        self.aborted = True
        if self._executor is not None:
            store, self.store = self.store, None
            if store is not None:
                self._executor.submit(store.close)
            self._executor.shutdown(wait=False)
            self._executor = None
        if self._committer is not None:
            self._committer.shutdown(wait=False)
            self._committer = None

    def stats(self, now_ms: int) -> dict[str, Any]:
        deliveries: dict[str, dict[str, int]] = {}
        depth = 0
        oldest: int | None = None
        for name, w in self.workers.items():
            deliveries[name] = dict(w.outcomes)
            if name == CLEAR:
                continue
            depth += w.depth(now_ms)
            at = w.oldest_at_ms(now_ms)
            if at is not None and (oldest is None or at < oldest):
                oldest = at
        return {
            "transitions": dict(self.transitions),
            "notifications_failed": sum(w.outcomes["retried"] + w.outcomes[DEAD]
                                        for w in self.workers.values()),
            "deliveries": deliveries, "outbox_depth": depth,
            "outbox_oldest_age_ms": None if oldest is None else max(0, now_ms - oldest),
            "retained_clears_scheduled": (self.workers[CLEAR].depth()
                                          if CLEAR in self.workers else 0),
        }


def _encode(capture: EngineCapture) -> tuple[bytes, float]:
    """On the store thread: the snapshot dict, msgpack + zstd."""
    t0 = time.thread_time()
    blob = encode_snapshot(capture.to_dict())
    return blob, time.thread_time() - t0
