"""Fakes for testing gateway components at their seams (shipped, like bytewax.testing)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.ingest import Origin, Outcome


@dataclass
class RecordingIngest:
    """An `Ingest` that records every call and answers with a scripted outcome.

    `delay` simulates commit latency (so a test can prove an ack waits for the commit);
    `reject` maps a payload to a dead-letter reason.
    """

    delay: float = 0.0
    reject: dict[bytes, str] = field(default_factory=dict)
    calls: list[tuple[bytes, Origin, bool]] = field(default_factory=list)
    committed: list[bytes] = field(default_factory=list)

    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        self.calls.append((payload, origin, durable))
        if self.delay:
            await asyncio.sleep(self.delay)
        if payload in self.reject:
            return Outcome(rejected=self.reject[payload], detail="scripted rejection")
        self.committed.append(payload)
        return Outcome(accepted=1)
