"""A byte-rate cap for metered links: a token bucket that may go into debt — pure (`now` is
monotonic seconds, given by the caller).

    bucket = TokenBucket(rate=2000, burst=2000)       # 2 kB/s, 2 kB at once after idling
    delay = bucket.reserve(len(request), now)         # wait `delay` s, then send

Guarantee: the bytes of every request started by time t add up to at most
`burst + rate * (t - t0)` (t0: the bucket's creation).  A request larger than the burst is
not refused: it waits until the debt it leaves is paid back at `rate`, so the average holds
over any window that starts at an idle moment.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        if self.burst <= 0:
            raise ValueError("burst must be > 0")
        self.tokens = self.burst
        self._t = now

    def _refill(self, now: float) -> None:
        if now > self._t:
            self.tokens = min(self.burst, self.tokens + (now - self._t) * self.rate)
            self._t = now

    def reserve(self, n: int, now: float) -> float:
        """Take `n` bytes' worth of tokens; returns the seconds to wait before sending."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
