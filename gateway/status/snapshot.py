"""What the gateway's status page shows, from the components' `stats()` (pure: `now_ms` and
every snapshot are arguments; nothing here touches a socket, a file or the event loop).

    meter = RateMeter()
    body = status_body(Parts(...), now_ms, meter)     # the JSON of GET /status.json

Sections of the body, and their sources:

    sensors      MQTT clients of role device/anonymous (`mqtt.stats()`), serial ports open
                 (`serial.stats()`), CoAP listening and readings (`coap.stats()`)
    readings     stored per second over the last `RateMeter.window_ms` (the pipeline's
                 stored-readings counter), and totals by protocol
    buffer       fill (disk bytes / max bytes), rows by class, oldest unsent reading's age,
                 drops by reason (`buffer.stats()`)
    uplink       "up" / "down" / "circuit open" / "refused" / "disabled", last status and
                 error, backlog age, batches sent (`uplink.stats()`)
    alerts       firing and acknowledged alerts (`alerts.engine.active_alerts()`)
    dead_letters counts by reason (persistent) and the newest few with their reason, source,
                 peer and detail (never the raw bytes)

A component that is absent is reported as such ("disabled"), one whose `stats()` raised as
{"error": "..."}: the page always renders.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Parts", "RateMeter", "status_body", "uplink_state"]


@dataclass
class Parts:
    """Snapshots gathered from the running gateway (None: that component is not running;
    an Exception: its stats() raised)."""

    gateway_id: str
    buffer: Any = None
    pipeline: Any = None
    mqtt: Any = None
    coap: Any = None
    serial: Any = None
    uplink: Any = None
    alerts_active: Any = None
    dead_letters: Sequence[Any] = field(default_factory=list)


class RateMeter:
    """A per-second rate of a growing counter from the samples it is given (one per page
    poll): the counter's increase over the newest `window_ms`, None until two samples."""

    def __init__(self, window_ms: int = 10_000, keep: int = 64) -> None:
        self.window_ms = window_ms
        self._samples: deque[tuple[int, int]] = deque(maxlen=keep)

    def update(self, total: int, now_ms: int) -> float | None:
        s = self._samples
        if s and (total < s[-1][1] or now_ms < s[-1][0]):
            s.clear()  # the counter (or the clock) restarted
        if not s or now_ms > s[-1][0]:
            s.append((now_ms, total))
        # the base is the newest sample at least a window old (or the oldest there is)
        while len(s) > 2 and now_ms - s[1][0] >= self.window_ms:
            s.popleft()
        base_ms, base_total = s[0]
        if base_ms >= now_ms:
            return None
        return round((total - base_total) * 1000 / (now_ms - base_ms), 2)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _section(obj: Any) -> dict[str, Any] | None:
    """None for absent, {"error"} for a failed snapshot, else None: go on."""
    if obj is None:
        return {"state": "disabled"}
    if isinstance(obj, BaseException):
        return {"error": f"{type(obj).__name__}: {obj}"}
    return None


def uplink_state(u: Any) -> str:
    if _get(u, "circuit_open"):
        return "circuit open"
    status = _get(u, "last_status")
    if status in (401, 403, 404):
        return "refused"
    if _get(u, "uplink_down_since_ms") is not None:
        return "down"
    return "up"


