"""The alert lifecycle, a pure state machine: firing -> (acknowledged) -> resolved.

One alert exists per (rule, subject) while it is active; the subject is the device id (or
window key, or the gateway id for gateway rules).  Its `dedup_key` is ``"{rule_id}:{subject}"``
and is shared by every notification of that alert; `incarnation` counts the alert's firings
(1, 2, ...), so a new firing after resolution is a new alert with the same dedup key.

Transitions (`AlertTransition.transition`):

* ``firing``        — the alert starts (state "firing").
* ``renotify``      — still firing and not acknowledged `cooldown` after the last notification.
* ``acknowledged``  — an operator acknowledged it; no more re-notifications.
* ``resolved``      — it ended.  `reason`: "cleared" (the clear condition held), "rule_removed"
                      (its rule left the rule set), "rule_changed" (the rule no longer matches
                      this subject).

Each transition's event key is a hash of (dedup_key, incarnation, fired_at, transition,
notification number): the same transition replayed after a restore has the same key, every
distinct transition a different one.

Alert event body (`AlertTransition.to_event().body`)::

    {"transition": "firing", "dedup_key": "overheat:sensor-7", "incarnation": 1,
     "rule_id": "overheat", "kind": "threshold", "device_id": "sensor-7",
     "severity": "critical", "message": "...", "values": {...}, "state": "firing",
     "fired_at_ms": ..., "notifications": 0, "acked_by": None, "acked_at_ms": None,
     "resolved_at_ms": None, "reason": None}
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.model import Event

FIRING = "firing"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"


@dataclass(slots=True)
class Alert:
    rule_id: str
    kind: str
    subject: str
    incarnation: int
    severity: str
    message: str
    values: dict[str, Any]
    fired_at_ms: int
    state: str = FIRING
    last_notified_ms: int = 0
    #: re-notifications sent so far
    notifications: int = 0
    acked_by: str | None = None
    acked_at_ms: int | None = None
    resolved_at_ms: int | None = None
    reason: str | None = None
    #: what the rule matched on (measurement, tags) — rechecked when the rules change
    scope: dict[str, Any] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        return f"{self.rule_id}:{self.subject}"

    def body(self) -> dict[str, Any]:
        return {
            "dedup_key": self.dedup_key, "incarnation": self.incarnation,
            "rule_id": self.rule_id, "kind": self.kind, "device_id": self.subject,
            "severity": self.severity, "message": self.message, "values": dict(self.values),
            "state": self.state, "fired_at_ms": self.fired_at_ms,
            "notifications": self.notifications, "acked_by": self.acked_by,
            "acked_at_ms": self.acked_at_ms, "resolved_at_ms": self.resolved_at_ms,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class AlertTransition:
    transition: str
    at_ms: int
    body: dict[str, Any]

    @property
    def dedup_key(self) -> str:
        return str(self.body["dedup_key"])

    @property
    def state(self) -> str:
        return str(self.body["state"])

    def event_key(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        b = self.body
        for part in ("alert", b["dedup_key"], b["incarnation"], b["fired_at_ms"],
                     self.transition, b["notifications"]):
            h.update(str(part).encode())
            h.update(b"\0")
        return h.digest()

    def to_event(self) -> Event:
        return Event(kind="alert", key=self.event_key(), ts_ms=self.at_ms,
                     device_id=str(self.body["device_id"]),
                     body={"transition": self.transition, **self.body})


class AlertBook:
    """Active alerts and incarnation counters.  Resolved alerts are forgotten (they live on
    as their `resolved` transition); only the incarnation counter of their key remains."""

    def __init__(self) -> None:
        self._active: dict[str, Alert] = {}
        self._incarnations: dict[str, int] = {}
        self._renotify: list[tuple[int, str, int]] = []

    def get(self, dedup_key: str) -> Alert | None:
        return self._active.get(dedup_key)

    def __iter__(self) -> Iterator[Alert]:
        return iter(list(self._active.values()))

    def __len__(self) -> int:
        return len(self._active)

    def fire(self, *, rule_id: str, kind: str, subject: str, severity: str, message: str,
             values: dict[str, Any], now_ms: int, cooldown_ms: int,
             scope: dict[str, Any] | None = None) -> AlertTransition:
        key = f"{rule_id}:{subject}"
        assert key not in self._active, key
        incarnation = self._incarnations.get(key, 0) + 1
        self._incarnations[key] = incarnation
        alert = Alert(rule_id=rule_id, kind=kind, subject=subject, incarnation=incarnation,
                      severity=severity, message=message, values=values, fired_at_ms=now_ms,
                      last_notified_ms=now_ms, scope=scope or {})
        self._active[key] = alert
        if cooldown_ms > 0:
            heapq.heappush(self._renotify, (now_ms + cooldown_ms, key, incarnation))
        return AlertTransition(FIRING, now_ms, alert.body())

    def due_renotifications(self, now_ms: int, cooldowns: Mapping[str, int],
                            render: Any = None) -> list[AlertTransition]:
        """Re-notify firing, unacknowledged alerts whose cooldown has passed.

        `cooldowns` maps rule id to its current cooldown (so a reload's new value applies);
        `render(alert) -> str | None` may refresh the message with the latest values.
        """
        out = []
        heap = self._renotify
        while heap and heap[0][0] <= now_ms:
            _, key, incarnation = heapq.heappop(heap)
            alert = self._active.get(key)
            if alert is None or alert.incarnation != incarnation or alert.state != FIRING:
                continue
            cooldown = cooldowns.get(alert.rule_id, 0)
            if cooldown <= 0:
                continue
            due = alert.last_notified_ms + cooldown
            if due > now_ms:
                heapq.heappush(heap, (due, key, incarnation))
                continue
            if render is not None:
                alert.message = render(alert) or alert.message
            alert.notifications += 1
            alert.last_notified_ms = now_ms
            heapq.heappush(heap, (now_ms + cooldown, key, incarnation))
            out.append(AlertTransition("renotify", now_ms, alert.body()))
        return out

    def acknowledge(self, dedup_key: str, by: str, now_ms: int) -> AlertTransition | None:
        """Acknowledge a firing alert.  None when it is not active or already acknowledged."""
        alert = self._active.get(dedup_key)
        if alert is None or alert.state != FIRING:
            return None
        alert.state = ACKNOWLEDGED
        alert.acked_by = by
        alert.acked_at_ms = now_ms
        return AlertTransition(ACKNOWLEDGED, now_ms, alert.body())

    def resolve(self, dedup_key: str, now_ms: int, reason: str,
                values: dict[str, Any] | None = None) -> AlertTransition | None:
        alert = self._active.pop(dedup_key, None)
        if alert is None:
            return None
        alert.state = RESOLVED
        alert.resolved_at_ms = now_ms
        alert.reason = reason
        if values is not None:
            alert.values = values
        return AlertTransition(RESOLVED, now_ms, alert.body())

    # -- persistence ---------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"active": [asdict(a) for a in self._active.values()],
                "incarnations": dict(self._incarnations)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], cooldowns: Mapping[str, int]) -> AlertBook:
        book = cls()
        book._incarnations = {str(k): int(v) for k, v in state.get("incarnations", {}).items()}
        for item in state.get("active", []):
            alert = Alert(**item)
            key = alert.dedup_key
            book._active[key] = alert
            book._incarnations[key] = max(book._incarnations.get(key, 0), alert.incarnation)
            cooldown = cooldowns.get(alert.rule_id, 0)
            if cooldown > 0:
                heapq.heappush(book._renotify, (alert.last_notified_ms + cooldown, key,
                                                alert.incarnation))
        return book

    def schedule(self, alert: Alert, cooldown_ms: int) -> None:
        """(Re)arm re-notification of `alert` — after a reload changed its rule's cooldown."""
        if cooldown_ms > 0:
            heapq.heappush(self._renotify, (alert.last_notified_ms + cooldown_ms,
                                            alert.dedup_key, alert.incarnation))
