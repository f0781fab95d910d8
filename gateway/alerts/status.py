"""The alert service's `stats()` and `health()`.

`stats()` fields (also the metrics source of kind "alerts", see `gateway.http.metrics`):

* ``firing``, ``acknowledged`` (active alerts) and ``firing_by_severity`` /
  ``acknowledged_by_severity``;
* ``transitions`` by kind; ``deliveries`` by channel and outcome (``delivered``, ``retried``
  — failed attempts —, ``dead``, ``superseded``); ``notifications_failed`` (retried + dead);
* ``outbox_depth`` and ``outbox_oldest_age_ms`` (undelivered, due rows of every channel;
  delayed retained-message clears are ``retained_clears_scheduled``);
* ``late`` by reason, ``windows_closed`` and ``windows_closed_by``, ``rule_reloads``
  (``ok``/``failed``), ``acks`` by source (``mqtt``, ``http``, ``*_refused``, ...);
* ``aggregates_pending`` plus the counters (``aggregates_buffered``, ``aggregates_dropped``,
  ``snapshots``, ``restore_failed``, ``step_errors``, ``ticks_skipped``, ...),
  ``engine_cpu_s`` (with `measure_cpu`), ``snapshot`` (last one: cpu_ms, bytes, interval_s);
* ``aggregate_events_cpu_s`` — CPU time spent turning closed windows into buffer events;
* ``close_lag_ms`` — p50 / p99 / max over the last 20,000 windows of how long after its close
  became due (`WindowResult.due_ms`) each window was closed.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.alerts.service import AlertService

#: no tick for this long: unhealthy
TICK_DEADLINE_S = 2.0


def service_stats(svc: AlertService) -> dict[str, Any]:
    now = svc.clock.now_ms()
    active = svc.engine.active_alerts() if svc.running else []
    firing: Counter[str] = Counter()
    acked: Counter[str] = Counter()
    for a in active:
        (firing if a["state"] == "firing" else acked)[a["severity"]] += 1
    return {
        "firing": sum(firing.values()), "acknowledged": sum(acked.values()),
        "firing_by_severity": dict(firing), "acknowledged_by_severity": dict(acked),
        **svc.outbox.stats(now),
        "late": dict(svc.late), "windows_closed": sum(svc.windows_closed.values()),
        "windows_closed_by": dict(svc.windows_closed),
        "rule_reloads": {"ok": svc.reloads["ok"], "failed": svc.reloads["failed"]},
        "acks": dict(svc.acks),
        "aggregates_pending": svc.aggregates_pending,
        "engine_cpu_s": round(svc.engine_cpu_s, 4),
        "close_lag_ms": svc.close_lag.summary(),
        "aggregate_events_cpu_s": round(svc.aggregate_events_cpu_s, 4),
        "snapshot": dict(svc.snapshot_info),
        "orphaned_deliveries": svc.outbox.orphaned,
        **dict(svc.counters),
    }


def service_health(svc: AlertService) -> tuple[bool, str]:
    if not svc.running or svc.outbox.store is None:
        return False, "not running"
    if svc.settings.tick_s is not None:
        since = svc.clock.monotonic() - max(svc.last_tick, svc.started_mono)
        if since > TICK_DEADLINE_S:
            return False, f"no alert tick for {since:.1f} s"
    s = service_stats(svc)
    return True, (f"{s['firing']} firing, {s['acknowledged']} acknowledged, outbox "
                  f"{s['outbox_depth']} pending")