def _sensors(p: Parts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mqtt_err = _section(p.mqtt)
    if mqtt_err is None:
        roles = _get(p.mqtt, "clients_by_role") or {}
        out["mqtt"] = {"sensors": int(roles.get("device", 0)) + int(roles.get("anonymous", 0)),
                       "operators": int(roles.get("operator", 0)),
                       "connections": int(_get(p.mqtt, "connections_open", 0) or 0)}
    else:
        out["mqtt"] = mqtt_err
    serial_err = _section(p.serial)
    if serial_err is None:
        ports = _get(p.serial, "ports") or {}
        out["serial"] = {"ports": {path: {"connected": bool(_get(st, "connected")),
                                          "last_error": _get(st, "last_error") or None}
                                   for path, st in ports.items()},
                         "connected": sum(1 for st in ports.values() if _get(st, "connected"))}
    else:
        out["serial"] = serial_err
    coap_err = _section(p.coap)
    out["coap"] = coap_err if coap_err is not None else {
        "listening": bool(_get(p.coap, "listening")),
        "readings": int(_get(p.coap, "readings_accepted", 0) or 0)}
    return out


def _buffer(b: Any) -> dict[str, Any]:
    err = _section(b)
    if err is not None:
        return err
    disk = int(_get(b, "db_bytes", 0) or 0) + int(_get(b, "wal_bytes", 0) or 0)
    max_bytes = int(_get(b, "max_bytes", 0) or 0)
    dropped = _get(b, "dropped") or {}
    return {"fill": round(disk / max_bytes, 4) if max_bytes else None, "disk_bytes": disk,
            "max_bytes": max_bytes, "rows": dict(_get(b, "rows") or {}),
            "oldest_unsent_age_ms": _get(b, "oldest_unsent_age_ms"),
            "pending_readings": _get(b, "pending_readings", 0),
            "dropped": {reason: sum(by_class.values()) for reason, by_class in dropped.items()}}


def _uplink(u: Any) -> dict[str, Any]:
    err = _section(u)
    if err is not None:
        return err
    return {"state": uplink_state(u), "circuit_state": _get(u, "circuit_state"),
            "last_status": _get(u, "last_status"), "last_error": _get(u, "last_error"),
            "down_since_ms": _get(u, "uplink_down_since_ms"),
            "backlog_age_ms": _get(u, "backlog_age_ms"),
            "batches_sent": _get(u, "batches_sent", 0),
            "batches_failed": _get(u, "batches_failed", 0),
            "readings_sent": _get(u, "readings_sent", 0),
            "latency_ms_avg": _get(u, "latency_ms_avg")}


def _alerts(active: Any) -> dict[str, Any]:
    err = _section(active)
    if err is not None:
        return err
    keep = ("dedup_key", "rule_id", "device_id", "severity", "message", "state",
            "fired_at_ms", "acked_by")
    items = [{k: a.get(k) for k in keep} for a in active]
    items.sort(key=lambda a: (a["state"] != "firing", -(a["fired_at_ms"] or 0)))
    return {"firing": sum(1 for a in items if a["state"] == "firing"),
            "acknowledged": sum(1 for a in items if a["state"] != "firing"),
            "active": items}


def _dead_letters(b: Any, recent: Sequence[Any]) -> dict[str, Any]:
    by_reason = dict(_get(b, "dead_letters") or {}) if _section(b) is None else {}
    return {"by_reason": by_reason,
            "stored": _get(b, "dead_letter_rows") if _section(b) is None else None,
            "recent": [{"id": _get(d, "id"), "t_ms": _get(d, "t_ms"),
                        "source": _get(d, "source"), "peer": _get(d, "peer"),
                        "reason": _get(d, "reason"), "detail": str(_get(d, "detail", ""))[:300],
                        "bytes": len(_get(d, "raw", b"") or b"")}
                       for d in sorted(recent, key=lambda d: -int(_get(d, "id", 0)))]}


def _readings(pipeline: Any, now_ms: int, meter: RateMeter) -> dict[str, Any]:
    err = _section(pipeline)
    if err is not None:
        return err
    by_protocol = dict(_get(pipeline, "readings") or {})
    rejected = dict(_get(pipeline, "rejected") or {})
    total = sum(by_protocol.values())
    return {"per_s": meter.update(total, now_ms), "total": total, "by_protocol": by_protocol,
            "rejected": rejected, "window_s": meter.window_ms / 1000}


def status_body(p: Parts, now_ms: int, meter: RateMeter) -> dict[str, Any]:
    """The status page's JSON (see the module docstring)."""
    return {"gateway_id": p.gateway_id, "now_ms": now_ms, "sensors": _sensors(p),
            "readings": _readings(p.pipeline, now_ms, meter), "buffer": _buffer(p.buffer),
            "uplink": _uplink(p.uplink), "alerts": _alerts(p.alerts_active),
            "dead_letters": _dead_letters(p.buffer, p.dead_letters)}


def plain(obj: Any) -> Any:
    """A stats snapshot as plain dicts and lists (JSON-ready): dataclasses and mappings
    (Counter included: `dataclasses.asdict` would rebuild a Counter from its items) become
    dicts, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj
