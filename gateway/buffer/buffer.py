"""`Buffer`: the asyncio face of the store-and-forward buffer.

    async with Buffer(settings, clock=SystemClock()) as buf:
        res = await buf.append(readings, durable=True)   # resolves after the commit
        claim = await buf.claim(max_records=1000, live_share=0.3)
        ...
        await buf.ack(claim)

Who calls what: the gateway pipeline calls `append` / `append_events` / `dead_letter`; the
uplink calls `claim` / `set_claim_meta` / `ack` / `release` and, once at start,
`pending_claims`; the HTTP/metrics side calls `stats`; the operator CLI works on the file
directly (`gateway.buffer.cli`).  All methods must be called from the event loop that entered
the buffer.  All SQLite work runs on one writer thread (`gateway.buffer.writer`), so no call
blocks the loop for longer than it takes to hand over an op.

Shutdown: leaving the `async with` (e.g. on SIGTERM) commits everything already handed over,
checkpoints and truncates the WAL, and closes the file.  A second gateway process on the same
file is refused (an exclusive `flock` on `<path>.lock`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edge.clock import Clock, SystemClock
from edge.model import Event, Priority, Reading
from gateway.buffer import claims, deadletters
from gateway.buffer.results import AppendResult, BufferStats, Claim, DeadLetter
from gateway.buffer.settings import BufferSettings
from gateway.buffer.store import Store
from gateway.buffer.writer import AppendOp, CallOp, OpCallback, Writer, events_op
from gateway.errors import BufferBusy


class Buffer:
    def __init__(self, settings: BufferSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._writer: Writer | None = None
        self._lock_fd: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Buffer:
        loop = asyncio.get_running_loop()
        self._take_lock()
        writer = Writer(self.settings, self.clock, loop)
        try:
            await writer.start()
        except BaseException:
            await writer.stop()
            self._drop_lock()
            raise
        self._writer = writer
        return self

    async def __aexit__(self, *exc: object) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                await writer.stop()
        finally:
            self._drop_lock()

    def _take_lock(self) -> None:
        path = self.settings.path + ".lock"
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BufferBusy(f"{self.settings.path} is in use by another gateway process") from None
        self._lock_fd = fd

    def _drop_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise BufferBusy("buffer is not open")
        return self._writer

    async def _call(self, fn: Callable[[Store, int], Any], *, fsync: bool = False) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.writer.submit(CallOp(fut=fut, fsync=fsync, fn=fn))
        return await fut

    # -- ingest ------------------------------------------------------------------------------
    async def append(self, readings: Sequence[Reading], *, durable: bool = True
                     ) -> AppendResult:
        """Buffer raw readings.

        durable=True resolves after the transaction holding them committed (fsynced with
        synchronous=FULL); only then may the ingress acknowledge.  durable=False resolves at
        once (`pending`); the readings go into the next group commit.  A reading with
        `received_ms == 0` is stamped with the buffer's clock first.  Raises BufferBusy when
        the commit failed or the writer is too far behind (`max_pending_readings`).
        """
        if not durable:
            return self.append_nowait(readings)
        if not readings:
            return AppendResult()
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.append_soon(readings, _settle, fut)
        return await fut

    def append_soon(self, readings: Sequence[Reading], done: OpCallback, token: Any = None
                    ) -> None:
        """`append(durable=True)` without a coroutine, for the ingest hot path.

        `done(token, result, error)` is called once, on the event loop, after the group
        holding the readings committed (`result`: AppendResult) or failed (`error`:
        BufferBusy / BufferCorrupt); groups settle in submission order.  Raises BufferBusy at
        once — and then never calls `done` — when the buffer is closed or the writer is more
        than `max_pending_readings` behind.
        """
        writer = self.writer
        n = len(readings)
        if writer.pending + n > self.settings.max_pending_readings:
            writer.overload += n
            raise BufferBusy(f"buffer writer is {writer.pending} readings behind")
        writer.submit(AppendOp(n=n, readings=self._stamped(readings), cb=done, token=token))

    def append_nowait(self, readings: Sequence[Reading]) -> AppendResult:
        """`append(durable=False)`: queued for the next group commit, `pending=n`; refused
        (`refused_reason="overload"`) when the writer is too far behind."""
        writer = self.writer
        n = len(readings)
        if n == 0:
            return AppendResult()
        if writer.pending + n > self.settings.max_pending_readings:
            writer.overload += n
            return AppendResult(refused=n, refused_reason="overload")
        writer.submit(AppendOp(n=n, readings=self._stamped(readings)))
        return AppendResult(pending=n)

    def _stamped(self, readings: Sequence[Reading]) -> list[Reading]:
        for r in readings:
            if not r.received_ms:
                now = self.clock.now_ms()
                return [r if r.received_ms else dataclasses.replace(r, received_ms=now)
                        for r in readings]
        return readings if isinstance(readings, list) else list(readings)

    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        """Buffer aggregates / alerts (durable).  Alerts are never evicted."""
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.writer.submit(events_op(list(events), fut))
        return await fut

    async def dead_letter(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                          detail: str = "", durable: bool = True) -> None:
        """Keep refused input with its raw bytes; counted as `deadletter.<reason>`."""
        if not durable:
            self.dead_letter_soon(raw, source=source, reason=reason, peer=peer, detail=detail)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.dead_letter_soon(raw, source=source, reason=reason, peer=peer, detail=detail,
                              done=_settle, token=fut)
        await fut

    def dead_letter_soon(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                         detail: str = "", done: OpCallback | None = None,
                         token: Any = None) -> None:
        """`dead_letter()` without a coroutine: with `done`, `done(token, None, error)` runs
        on the loop after the commit (as for `append_soon`); without, it is best effort."""
        item = (bytes(raw), source, peer, reason, detail)

        def run(st: Store, now: int) -> None:
            deadletters.add(st, [item], now)
        self.writer.submit(CallOp(fn=run, cb=done, token=token))

    async def flush(self) -> None:
        """Resolve once everything handed over before this call is committed."""
        await self._call(lambda st, now: None)

    # -- uplink ------------------------------------------------------------------------------
    async def claim(self, max_records: int = 1000, live_share: float | None = None
                    ) -> Claim | None:
        """Claim up to `max_records` rows as one batch (None when nothing is waiting).
        See `gateway.buffer.claims` for the selection and the protocol."""
        share = self.settings.live_share if live_share is None else live_share

        result: Claim | None = await self._call(
            lambda st, now: claims.make_claim(st, max_records, share, now), fsync=True)
        return result

    async def ack(self, claim: Claim | int) -> int:
        """The cloud acknowledged the batch: delete its rows.  Returns rows removed."""
        seq = claim if isinstance(claim, int) else claim.seq
        result: int = await self._call(lambda st, now: claims.ack(st, seq, now))
        return result

    async def release(self, claim: Claim | int) -> int:
        """Give the batch up: its rows become claimable again.  Returns rows released."""
        seq = claim if isinstance(claim, int) else claim.seq
        result: int = await self._call(lambda st, now: claims.release(st, seq))
        return result

    async def set_claim_meta(self, claim: Claim | int, meta: bytes | None) -> bool:
        """Store opaque bytes with a claim (returned by `pending_claims`)."""
        seq = claim if isinstance(claim, int) else claim.seq
        result: bool = await self._call(lambda st, now: claims.set_meta(st, seq, meta))
        return result

    async def pending_claims(self) -> list[Claim]:
        """Claims not yet acknowledged or released (after a restart: re-send these first)."""
        result: list[Claim] = await self._call(lambda st, now: claims.pending_claims(st))
        return result

    # -- operator ----------------------------------------------------------------------------
    async def dead_letters(self, *, reason: str | None = None, ids: list[int] | None = None,
                           limit: int | None = None) -> list[DeadLetter]:
        result: list[DeadLetter] = await self._call(
            lambda st, now: deadletters.select(st, reason=reason, ids=ids, limit=limit))
        return result

    async def replay_dead_letters(self, handler: Callable[[DeadLetter], Awaitable[bool]], *,
                                  reason: str | None = None, ids: list[int] | None = None,
                                  limit: int | None = None, delete: bool = True) -> int:
        """Hand dead letters to `handler` (e.g. re-ingest through the decoder); those for
        which it returns True are deleted when `delete` (counted `deadletter_dropped.replayed`).
        Returns how many the handler accepted."""
        accepted = [dl.id for dl in await self.dead_letters(reason=reason, ids=ids, limit=limit)
                    if await handler(dl)]
        if delete and accepted:
            await self._call(lambda st, now: deadletters.delete(st, accepted, "replayed"))
        return len(accepted)

    async def purge(self, classes: Sequence[Priority], *, older_than_s: float | None = None
                    ) -> int:
        """Delete unclaimed rows of `classes`, counted as `dropped.purged.<class>`."""
        older = None if older_than_s is None else int(older_than_s * 1000)
        total = 0
        while True:
            n: int = await self._call(
                lambda st, now: st.purge(list(classes), older_than_ms=older, now_ms=now))
            total += n
            if n == 0:
                return total

    async def peek(self, n: int = 10) -> list[tuple[Priority, int, int | None, Reading | Event]]:
        result: list[tuple[Priority, int, int | None, Reading | Event]] = await self._call(
            lambda st, now: st.peek(n))
        return result

    def stats(self) -> BufferStats:
        """Cheap: built from the in-memory mirror of the last commit (no SQL)."""
        writer = self.writer
        if writer.store is None:
            raise BufferBusy("buffer is not open")
        return writer.store.snapshot(self.clock.now_ms(), pending=writer.pending)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not fut.done():
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
