"""The writer thread: every SQLite call of a running buffer happens here, in group commits.

Callers on the event loop put an `Op` on a deque (no lock: deque appends are atomic) and await
its future, or give it a callback instead (`Op.cb`, the ingest hot path: no future, no task).  The thread wakes on the first op, keeps gathering until `commit_interval_ms` has
passed or `commit_max_readings` readings wait, then runs the whole group in one transaction:
appends first (one `executemany`), then the other ops in submission order, each under a
savepoint so one failing op cannot undo the others.  After COMMIT returns — with
synchronous=FULL, after the WAL fsync — it resolves the group's futures and runs its callbacks
with a single `loop.call_soon_threadsafe`, in submission order.  So a durable append resolves
only once its rows are committed, and ops resolve in commit order.

If a commit fails (disk full, I/O error, a lock held too long by the operator CLI), every op
of the group fails with `BufferBusy` (or `BufferCorrupt` for a damaged file), nothing of it
is kept, and the next group waits a capped, jittered backoff.  When the thread idles for a
second it does maintenance: it prunes old de-duplication keys and returns free pages.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.backoff import Backoff
from edge.clock import Clock
from edge.model import Event, Reading
from gateway.buffer import claims, space
from gateway.buffer.schema import classify
from gateway.buffer.settings import BufferSettings
from gateway.buffer.store import Store
from gateway.errors import BufferBusy

log = logging.getLogger("fieldlink.gateway.buffer")

MAINTENANCE_S = 1.0


#: `Op.cb(token, result, error)`, run on the event loop after the op's group committed or failed
OpCallback = Callable[[Any, Any, "BaseException | None"], None]


@dataclass(slots=True, eq=False)
class Op:
    fut: asyncio.Future[Any] | None = None
    #: readings carried (group sizing and back-pressure)
    n: int = 0
    fsync: bool = False
    result: Any = None
    error: BaseException | None = None
    #: instead of `fut`: called once on the loop thread with (token, result, error)
    cb: OpCallback | None = None
    token: Any = None


@dataclass(slots=True, eq=False)
class AppendOp(Op):
    readings: list[Reading] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class CallOp(Op):
    """Anything else: `fn(store, now_ms)` runs inside the group's transaction."""

    fn: Callable[[Store, int], Any] | None = None


def events_op(events: list[Event], fut: asyncio.Future[Any] | None) -> CallOp:
    return CallOp(fut=fut, fn=lambda st, now: st.insert_events(events, now))


def execute_group(store: Store, ops: list[Op], now_ms: int, *,
                  extra: Callable[[Store], None] | None = None) -> bool:
    """Run `ops` in one transaction and set each op's result or error.  False if the
    transaction failed (then every op carries the error and nothing was kept)."""
    started = time.perf_counter()
    try:
        store.begin(fsync=any(op.fsync for op in ops))
        if extra is not None:
            extra(store)
        appends = [op for op in ops if isinstance(op, AppendOp)]
        if appends:
            results = store.insert_readings([op.readings for op in appends], now_ms)
            for aop, res in zip(appends, results):
                aop.result = res
        for op in ops:
            if isinstance(op, CallOp) and op.fn is not None:
                try:
                    with store.savepoint():
                        op.result = op.fn(store, now_ms)
                except sqlite3.OperationalError:
                    raise  # I/O, full disk, lock: the transaction as a whole is in doubt
                except Exception as exc:  # noqa: BLE001 - the op's caller gets it
                    op.error = exc
        store.commit()
    except Exception as exc:
        try:
            store.rollback()
        except sqlite3.Error as again:  # the connection is in trouble; the ops still fail
            log.warning("buffer: rollback failed: %s", again)
        if isinstance(exc, sqlite3.Error):
            err: Exception = classify(exc, "commit")
        else:  # a bug: logged with its traceback; callers see a retriable refusal
            log.exception("buffer: group transaction failed")
            err = BufferBusy(f"buffer: group transaction failed: {exc!r}")
        err.__cause__ = exc
        for failed in ops:
            failed.result = None
            failed.error = err
        return False
    t = store.timings
    elapsed = (time.perf_counter() - started) * 1000.0
    t.commit_ms_last = elapsed
    t.commit_ms_total += elapsed
    t.commit_ms_max = max(t.commit_ms_max, elapsed)
    t.group_last = sum(op.n for op in ops)
    t.group_total += t.group_last
    try:
        store.after_commit()
    except sqlite3.Error as exc:  # the data is committed; a checkpoint can wait
        log.warning("buffer: checkpoint after commit failed: %s", exc)
    return True


def resolve_ops(ops: list[Op]) -> None:
    """On the loop thread: settle every op of a group, in submission order.  A callback that
    raises is logged; the other ops of the group are still settled."""
    for op in ops:
        cb = op.cb
        if cb is not None:
            try:
                cb(op.token, op.result, op.error)
            except Exception:  # noqa: BLE001 - a caller's bug must not strand the others
                log.exception("buffer: completion callback failed")
            continue
        fut = op.fut
        if fut is None or fut.done():
            continue
        if op.error is not None:
            fut.set_exception(op.error)
        else:
            fut.set_result(op.result)


class Writer:
    """Owns the thread, the deque and the Store.  `submit` is called from the loop thread."""

    def __init__(self, settings: BufferSettings, clock: Clock,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.clock = clock
        self.loop = loop
        self.store: Store | None = None
        self._dq: collections.deque[Op] = collections.deque()
        self._wake = threading.Event()
        self._full = threading.Event()
        self._idle = False
        self._stop = False
        self.dead: BaseException | None = None
        # written by one thread each, so no lock: pending = submitted - taken
        self.submitted = 0
        self._taken = 0
        self.overload = 0  # readings refused for back-pressure (loop thread)
        self._overload_flushed = 0
        self._overload_seen = 0
        self._ready: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._main, name="fieldlink-buffer-writer",
                                        daemon=True)

    @property
    def pending(self) -> int:
        return self.submitted - self._taken

    async def start(self) -> None:
        self._thread.start()
        await self._ready

    async def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._full.set()
        await asyncio.shield(self._done)

    def submit(self, op: Op) -> None:
        if self.dead is not None or self._stop:
            raise BufferBusy("buffer is closed" if self._stop else f"buffer writer stopped: "
                             f"{self.dead}")
        self._dq.append(op)
        if op.n:
            self.submitted += op.n
            if self.submitted - self._taken >= self.settings.commit_max_readings:
                self._full.set()
        if self._idle:
            self._wake.set()

    # -- the thread ----------------------------------------------------------------------------
    def _signal(self, fut: asyncio.Future[None], exc: BaseException | None) -> None:
        def done() -> None:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:
            pass  # the loop is gone; nobody waits any more

    def _main(self) -> None:
        try:
            self.store = Store.open(self.settings, self.clock)
            n = 0
            with self.store.transaction():
                self.store.record_settings()
                self.store.gc_series()
                if self.settings.claim_lease_s is not None:
                    n = claims.release_expired(self.store, self.settings.claim_lease_s,
                                               self.clock.now_ms())
            if n:
                log.warning("buffer: released %d claim(s) older than the lease", n)
        except BaseException as exc:  # noqa: BLE001 - reported to the opener
            self.dead = exc
            if self.store is not None:
                self.store.close(checkpoint=False)
                self.store = None
            self._signal(self._ready, exc)
            self._signal(self._done, None)
            return
        self._signal(self._ready, None)
        try:
            self._loop_forever(self.store)
        except BaseException as exc:  # noqa: BLE001 - a bug: fail everyone, never hang
            log.exception("buffer: writer thread failed")
            self.dead = exc
            self._fail_all(BufferBusy(f"buffer writer failed: {exc!r}"))
        finally:
            try:
                self.store.close()
            except sqlite3.Error as exc:
                log.warning("buffer: close: %s", exc)
            self._signal(self._done, None)

    def _loop_forever(self, store: Store) -> None:
        s = self.settings
        interval = s.commit_interval_ms / 1000.0
        backoff = Backoff(base=0.05, cap=2.0)
        while True:
            self._idle = True
            while not self._dq and not self._stop:
                if not self._wake.wait(MAINTENANCE_S) and not self._dq:
                    self._maintain(store)
                self._wake.clear()
            self._idle = False
            if not self._dq:
                return  # stopping and drained
            if interval > 0 and not self._stop:
                deadline = time.monotonic() + interval
                while self.pending < s.commit_max_readings:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._full.wait(left)
                    if self._stop:
                        break
                self._full.clear()
            ops = self._take(s.commit_max_readings)
            try:
                ok = execute_group(store, ops, self.clock.now_ms(), extra=self._flush_overload)
            except BaseException as exc:  # a bug: these callers must not hang either
                for op in ops:
                    op.error = BufferBusy(f"buffer writer failed: {exc!r}")
                self._resolve(ops)
                raise
            self._resolve(ops)
            if ok:
                self._overload_flushed = self._overload_seen
                backoff.reset()
            else:
                time.sleep(backoff.next_delay())

    def _take(self, max_readings: int) -> list[Op]:
        ops: list[Op] = []
        n = 0
        dq = self._dq
        while dq and (n < max_readings or not ops):
            op = dq.popleft()
            ops.append(op)
            n += op.n
        self._taken += n
        return ops

    def _flush_overload(self, store: Store) -> None:
        # counted in the group's transaction; `_overload_flushed` advances once it committed
        self._overload_seen = self.overload
        store.bump("refused.overload.raw", self._overload_seen - self._overload_flushed)

    def _maintain(self, store: Store) -> None:
        now = self.clock.now_ms()
        try:
            with store.transaction():
                space.prune_seen(store, now)
                space.reclaim(store)
                if len(store.series.keys) > 2 * store.series_after_gc + 1000:
                    store.gc_series()
        except sqlite3.Error as exc:
            log.warning("buffer: maintenance failed: %s", exc)

    def _resolve(self, ops: list[Op]) -> None:
        if any(op.fut is not None or op.cb is not None for op in ops):
            try:
                self.loop.call_soon_threadsafe(resolve_ops, ops)
            except RuntimeError:
                pass

    def _fail_all(self, exc: BaseException) -> None:
        ops = list(self._dq)
        self._dq.clear()
        for op in ops:
            op.error = exc
        self._resolve(ops)
