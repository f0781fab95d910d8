"""Replaying committed alert transitions onto an older engine snapshot — pure.

The alert service persists two things (see `gateway.alerts.service`): a full engine snapshot
now and then (expensive: every open window), and every alert transition, in the outbox,
before any channel sees it (cheap).  After a crash the engine is rebuilt from the last full
snapshot *plus* the transitions committed after it, so the alert book is exactly as at the
last commit:

* ``firing`` adds the alert (state firing, notifications 0), ``renotify`` refreshes its
  message, values and notification count, ``acknowledged`` records who and when,
  ``resolved`` removes it; the incarnation counter of its dedup key follows;
* the ``for N windows`` count of the (rule, subject) is dropped, as the engine drops it
  when an alert fires or resolves;
* stale-sensor bookkeeping follows: a stale ``firing`` marks the device silent, its
  ``resolved`` marks it seen again (so the next reading resolves a restored stale alert,
  and a device that is still silent is not flagged twice);
* the open windows of every subject with a transition are discarded: those windows may
  already have been closed and evaluated after the snapshot, and evaluating them again
  against the newer alert state could resolve or re-fire an alert from old data.  Such a
  subject's windows start afresh from new readings.

Windows of other subjects resume from the snapshot; a window of theirs that closed after
the snapshot without producing a transition closes again from the snapshot's part of its
data (its aggregate event has the same idempotency key, so the buffer keeps the first).

`apply_transitions` works on the dict of `AlertEngine.snapshot()` (format version
1) and returns a new dict for `AlertEngine.restore`; `restore_engine` is the whole start-up
step, including the case of a state that cannot be used.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edge.rules import AlertEngine, RuleSet
from edge.rules.model import GATEWAY_KINDS
from edge.windows.state import drop_series

log = logging.getLogger("fieldlink.gateway.alerts")

SUPPORTED_VERSION = 1
_TAGS = ("facility", "line", "zone")


def scope_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the rule matched on, as the engine keeps it with the alert (rechecked on reload)."""
    if record.get("kind") in GATEWAY_KINDS:
        return {}
    values = record.get("values") or {}
    return {"measurement": values.get("measurement"),
            "tags": {k: values[k] for k in _TAGS if isinstance(values.get(k), str)},
            "window": values.get("window")}


