"""The alert board: active and recent alerts of the whole fleet, with cloud-side
acknowledgements (pure; times are arguments).

Input: alert transitions as the gateways send them (`edge.rules.alerts` event bodies, one
per `firing` / `renotify` / `acknowledged` / `resolved`), in bus order, at least once.

* An alert is identified by `<gateway>/<dedup_key>` (`alert_id`): dedup keys are unique per
  gateway only.  Its incarnation tells successive firings apart.
* Active: the newest transition of the newest incarnation is not `resolved`.  A transition of
  an older incarnation than the one shown (a late duplicate) changes nothing but is listed.
* Duplicates (the same event key again, e.g. after a consumer restart) are ignored: the last
  `seen_max` event keys are remembered.
* Recent: the newest `recent_max` transitions, newest first.
* Cloud acknowledgement (`ack`): recorded by the dashboard for one incarnation; it is shown
  with the alert and makes it count as acknowledged, but it is NOT sent to the gateway (the
  gateway keeps re-notifying until acknowledged there).  A new incarnation starts
  unacknowledged.

Every change returns an `Update` (what the live stream sends to the browsers).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AckRecord", "AlertBoard", "Update", "alert_id"]

ACTIVE_STATES = frozenset({"firing", "acknowledged"})


def alert_id(gateway: str, dedup_key: str) -> str:
    return f"{gateway}/{dedup_key}"


@dataclass(frozen=True, slots=True)
class AckRecord:
    """A cloud-side acknowledgement of one incarnation of an alert."""

    alert_id: str
    incarnation: int
    by: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Update:
    """What changed: `kind` is "transition" (a gateway's) or "ack" (a dashboard user's);
    `alert` is the alert as `AlertBoard.view` shows it (None when it is no longer active)."""

    kind: str
    alert_id: str
    alert: dict[str, Any] | None
    transition: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.alert_id, "alert": self.alert,
                "transition": self.transition}


class AlertBoard:
    def __init__(self, *, recent_max: int = 500, seen_max: int = 20_000) -> None:
        self.recent_max = recent_max
        self.seen_max = seen_max
        self._active: dict[str, dict[str, Any]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent_max)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._acks: dict[tuple[str, int], AckRecord] = {}
        self.transitions = 0
        self.duplicates = 0
        self.malformed = 0

    # -- input -------------------------------------------------------------------------------

    def apply(self, gateway: str, event_key: bytes, ts_ms: int,
              body: Mapping[str, Any]) -> Update | None:
        """File one transition; None for a duplicate or a body without an alert identity."""
        if event_key in self._seen:
            self.duplicates += 1
            return None
        dedup_key = body.get("dedup_key")
        incarnation = body.get("incarnation")
        if not isinstance(dedup_key, str) or not dedup_key or \
                not isinstance(incarnation, int) or isinstance(incarnation, bool):
            self.malformed += 1
            return None
        self._seen[event_key] = None
        if len(self._seen) > self.seen_max:
            self._seen.popitem(last=False)
        self.transitions += 1
        aid = alert_id(gateway, dedup_key)
        entry = {**dict(body), "id": aid, "gateway": gateway, "at_ms": ts_ms}
        entry.setdefault("transition", body.get("state"))
        self._recent.appendleft(entry)
        current = self._active.get(aid)
        if current is not None and current["incarnation"] > incarnation:
            return Update("transition", aid, self.view(current), self._public(entry))
        if entry.get("state") in ACTIVE_STATES and entry.get("transition") != "resolved":
            self._active[aid] = entry
        else:
            self._active.pop(aid, None)
            entry = {**entry, "state": "resolved"}
            return Update("transition", aid, None, self._public(entry))
        return Update("transition", aid, self.view(entry), self._public(entry))

    def load_acks(self, acks: Iterable[AckRecord]) -> None:
        """Restore cloud acknowledgements recorded earlier (the web store)."""
        for a in acks:
            self._acks[(a.alert_id, a.incarnation)] = a

    # -- operator ----------------------------------------------------------------------------

    def ack(self, aid: str, by: str, now_ms: int) -> tuple[str, AckRecord | None]:
        """Acknowledge the active incarnation of `aid` cloud-side.

        Returns ("ok", record) — the caller persists the record, then `commit_ack`s it;
        ("missing", None) when no such alert is active; ("already", None) when it is
        acknowledged already (on the gateway or here).
        """
        current = self._active.get(aid)
        if current is None:
            return "missing", None
        if current.get("state") == "acknowledged" or \
                (aid, current["incarnation"]) in self._acks:
            return "already", None
        return "ok", AckRecord(aid, int(current["incarnation"]), by, now_ms)

    def commit_ack(self, record: AckRecord) -> Update:
        self._acks[(record.alert_id, record.incarnation)] = record
        current = self._active.get(record.alert_id)
        return Update("ack", record.alert_id, self.view(current) if current else None)

    # -- output ------------------------------------------------------------------------------

    def _public(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if not k.startswith("_")}

    def view(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """An active alert as the dashboard shows it: the gateway's body plus `cloud_ack`
        ({"by", "at_ms"} or None) and `acknowledged` (on the gateway or in the cloud)."""
        out = self._public(entry)
        ack = self._acks.get((str(entry["id"]), int(entry["incarnation"])))
        out["cloud_ack"] = {"by": ack.by, "at_ms": ack.at_ms} if ack else None
        out["acknowledged"] = entry.get("state") == "acknowledged" or ack is not None
        return out

    def active(self) -> list[dict[str, Any]]:
        """Active alerts, unacknowledged first, then critical first, then newest first."""
        severity = {"critical": 0, "major": 1, "warning": 2, "minor": 3, "info": 4}
        views = [self.view(e) for e in self._active.values()]
        return sorted(views, key=lambda a: (a["acknowledged"],
                                            severity.get(str(a.get("severity")), 5),
                                            -int(a.get("fired_at_ms") or 0)))

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        items = list(self._recent) if limit is None else list(self._recent)[:limit]
        return [self._public(e) for e in items]

    def get(self, aid: str) -> dict[str, Any] | None:
        current = self._active.get(aid)
        return self.view(current) if current is not None else None

    def firing_by_gateway(self) -> dict[str, int]:
        """Active, unacknowledged alerts per gateway."""
        out: dict[str, int] = {}
        for a in self.active():
            if not a["acknowledged"]:
                out[a["gateway"]] = out.get(a["gateway"], 0) + 1
        return out

    def __len__(self) -> int:
        return len(self._active)
