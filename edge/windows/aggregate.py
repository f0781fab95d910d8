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


def _column(arr: Any) -> list[Any]:
    """A float array as a list, with non-finite values (overflow) as None."""
    import numpy as np

    if bool(np.isfinite(arr).all()):
        return list(arr.tolist())
    return [x if math.isfinite(x) else None for x in arr.tolist()]


def compute_batch(values: array, times: array, counts: Sequence[int]
                  ) -> list[dict[str, Any]]:
    """Aggregates of consecutive windows packed into one array.

    `values` (array('d')) and `times` (array('q'), event ms) hold window 0's readings, then
    window 1's, ...; `counts[i]` is window i's reading count (>= 1).  Returns one dict per
    window with every name in `AGGREGATES`.

    Windows are processed in groups of equal count, each group as one 2-D array with a row
    per window, so sorting and reductions run along rows in C (a general segmented sort,
    `lexsort` over window ids, is several times slower for the typical 10-value window).
    """
    m = len(counts)
    if not m:
        return []
    import numpy as np

    v = np.frombuffer(values, dtype=np.float64)
    t = np.frombuffer(times, dtype=np.int64)
    n = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(n) - n
    cols = {name: np.empty(m, dtype=np.float64) for name in AGGREGATES if name != "count"}
    spans = np.empty(m, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for c in np.unique(n).tolist():
            rows = np.flatnonzero(n == c)
            idx = starts[rows][:, None] + np.arange(c)
            V = v[idx]
            T = t[idx]
            S = np.sort(V, axis=1)
            cols["min"][rows] = S[:, 0]
            cols["max"][rows] = S[:, -1]
            cols["mean"][rows] = V.mean(axis=1)
            cols["stddev"][rows] = V.std(axis=1)
            for name, q in QUANTILES:
                # numpy.percentile(method="linear"): virtual index (n-1)*q, two-sided lerp
                virtual = (c - 1) * q
                lo = math.floor(virtual)
                if virtual >= c - 1:
                    cols[name][rows] = S[:, c - 1]
                    continue
                gamma = virtual - lo
                a, b = S[:, lo], S[:, lo + 1]
                diff = b - a
                cols[name][rows] = (b - diff * (1 - gamma)) if gamma >= 0.5 else (a + diff * gamma)
            t_first = T.min(axis=1)
            t_last = T.max(axis=1)
            first = np.where(T == t_first[:, None], V, np.inf).min(axis=1)
            last = np.where(T == t_last[:, None], V, -np.inf).max(axis=1)
            cols["first"][rows] = first
            cols["last"][rows] = last
            span = t_last - t_first
            spans[rows] = span
            cols["rate"][rows] = (last - first) / np.where(span > 0, span, 1) * 1000.0
        cols["rate"][spans <= 0] = np.nan

    out: dict[str, list[Any]] = {"count": n.tolist()}
    for name, arr in cols.items():
        out[name] = _column(arr)
    columns = [out[name] for name in AGGREGATES]
    return [dict(zip(AGGREGATES, row)) for row in zip(*columns)]
