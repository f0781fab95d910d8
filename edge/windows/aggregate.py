"""Window aggregates, computed for many windows at once.

Closing a window is the only place numpy runs: the windower collects every window that closed
during one `advance()` and hands their values here as one flat array plus per-window counts,
so the per-call cost of numpy is paid once per batch, not once per window.  numpy is imported
lazily (it ships with the gateway and cloud extras, not with the core `edge` install).

Definitions, for a window holding n >= 1 values:

* `count`, `min`, `max`, `mean`.
* `p50`, `p95`, `p99` — numpy's default `method="linear"` (Hyndman & Fan type 7): the value
  at virtual index `(n - 1) * q` of the sorted values, interpolated between its neighbours
  exactly as `numpy.percentile` does (including numpy's two-sided lerp), so results equal
  `numpy.percentile(values, [50, 95, 99])`.
* `stddev` — population standard deviation (ddof=0; 0.0 for a single value).
* `first` / `last` — the value at the smallest / largest event time.  Readings sharing that
  event time are ordered by value (first takes the smallest, last the largest), so the result
  does not depend on arrival order.
* `rate` — `(last - first) / (t_last - t_first)` per second; None when all values share one
  event time (a single point has no slope).

Values that overflow to +/-inf (only possible for inputs near the float limits) are reported
as None, so every output is JSON-safe.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any

#: every aggregate a window produces, in documentation order
AGGREGATES: tuple[str, ...] = ("count", "min", "max", "mean", "p50", "p95", "p99", "stddev",
                               "first", "last", "rate")
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def _finite(xs: list[float]) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in xs]


def compute_batch(values: array, times: array, counts: Sequence[int]
                  ) -> list[dict[str, Any]]:
    """Aggregates of consecutive windows packed into one array.

    `values` (array('d')) and `times` (array('q'), event ms) hold window 0's readings, then
    window 1's, ...; `counts[i]` is window i's reading count (>= 1).  Returns one dict per
    window with every name in `AGGREGATES`.
    """
    if not counts:
        return []
    import numpy as np

    v = np.frombuffer(values, dtype=np.float64)
    t = np.frombuffer(times, dtype=np.int64)
    n = np.asarray(counts, dtype=np.int64)
    m = len(n)
    ends = np.cumsum(n)
    starts = ends - n
    seg = np.repeat(np.arange(m, dtype=np.int64), n)

    by_value = v[np.lexsort((v, seg))]
    mins = by_value[starts]
    maxs = by_value[ends - 1]

    with np.errstate(over="ignore", invalid="ignore"):
        means = np.add.reduceat(v, starts) / n
        dev = v - np.repeat(means, n)
        stds = np.sqrt(np.add.reduceat(dev * dev, starts) / n)

        quantiles = {}
        last_index = (n - 1).astype(np.float64)
        for name, q in QUANTILES:
            virtual = last_index * q
            prev = np.floor(virtual)
            gamma = virtual - prev
            at_top = virtual >= last_index
            lo = np.where(at_top, last_index, prev).astype(np.int64)
            hi = np.where(at_top, last_index, prev + 1).astype(np.int64)
            a = by_value[starts + lo]
            b = by_value[starts + hi]
            diff = b - a
            quantiles[name] = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)

        by_time = np.lexsort((v, t, seg))
        i_first = by_time[starts]
        i_last = by_time[ends - 1]
        firsts = v[i_first]
        lasts = v[i_last]
        spans = (t[i_last] - t[i_first]).astype(np.float64)
        rates = (lasts - firsts) / np.where(spans > 0, spans, 1.0) * 1000.0

    cols: dict[str, list[Any]] = {
        "count": n.tolist(),
        "min": _finite(mins.tolist()),
        "max": _finite(maxs.tolist()),
        "mean": _finite(means.tolist()),
        "p50": _finite(quantiles["p50"].tolist()),
        "p95": _finite(quantiles["p95"].tolist()),
        "p99": _finite(quantiles["p99"].tolist()),
        "stddev": _finite(stds.tolist()),
        "first": _finite(firsts.tolist()),
        "last": _finite(lasts.tolist()),
        "rate": [r if s > 0 and math.isfinite(r) else None
                 for r, s in zip(rates.tolist(), spans.tolist())],
    }
    names = AGGREGATES
    columns = [cols[name] for name in names]
    return [dict(zip(names, row)) for row in zip(*columns)]