def _alert(record: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    return {
        "rule_id": record["rule_id"], "kind": record["kind"], "subject": record["device_id"],
        "incarnation": int(record["incarnation"]), "severity": record["severity"],
        "message": record.get("message", ""), "values": dict(record.get("values") or {}),
        "fired_at_ms": int(record["fired_at_ms"]), "state": record["state"],
        "last_notified_ms": at_ms, "notifications": int(record.get("notifications", 0)),
        "acked_by": record.get("acked_by"), "acked_at_ms": record.get("acked_at_ms"),
        "resolved_at_ms": None, "reason": None, "scope": scope_of(record),
    }


def _stale_entry(record: Mapping[str, Any]) -> list[Any]:
    values = record.get("values") or {}
    last_seen = values.get("last_seen_ms")
    return [int(last_seen) if isinstance(last_seen, int) else int(record["fired_at_ms"]),
            values.get("measurement") or "unknown",
            *(values.get(k) if isinstance(values.get(k), str) else None for k in _TAGS)]


def apply_transitions(snapshot: Mapping[str, Any],
                      records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`snapshot` with `records` (transition records in commit order: ``{"transition", "at_ms",
    **AlertTransition.body}``) replayed onto it.  Raises ValueError for another snapshot
    version."""
    if snapshot.get("version") != SUPPORTED_VERSION:
        raise ValueError(f"unsupported alert-engine snapshot version "
                         f"{snapshot.get('version')!r} (expected {SUPPORTED_VERSION})")
    snap = copy.deepcopy(dict(snapshot))
    alerts_state = snap.setdefault("alerts", {})
    active: dict[str, dict[str, Any]] = {
        f"{a['rule_id']}:{a['subject']}": a for a in alerts_state.get("active", [])}
    incarnations: dict[str, int] = dict(alerts_state.get("incarnations", {}))
    streak_drop: set[tuple[str, str]] = set()
    subjects: set[str] = set()
    stale: dict[str, Any] = snap.setdefault("stale", {})
    saved_at = snap.get("saved_at_ms", 0)

    for rec in records:
        key = str(rec["dedup_key"])
        at = int(rec.get("at_ms") or 0)
        saved_at = max(saved_at, at)
        kind = rec.get("transition")
        rule_id, subject = str(rec["rule_id"]), str(rec["device_id"])
        incarnations[key] = max(incarnations.get(key, 0), int(rec["incarnation"]))
        subjects.add(subject)
        if kind == "firing":
            active[key] = _alert(rec, at)
            streak_drop.add((rule_id, subject))
            if rec.get("kind") == "stale" and rule_id in stale:
                item = stale[rule_id]
                entry = item["seen"].pop(subject, None) or _stale_entry(rec)
                item["silent"][subject] = entry
        elif kind in ("renotify", "acknowledged"):
            alert = active.get(key)
            if alert is None or alert["incarnation"] != rec["incarnation"]:
                continue  # the snapshot already saw it resolved: nothing to refresh
            alert.update(state=rec["state"], message=rec.get("message", alert["message"]),
                         values=dict(rec.get("values") or alert["values"]),
                         notifications=int(rec.get("notifications", 0)),
                         acked_by=rec.get("acked_by"), acked_at_ms=rec.get("acked_at_ms"))
            if kind == "renotify":
                alert["last_notified_ms"] = at
        elif kind == "resolved":
            alert = active.get(key)
            if alert is not None and alert["incarnation"] == rec["incarnation"]:
                del active[key]
            streak_drop.add((rule_id, subject))
            if rec.get("kind") == "stale" and rule_id in stale:
                item = stale[rule_id]
                entry = item["silent"].pop(subject, None)
                if entry is not None and rec.get("reason") == "cleared":
                    item["seen"][subject] = [at, *entry[1:]]

    alerts_state["active"] = list(active.values())
    alerts_state["incarnations"] = incarnations
    snap["streaks"] = [s for s in snap.get("streaks", []) if (s[0], s[1]) not in streak_drop]
    for state in snap.get("windows", {}).values():
        drop_series(state, subjects)
    snap["saved_at_ms"] = saved_at
    return snap


def _jsonable(obj: Any) -> Any:
    """For the post-mortem copy: window value arrays (bytes) as base64 text."""
    if isinstance(obj, bytes):
        return {"base64": base64.b64encode(obj).decode()}
    return str(obj)


def restore_engine(ruleset: RuleSet, snapshot: Mapping[str, Any] | None,
                   replay: list[dict[str, Any]], *, now_ms: int, gateway_id: str,
                   aside: Path) -> tuple[AlertEngine, bool]:
    """The engine to start with: `snapshot` (None: none was saved yet) with `replay` applied.
    A state that cannot be restored is written to `aside` (JSON) for a post-mortem and the
    engine starts empty; the flag says whether that happened."""
    if snapshot is None and not replay:
        return AlertEngine(ruleset, now_ms=now_ms, gateway_id=gateway_id), False
    base = snapshot
    if base is None:  # transitions were committed before the first snapshot
        base = AlertEngine(ruleset, now_ms=now_ms, gateway_id=gateway_id).snapshot(
            include_windows=True)
    try:
        snap = apply_transitions(base, replay)
        return AlertEngine.restore(ruleset, snap, now_ms=now_ms, gateway_id=gateway_id), False
    except Exception:
        with contextlib.suppress(Exception):
            aside.write_text(json.dumps({"snapshot": base, "replay": replay}, default=_jsonable))
        log.critical("alert state could not be restored; starting without it",
                     exc_info=True, extra={"fields": {"kept_in": str(aside)}})
        return AlertEngine(ruleset, now_ms=now_ms, gateway_id=gateway_id), True
