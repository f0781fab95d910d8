"""The alert service's clock: when the engine runs, and how late windows close.

`run_ticker(service, period, coalesce_s)` is the body of the task ``alerts-ticker``:

* every `period` (100 ms) a full `service.step()` — window closes plus the stale, gateway
  and re-notification checks;
* in between, `service.close_windows()` — closes only — as soon as windows are due: woken
  by `service.observe` when a reading moved a watermark past a window's end (`woken`), and
  at the engine's next idle deadline.  Wakes closer together than `coalesce_s` (10 ms) are
  served by one call, because every call costs numpy a fixed ~0.1 ms whatever the number of
  windows: the pipeline files readings one MQTT message at a time, 10,000 a second.

So a window is closed within `coalesce_s` (plus the loop's own delay) of becoming due, not
up to a whole tick later.  A step that fails (e.g. a full disk) is retried with the next
tick; the failure is counted (`step_errors`) and logged at most once per 10 s.  When the loop
stalled for more than a second the ticks missed are counted (`ticks_skipped`), not replayed.

`CloseLag` keeps the recent close lags (how long after its close became due each window was
closed — `WindowResult.due_ms` to the closing call's `now`) for `stats()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from edge.windows import ClosedWindows, WindowResult
from edge.windows.batch import parts_of

if TYPE_CHECKING:
    from gateway.alerts.service import AlertService

log = logging.getLogger("fieldlink.gateway.alerts")

#: a stall longer than this resumes the rhythm instead of running the missed ticks
STALL_S = 1.0
ERROR_LOG_EVERY_S = 10.0


class CloseLag:
    """The last `size` close lags, in ms."""

    def __init__(self, size: int = 20_000) -> None:
        self.lags: deque[int] = deque(maxlen=size)

    def add(self, aggregates: Sequence[WindowResult], now_ms: int) -> None:
        for part in parts_of(aggregates):
            due = (part.due_ms() if isinstance(part, ClosedWindows)
                   else [r.due_ms for r in part])
            self.lags.extend(now_ms - d for d in due if d is not None)

    def summary(self) -> dict[str, int | None]:
        if not self.lags:
            return {"p50": None, "p99": None, "max": None, "windows": 0}
        s = sorted(self.lags)
        return {"p50": s[len(s) // 2], "p99": s[min(len(s) - 1, len(s) * 99 // 100)],
                "max": s[-1], "windows": len(s)}


async def run_ticker(svc: AlertService, period: float, coalesce_s: float) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time() + period
    last_close = float("-inf")
    last_error = [float("-inf")]
    while True:
        now = loop.time()
        if now >= next_at:
            if now - next_at > STALL_S:
                svc.counters["ticks_skipped"] += int((now - next_at) / period)
                next_at = now
            next_at += period
            await _guarded(svc, svc.step, loop, last_error)
            last_close = loop.time()
            continue
        wait = next_at - now
        deadline = svc.engine.next_deadline_ms()
        if deadline is not None:
            wait = min(wait, max(0.0, (deadline - svc.clock.now_ms()) / 1000))
        if wait > 0 and not svc.woken.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await svc.woken.wait()
        gap = last_close + coalesce_s - loop.time()
        if gap > 0:
            await asyncio.sleep(min(gap, max(0.0, next_at - loop.time())))
        svc.woken.clear()
        if svc.engine.closes_pending(svc.clock.now_ms()):
            await _guarded(svc, svc.close_windows, loop, last_error)
            last_close = loop.time()


async def _guarded(svc: AlertService, fn: Callable[[], Awaitable[Any]],
                   loop: asyncio.AbstractEventLoop, last_error: list[float]) -> None:
    try:
        await fn()
    except Exception:
        # e.g. a full disk: the transitions stay queued and every tick retries;
        # say so once per 10 s, not ten times a second
        svc.counters["step_errors"] += 1
        if loop.time() - last_error[0] >= ERROR_LOG_EVERY_S:
            last_error[0] = loop.time()
            log.exception("alert tick failed; retried every tick", extra={
                "fields": {"step_errors": svc.counters["step_errors"]}})
