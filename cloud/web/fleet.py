"""The fleet overview: one summary per gateway (pure; `now_ms` is an argument).

Where each column comes from:

* the gateways listed — every gateway `ingest.gateways` accepts, every value of the `gateway`
  tag InfluxDB holds, every gateway that sent a status record or an alert;
* last seen — the newest reading time of the gateway's devices in InfluxDB (the tag the
  sink writes on every point);
* online — last seen within `offline_after_ms` of now;
* backlog depth and age, drops by reason, firmware and config version — the newest
  `gateway_status` point of the gateway (`status_record`), when the gateway reports one.
  Without it these columns are None ("not reported"), never zero;
* firing alerts — the alert board's active alerts of that gateway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GatewayStatus", "GatewaySummary", "status_record", "summarize"]

DROPS_PREFIX = "drops_"
DEADLETTERS_PREFIX = "deadletters_"


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """What a gateway last said about itself (a `gateway_status` point)."""

    ts_ms: int
    backlog_rows: int | None = None
    backlog_age_ms: int | None = None
    backlog_bytes: int | None = None
    drops: dict[str, int] = field(default_factory=dict)
    deadletters: dict[str, int] = field(default_factory=dict)
    firmware_version: str | None = None
    config_version: str | None = None
    uplink_state: str | None = None


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return int(v)


def _str(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def status_record(row: Mapping[str, Any]) -> GatewayStatus | None:
    """A `gateway_status` row (column -> value, `time` in ms) as a GatewayStatus; None if it
    has no time.  `drops_<reason>` and `deadletters_<reason>` columns are counters by reason;
    unknown columns are ignored, so gateways may report more than this page shows."""
    ts = _int(row.get("time"))
    if ts is None:
        return None
    drops = {k[len(DROPS_PREFIX):]: n for k, v in row.items()
             if k.startswith(DROPS_PREFIX) and (n := _int(v)) is not None}
    dls = {k[len(DEADLETTERS_PREFIX):]: n for k, v in row.items()
           if k.startswith(DEADLETTERS_PREFIX) and (n := _int(v)) is not None}
    return GatewayStatus(ts_ms=ts, backlog_rows=_int(row.get("backlog_rows")),
                         backlog_age_ms=_int(row.get("backlog_age_ms")),
                         backlog_bytes=_int(row.get("backlog_bytes")), drops=drops,
                         deadletters=dls, firmware_version=_str(row.get("firmware_version")),
                         config_version=_str(row.get("config_version")),
                         uplink_state=_str(row.get("uplink_state")))


@dataclass(slots=True)
class GatewaySummary:
    gateway: str
    online: bool
    last_seen_ms: int | None
    devices: int
    status: GatewayStatus | None
    alerts_firing: int

    def as_json(self) -> dict[str, Any]:
        st = self.status
        return {
            "gateway": self.gateway, "online": self.online, "last_seen_ms": self.last_seen_ms,
            "devices": self.devices, "alerts_firing": self.alerts_firing,
            "status_ms": st.ts_ms if st else None,
            "backlog_rows": st.backlog_rows if st else None,
            "backlog_age_ms": st.backlog_age_ms if st else None,
            "backlog_bytes": st.backlog_bytes if st else None,
            "drops": dict(st.drops) if st else None,
            "deadletters": dict(st.deadletters) if st else None,
            "firmware_version": st.firmware_version if st else None,
            "config_version": st.config_version if st else None,
            "uplink_state": st.uplink_state if st else None,
        }


def summarize(now_ms: int, *, offline_after_ms: int, known: Iterable[str],
              last_seen: Mapping[str, int], devices: Mapping[str, int],
              statuses: Mapping[str, GatewayStatus],
              alerts_firing: Mapping[str, int]) -> list[GatewaySummary]:
    """One summary per gateway any source names, offline ones first, then by id.

    A status record counts as a sign of life too: a gateway whose sensors are all silent but
    which still reports its status is online (it is the sensors that are quiet).
    """
    names = set(known) | set(last_seen) | set(statuses) | set(alerts_firing)
    out = []
    for gw in names:
        seen = last_seen.get(gw)
        st = statuses.get(gw)
        newest = max((t for t in (seen, st.ts_ms if st else None) if t is not None),
                     default=None)
        online = newest is not None and now_ms - newest <= offline_after_ms
        out.append(GatewaySummary(gateway=gw, online=online, last_seen_ms=newest,
                                  devices=devices.get(gw, 0), status=st,
                                  alerts_firing=alerts_firing.get(gw, 0)))
    return sorted(out, key=lambda s: (s.online, s.gateway))
