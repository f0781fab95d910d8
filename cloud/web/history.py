"""A device's history for the chart: InfluxDB for the hot window, the archive beyond it.

    history = History(influx, archive, retention_ms=7 * 86_400_000)
    chart = await history.series("sensor-7", "temperature", start_ms, end_ms, now_ms)

Each point of a chart is one bucket: `[t_ms, min, max, mean, p95, count]` of the readings in
`[t, t + bucket_ms)`; the bucket width is picked so a range has at most `max_points`
(`queries.pick_bucket_ms`): seconds when zoomed to minutes, days when zoomed to months.

Which store answers (`plan`, pure):

* the boundary is `now - retention + margin`, rounded up to a bucket edge: InfluxDB holds
  everything after it (retention deletes whole shard groups, so a little more is there too),
  the archive holds everything before it (it lags the bus by a file roll, minutes, and the
  boundary is at least `retention - margin - bucket` in the past);
* a range after the boundary is read from InfluxDB only, a range before it from the archive
  only, and a range that straddles it from both — the archive for the buckets before the
  boundary, InfluxDB for the rest (`merge`), so no bucket is counted twice or split.

Both stores compute min, max, mean and count identically, with buckets aligned to the epoch;
p95 is nearest-rank in InfluxDB (`percentile`) and interpolated in the archive
(`quantile_cont`), so the two may differ slightly on sparse buckets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cloud.web.queries import aggregate_query, pick_bucket_ms

__all__ = ["ArchiveSource", "History", "Plan", "Point", "merge", "plan"]

#: [t_ms, min, max, mean, p95, count]
Point = list[Any]

#: how far inside the retention window the boundary sits (the hot store is complete there)
DEFAULT_MARGIN_MS = 3_600_000


class ArchiveSource(Protocol):
    async def aggregate(self, device_id: str, measurement: str, start_ms: int, end_ms: int,
                        bucket_ms: int) -> list[Point]:
        """Bucketed statistics of one device's readings in [start, end), by bucket time."""
        ...


class HotSource(Protocol):
    async def query(self, statements: str, params: Any = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Plan:
    bucket_ms: int
    boundary_ms: int | None
    #: [start, end) per store; None when that store is not asked
    archive: tuple[int, int] | None
    influx: tuple[int, int] | None


def plan(start_ms: int, end_ms: int, now_ms: int, retention_ms: int | None, *,
         max_points: int = 600, margin_ms: int = DEFAULT_MARGIN_MS,
         archive: bool = True) -> Plan:
    """Which store reads which part of [start, end) (see the module docstring).

    `retention_ms` None: the hot store keeps everything (INF), the archive is never needed.
    `archive` False: there is no archive; the hot store answers what it has.
    """
    bucket = pick_bucket_ms(start_ms, end_ms, max_points)
    start = start_ms - start_ms % bucket
    end = end_ms
    if retention_ms is None or not archive:
        return Plan(bucket, None, None, (start, end))
    edge = now_ms - retention_ms + min(margin_ms, retention_ms // 2)
    boundary = edge + (-edge) % bucket  # up: InfluxDB must hold the whole first bucket
    if boundary <= start:
        return Plan(bucket, boundary, None, (start, end))
    if boundary >= end:
        return Plan(bucket, boundary, (start, end), None)
    return Plan(bucket, boundary, (start, boundary), (boundary, end))


def merge(cold: Sequence[Point], hot: Sequence[Point], boundary_ms: int | None) -> list[Point]:
    """The archive's buckets before the boundary, then InfluxDB's from it, in time order
    (`boundary_ms` None: only one store answered; its points as they are)."""
    if boundary_ms is None:
        return sorted([*cold, *hot], key=lambda p: p[0])
    out = [p for p in cold if p[0] < boundary_ms] + [p for p in hot if p[0] >= boundary_ms]
    return sorted(out, key=lambda p: p[0])


def influx_points(series: Sequence[Any]) -> list[Point]:
    """`aggregate_query`'s answer as points (buckets without readings are left out)."""
    out: list[Point] = []
    for s in series:
        idx = {c: i for i, c in enumerate(s.columns)}
        for v in s.values:
            count = v[idx["count"]]
            if not count:
                continue
            out.append([int(v[idx["time"]]), v[idx["min"]], v[idx["max"]], v[idx["mean"]],
                        v[idx["p95"]], int(count)])
    return out


class History:
    def __init__(self, influx: HotSource, archive: ArchiveSource | None, *,
                 retention_ms: int | None, max_points: int = 600,
                 margin_ms: int = DEFAULT_MARGIN_MS) -> None:
        self.influx = influx
        self.archive = archive
        self.retention_ms = retention_ms
        self.max_points = max_points
        self.margin_ms = margin_ms

    async def series(self, device_id: str, measurement: str, start_ms: int, end_ms: int,
                     now_ms: int) -> dict[str, Any]:
        p = plan(start_ms, end_ms, now_ms, self.retention_ms, max_points=self.max_points,
                 margin_ms=self.margin_ms, archive=self.archive is not None)
        cold: list[Point] = []
        hot: list[Point] = []
        sources = []
        if p.archive is not None and self.archive is not None:
            cold = await self.archive.aggregate(device_id, measurement, p.archive[0],
                                                p.archive[1], p.bucket_ms)
            sources.append("archive")
        if p.influx is not None:
            q, params = aggregate_query(measurement, device_id, p.influx[0], p.influx[1],
                                        p.bucket_ms)
            [series] = await self.influx.query(q, params)
            hot = influx_points(series)
            sources.append("influxdb")
        return {"device_id": device_id, "measurement": measurement, "start_ms": start_ms,
                "end_ms": end_ms, "bucket_ms": p.bucket_ms, "boundary_ms": p.boundary_ms,
                "sources": sources, "columns": ["t_ms", "min", "max", "mean", "p95", "count"],
                "points": merge(cold, hot, p.boundary_ms if p.archive and p.influx else None)}
