"""Scenario results, the table and the JSON summary of a torture run.

A `ScenarioResult` passes when nothing acknowledged was lost, nothing is duplicated after
de-duplication, no process crashed, no secret leaked into a log, and every check of the
scenario held.  The acceptance line of the run is the same over all scenarios:
**0 lost, 0 duplicated after de-duplication, 0 crashes.**
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .tally import StoreTally


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    scenario: str
    trials: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    crashes: int = 0
    #: input refused (and counted, dead-lettered), by reason
    rejected: Counter[str] = field(default_factory=Counter)
    #: rows removed by policy and counted (evictions), by reason
    dropped: Counter[str] = field(default_factory=Counter)
    stores: dict[str, StoreTally] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    error: str | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def add_store(self, tally: StoreTally) -> None:
        """Counts a store's losses and duplicates (the worst store decides)."""
        self.stores[tally.store] = tally
        self.lost = max(self.lost, tally.lost)
        self.duplicated = max(self.duplicated, tally.duplicated)
        self.check(f"{tally.store}: nothing that no sensor sent", tally.phantom == 0,
                   f"{tally.phantom} phantom readings, e.g. {tally.phantom_sample}"
                   if tally.phantom else "")
        if tally.error:
            self.check(f"{tally.store}: readable", False, tally.error)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return (self.skipped is None and self.error is None and self.lost == 0
                and self.duplicated == 0 and self.crashes == 0 and not self.leaks
                and not self.failed_checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "ok": self.ok, "trials": self.trials,
            "acknowledged": self.acknowledged, "lost": self.lost,
            "duplicated": self.duplicated, "crashes": self.crashes,
            "rejected": dict(sorted(self.rejected.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "stores": {k: v.as_dict() for k, v in self.stores.items()},
            "checks": [{"name": c.name, "ok": c.ok, **({"detail": c.detail} if c.detail
                                                       else {})} for c in self.checks],
            "figures": self.figures, "notes": self.notes, "leaks": self.leaks,
            "seconds": round(self.seconds, 1),
            **({"skipped": self.skipped} if self.skipped else {}),
            **({"error": self.error} if self.error else {}),
        }


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries the table and the JSON)."""
    print(f"[torture {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _reasons(c: Counter[str], limit: int = 4) -> str:
    if not c:
        return "-"
    items = c.most_common()
    text = ", ".join(f"{k}={v}" for k, v in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def table(results: list[ScenarioResult]) -> str:
    head = ["scenario", "trials", "acknowledged", "lost", "duplicated", "crashes",
            "rejected (by reason)", "dropped, counted", "result"]
    rows = []
    for r in results:
        verdict = ("skipped" if r.skipped else "ERROR" if r.error else
                   "ok" if r.ok else "FAIL")
        rows.append([r.scenario, str(r.trials), str(r.acknowledged), str(r.lost),
                     str(r.duplicated), str(r.crashes), _reasons(r.rejected),
                     _reasons(r.dropped), verdict])
    total = summary(results)
    rows.append(["TOTAL", str(total["trials"]), str(total["acknowledged"]),
                 str(total["lost"]), str(total["duplicated"]), str(total["crashes"]),
                 str(sum(total["rejected"].values())), str(sum(total["dropped"].values())),
                 "ok" if total["ok"] else "FAIL"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    out.append("")
    out.append(acceptance(results))
    for r in results:
        for c in r.failed_checks:
            out.append(f"  FAILED {r.scenario}: {c.name}" + (f" — {c.detail}" if c.detail
                                                             else ""))
        for leak in r.leaks:
            out.append(f"  LEAK {r.scenario}: {leak}")
        if r.error:
            out.append(f"  ERROR {r.scenario}: {r.error.splitlines()[0] if r.error else ''}")
        if r.skipped:
            out.append(f"  SKIPPED {r.scenario}: {r.skipped}")
    return "\n".join(out)


def acceptance(results: list[ScenarioResult]) -> str:
    t = summary(results)
    verdict = "PASS" if t["ok"] else "FAIL"
    return (f"acceptance: {t['lost']} lost, {t['duplicated']} duplicated after "
            f"de-duplication, {t['crashes']} crashes (required: 0 lost, 0 duplicated after "
            f"de-duplication, 0 crashes) — {verdict}")


def summary(results: list[ScenarioResult]) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for r in results:
        rejected.update(r.rejected)
        dropped.update(r.dropped)
    return {
        "trials": sum(r.trials for r in results),
        "acknowledged": sum(r.acknowledged for r in results),
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "crashes": sum(r.crashes for r in results),
        "rejected": dict(sorted(rejected.items())),
        "dropped": dict(sorted(dropped.items())),
        "ok": bool(results) and all(r.ok for r in results),
    }


def json_line(results: list[ScenarioResult], **extra: Any) -> str:
    return json.dumps({**summary(results), **extra,
                       "scenarios": {r.scenario: r.as_dict() for r in results}},
                      sort_keys=False, default=str)
