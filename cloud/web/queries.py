"""InfluxQL the dashboard runs, and what its answers mean (pure: strings in, rows out).

The schema is the InfluxDB sink's (`cloud.sinks.influx.lineproto`):

* one measurement per reading type (`temperature`, `humidity`, ...), tags `device_id`,
  `facility`, `gateway`, `line`, `unit`, `zone`; fields `value`, `quality`, `battery`;
* `window_<type>`: the gateway's window aggregates (used by the Grafana dashboard);
* `alerts`: alert transitions (the dashboard follows alerts on the bus instead);
* `gateway_status` (optional): a gateway's own status — backlog, drops by reason,
  firmware/config version — once gateways report one (docs/dashboards.md, "Fleet").

User input never becomes InfluxQL text: tag values and times are bound parameters
(`params`); the only names spliced in are measurement names read back from `SHOW
MEASUREMENTS`, double-quoted with `ident`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALERTS", "BUCKETS_MS", "DeviceRow", "STATUS", "Series", "TAGS", "WINDOW_PREFIX",
           "aggregate_query", "devices_query", "ident", "is_reading_measurement",
           "parse_results", "pick_bucket_ms", "sparkline_query", "status_query"]

WINDOW_PREFIX = "window_"
ALERTS = "alerts"
STATUS = "gateway_status"
#: the tags a reading series carries
TAGS = ("device_id", "gateway", "facility", "line", "zone", "unit")
#: chart bucket widths, smallest first: a range is drawn with the first giving <= max points
BUCKETS_MS = (1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
              600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000,
              43_200_000, 86_400_000, 172_800_000, 604_800_000)
_MS_NS = 1_000_000


def ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted (backslashes and quotes escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_reading_measurement(name: str) -> bool:
    return not (name.startswith(WINDOW_PREFIX) or name in (ALERTS, STATUS))


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an InfluxQL answer."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, v)) for v in self.values]


def parse_results(body: Mapping[str, Any]) -> list[list[Series]]:
    """The series of each statement of a `/query` answer (epoch=ms), in statement order.

    Raises ValueError with InfluxDB's message when the answer or a statement is an error.
    """
    if body.get("error"):
        raise ValueError(str(body["error"]))
    out: list[list[Series]] = []
    for result in body.get("results") or []:
        if result.get("error"):
            raise ValueError(str(result["error"]))
        out.append([Series(s.get("name", ""), {k: v for k, v in (s.get("tags") or {}).items()
                                               if v != ""},
                           list(s.get("columns") or []), list(s.get("values") or []))
                    for s in result.get("series") or []])
    return out


def _where(filters: Mapping[str, str | None], params: dict[str, Any]) -> list[str]:
    clauses = []
    for tag in ("facility", "line", "zone", "gateway", "device_id"):
        value = filters.get(tag)
        if value:
            params[tag] = value
            clauses.append(f"{ident(tag)} = ${tag}")
    return clauses


def devices_query(measurements: Sequence[str], since_ms: int,
                  filters: Mapping[str, str | None] | None = None
                  ) -> tuple[str, dict[str, Any]]:
    """Three statements: the last value, battery and quality of every series since
    `since_ms` (one selector per statement, so each row carries its own time)."""
    params: dict[str, Any] = {"since": since_ms * _MS_NS}
    where = " AND ".join(["time >= $since", *_where(filters or {}, params)])
    sources = ",".join(ident(m) for m in measurements)
    statements = [f'SELECT last("{f}") AS "{f}" FROM {sources} WHERE {where} GROUP BY *'
                  for f in ("value", "battery", "quality")]
    return "; ".join(statements), params


def sparkline_query(measurements: Sequence[str], start_ms: int, end_ms: int, bucket_ms: int,
                    filters: Mapping[str, str | None] | None = None
                    ) -> tuple[str, dict[str, Any]]:
    """The mean value per bucket of every device's series (for the table's sparklines)."""
    params: dict[str, Any] = {"start": start_ms * _MS_NS, "end": end_ms * _MS_NS}
    where = " AND ".join(["time >= $start", "time < $end", *_where(filters or {}, params)])
    sources = ",".join(ident(m) for m in measurements)
    return (f'SELECT mean("value") AS "v" FROM {sources} WHERE {where} '
            f'GROUP BY time({bucket_ms}ms), "device_id" fill(none)'), params


def aggregate_query(measurement: str, device_id: str, start_ms: int, end_ms: int,
                    bucket_ms: int) -> tuple[str, dict[str, Any]]:
    """min/max/mean/p95/count of one device's values per bucket in [start, end)."""
    params: dict[str, Any] = {"device_id": device_id, "start": start_ms * _MS_NS,
                              "end": end_ms * _MS_NS}
    return (f'SELECT min("value") AS "min", max("value") AS "max", mean("value") AS "mean", '
            f'percentile("value", 95) AS "p95", count("value") AS "count" '
            f'FROM {ident(measurement)} WHERE "device_id" = $device_id AND time >= $start '
            f'AND time < $end GROUP BY time({bucket_ms}ms) fill(none)'), params


