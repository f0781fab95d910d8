"""Capped, jittered exponential backoff — pure, so it is tested without sleeping.

`Backoff.next_delay()` returns the seconds to wait before attempt n+1 using "full jitter"
(uniform in [0, min(cap, base * 2**n)]), which spreads reconnect storms of thousands of
sensors or gateways instead of synchronising them.  `reset()` after a success.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 0.1
    cap: float = 30.0
    #: a floor so a tight failure loop never spins at 0 s
    floor: float = 0.01
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return max(self.floor, self.rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        self.attempt = 0
