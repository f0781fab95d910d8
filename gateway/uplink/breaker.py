"""A circuit breaker for the uplink — pure: every method takes `now` (monotonic seconds).

    closed ──(N consecutive failures)──▶ open ──(reset_s later)──▶ half-open
       ▲                                   ▲                          │
       └────────(probe succeeds)───────────┼──────────────────────────┤
                                           └─────(probe fails)────────┘

* closed: requests go; `failure()` counts consecutive failures, `success()` resets the count.
* open: no request goes until `reset_s` after it opened (`admit` says how long to wait).
* half-open: exactly one request (the probe) is admitted; the others wait for its outcome.
  Success closes the circuit, failure opens it again for another `reset_s`.

Why: while the cloud is down, a gateway stops spending bandwidth and battery on requests that
cannot succeed, and thousands of gateways do not hammer a recovering ingest; the backoff still
spaces the attempts in the closed state.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: how long a request waits before asking again while a half-open probe is in flight
PROBE_POLL_S = 0.05


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float) -> None:
        if failures < 1 or reset_s <= 0:
            raise ValueError("a breaker needs failures >= 1 and reset_s > 0")
        self.failures = failures
        self.reset_s = reset_s
        self.consecutive = 0
        #: times the circuit opened (from closed or after a failed probe)
        self.opened = 0
        self._opened_at: float | None = None
        self._probing = False

    def state(self, now: float) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if now - self._opened_at < self.reset_s:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def admit(self, now: float) -> float:
        """0.0 when a request may go now (in half-open: it becomes the probe), else the
        seconds to wait before asking again."""
        state = self.state(now)
        if state is CircuitState.CLOSED:
            return 0.0
        if state is CircuitState.OPEN:
            assert self._opened_at is not None
            return self._opened_at + self.reset_s - now
        if self._probing:
            return PROBE_POLL_S
        self._probing = True
        return 0.0

    def success(self) -> None:
        self.consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self, now: float) -> None:
        self.consecutive += 1
        if self._opened_at is not None:
            # a failed probe (or a request admitted before the circuit opened): reopen
            if self._probing or self.state(now) is CircuitState.HALF_OPEN:
                self._opened_at = now
                self.opened += 1
            self._probing = False
        elif self.consecutive >= self.failures:
            self._opened_at = now
            self.opened += 1

    def abandon(self) -> None:
        """The admitted request ended without an answer either way (shutdown): another may
        probe."""
        self._probing = False
