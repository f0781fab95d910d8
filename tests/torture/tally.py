"""Sim ledgers against the stores: what was acknowledged, what got lost, what is doubled.

The simulator's ledger (`firmware_sim.ledger.Ledger`) records, per reading, whether the
gateway acknowledged it (QoS 1 PUBACK: committed to the buffer).  `Expected` is the union
over every ledger of a scenario: the readings a correct pipeline must deliver, and every
reading that was sent at all (nothing else may show up downstream).

`compare(expected, contents)` gives, per store:

* `lost` — acknowledged readings the store does not hold,
* `phantom` — readings the store holds that no sensor sent,
* `raw_copies` — rows beyond one per reading (at-least-once delivery; collapsed by
  de-duplication on the idempotency key),
* `duplicated` — readings held with two different contents (not collapsible).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .readback import Key, StoreContents


@dataclass
class Expected:
    acked: set[Key] = field(default_factory=set)
    sent: set[Key] = field(default_factory=set)
    #: sent payloads the gateway must reject (the simulator's malformed faults)
    rejected_sent: int = 0
    #: ledger rows: sent, acknowledged, failed (never acknowledged)
    rows_sent: int = 0
    rows_acked: int = 0
    ledgers: int = 0

    def add_ledger(self, path: Path) -> None:
        from firmware_sim.ledger import Ledger

        with Ledger.open(path) as led:
            self.acked |= set(led.expected_unique())
            for row in led.sent():
                self.rows_sent += 1
                if row.expect == "rejected":
                    self.rejected_sent += 1
                else:
                    self.sent.add(row.key)
                if row.acked:
                    self.rows_acked += 1
        self.ledgers += 1

    @classmethod
    def from_ledgers(cls, paths: Iterable[Path]) -> Expected:
        out = cls()
        for p in paths:
            out.add_ledger(p)
        return out


@dataclass
class StoreTally:
    store: str
    held: int
    lost: int
    phantom: int
    raw_copies: int
    duplicated: int
    copies_across_batches: int = 0
    unkeyed: int = 0
    lost_sample: list[Key] = field(default_factory=list)
    phantom_sample: list[Key] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"held": self.held, "lost": self.lost, "phantom": self.phantom,
                "raw_copies": self.raw_copies, "duplicated": self.duplicated,
                "copies_across_batches": self.copies_across_batches,
                "unkeyed": self.unkeyed, "lost_sample": [list(k) for k in self.lost_sample],
                "phantom_sample": [list(k) for k in self.phantom_sample],
                **({"error": self.error} if self.error else {})}


def compare(expected: Expected, contents: StoreContents,
            allowed_missing: set[Key] | None = None) -> StoreTally:
    held = set(contents.copies)
    missing = expected.acked - held - (allowed_missing or set())
    phantom = held - expected.sent
    return StoreTally(store=contents.store, held=len(held), lost=len(missing),
                      phantom=len(phantom), raw_copies=contents.raw_copies,
                      duplicated=contents.duplicated,
                      copies_across_batches=contents.copies_across_batches,
                      unkeyed=contents.unkeyed, lost_sample=sorted(missing)[:5],
                      phantom_sample=sorted(phantom)[:5], error=contents.error)
