"""`AlertEngine` state for snapshots: `capture` (a copy, quick, on the owner's thread) and
`EngineCapture.to_dict()` (the msgpack-safe snapshot, on any thread, later); `restore`.

Why two steps: building and encoding the full snapshot takes longer than the copy, which is
all the engine waits for — per window series and open pane its counters and value count
(`edge.windows.state`; about a µs per open pane, ~60 ms for 10,000 devices with the shipped
windows), the alert bodies, the `for N windows` counts, the stale bookkeeping (immutable
entries: dict copies).  The snapshot is exactly the engine's state at the moment of the
copy.  `AlertEngine.snapshot()` is `capture().to_dict()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.model import Reading
from edge.rules.alerts import AlertBook, AlertTransition
from edge.rules.model import RuleSet
from edge.rules.stale import StaleTracker
from edge.windows import Windower, WindowSpec
from edge.windows.state import WindowerCapture

if TYPE_CHECKING:
    from edge.rules.engine import AlertEngine

SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EngineCapture:
    saved_at_ms: int
    gateway_id: str
    alerts: dict[str, Any]
    streaks: list[list[Any]]
    #: `StaleTracker.copy_entries()`: copies of dicts of immutable entries
    stale: dict[str, tuple[dict[str, int], dict[str, Reading], dict[str, tuple[int, Reading]]]]
    pending: list[list[Any]]
    windows: dict[str, WindowerCapture] | None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot: msgpack-safe; JSON-safe without windows (their value arrays are
        `bytes`, see `edge.windows.state`)."""
        snap: dict[str, Any] = {
            "version": SNAPSHOT_VERSION, "saved_at_ms": self.saved_at_ms,
            "gateway_id": self.gateway_id, "alerts": self.alerts, "streaks": self.streaks,
            "stale": StaleTracker.state_of(self.stale),
            "pending": self.pending,
        }
        if self.windows is not None:
            snap["windows"] = {wid: c.to_state() for wid, c in self.windows.items()}
        return snap


def capture(eng: AlertEngine, *, include_windows: bool) -> EngineCapture:
    return EngineCapture(
        saved_at_ms=eng._now, gateway_id=eng.gateway_id, alerts=eng._book.to_state(),
        streaks=[[rid, subject, st.count, st.next_start]
                 for (rid, subject), st in eng._streaks.items()],
        stale=eng._stale.copy_entries(),
        pending=[[t.transition, t.at_ms, dict(t.body)] for t in eng._pending],
        windows=({wid: w.capture() for wid, w in eng._windowers.items()}
                 if include_windows else None))


def restore(cls: type[AlertEngine], ruleset: RuleSet, snapshot: Mapping[str, Any], *,
            now_ms: int, gateway_id: str | None) -> AlertEngine:
    from edge.rules.engine import _Streak

    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported alert-engine snapshot version "
                         f"{snapshot.get('version')!r} (expected {SNAPSHOT_VERSION})")
    eng = cls(ruleset, now_ms=now_ms,
              gateway_id=gateway_id or str(snapshot.get("gateway_id", "gateway")))
    eng._book = AlertBook.from_state(snapshot["alerts"], eng._cooldowns)
    eng._pending = [AlertTransition(kind, at, body)
                    for kind, at, body in snapshot.get("pending", [])]
    for rid, subject, count, next_start in snapshot.get("streaks", []):
        eng._streaks[(rid, subject)] = _Streak(count, next_start)

    eng._stale = StaleTracker.from_state(snapshot.get("stale", {}), now_ms=now_ms)
    for wid, state in snapshot.get("windows", {}).items():
        old = WindowSpec.from_dict(state["spec"])
        if wid in ruleset.windows and ruleset.windows[wid] == old:
            eng._windowers[wid] = Windower.from_state(old, state, now_ms=now_ms)
        else:
            orphan = Windower.from_state(old, state, now_ms=now_ms)
            eng._pending_aggregates.append(orphan.close_all("reload"))
    # rules as they were when saved are unknown; judge every state against the new set
    eng._rules = {}
    eng._pending += eng._reconcile({r.id: r for r in ruleset.rules}, lambda old, new: False)
    eng._install(ruleset)
    return eng