def status_query(since_ms: int) -> tuple[str, dict[str, Any]]:
    """The newest `gateway_status` point of every gateway since `since_ms`."""
    return (f'SELECT * FROM {ident(STATUS)} WHERE time >= $since GROUP BY "gateway" '
            f'ORDER BY time DESC LIMIT 1'), {"since": since_ms * _MS_NS}


def pick_bucket_ms(start_ms: int, end_ms: int, max_points: int = 600) -> int:
    """The narrowest bucket width from BUCKETS_MS that draws [start, end) in <= max_points."""
    span = max(1, end_ms - start_ms)
    for b in BUCKETS_MS:
        if span / b <= max_points:
            return b
    return BUCKETS_MS[-1]


@dataclass(slots=True)
class DeviceRow:
    """One device series in the fleet table."""

    device_id: str
    measurement: str
    gateway: str | None = None
    facility: str | None = None
    line: str | None = None
    zone: str | None = None
    unit: str = ""
    value: float | None = None
    ts_ms: int | None = None
    battery: float | None = None
    quality: str | None = None
    sparkline: list[tuple[int, float]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "measurement": self.measurement,
                "gateway": self.gateway, "facility": self.facility, "line": self.line,
                "zone": self.zone, "unit": self.unit, "value": self.value,
                "ts_ms": self.ts_ms, "battery": self.battery, "quality": self.quality,
                "sparkline": [[t, v] for t, v in self.sparkline]}


def device_rows(statements: Sequence[Sequence[Series]]) -> list[DeviceRow]:
    """Rows of `devices_query`'s three statements, one per (device, measurement): when a
    device moved between gateways or tags, its newest series wins."""
    rows: dict[tuple[str, str], DeviceRow] = {}
    for index, field_name in enumerate(("value", "battery", "quality")):
        if index >= len(statements):
            break
        for s in statements[index]:
            device = s.tags.get("device_id")
            if not device or not s.values:
                continue
            ts, v = s.values[0][0], s.values[0][1]
            key = (device, s.name)
            row = rows.get(key)
            if field_name == "value":
                if row is not None and row.ts_ms is not None and row.ts_ms >= ts:
                    continue
                rows[key] = DeviceRow(device_id=device, measurement=s.name,
                                      gateway=s.tags.get("gateway"),
                                      facility=s.tags.get("facility"),
                                      line=s.tags.get("line"), zone=s.tags.get("zone"),
                                      unit=s.tags.get("unit", ""),
                                      value=None if v is None else float(v), ts_ms=int(ts))
            elif row is not None and s.tags.get("gateway") == row.gateway:
                setattr(row, field_name, v)
    return sorted(rows.values(), key=lambda r: (r.facility or "", r.line or "", r.device_id,
                                                r.measurement))


def attach_sparklines(rows: Iterable[DeviceRow], series: Iterable[Series]) -> None:
    """Fill each row's sparkline from `sparkline_query`'s answer (by measurement, device)."""
    points: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for s in series:
        device = s.tags.get("device_id")
        if device:
            points.setdefault((s.name, device), []).extend(
                (int(t), float(v)) for t, v in s.values if v is not None)
    for row in rows:
        row.sparkline = sorted(points.get((row.measurement, row.device_id), []))


def last_seen_by_gateway(rows: Iterable[DeviceRow]) -> dict[str, int]:
    """The newest reading time of each gateway, from the device rows."""
    out: dict[str, int] = {}
    for r in rows:
        if r.gateway and r.ts_ms is not None and r.ts_ms > out.get(r.gateway, -1):
            out[r.gateway] = r.ts_ms
    return out
