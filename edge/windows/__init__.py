"""Event-time windows over readings — pure code, no asyncio, no I/O.

* `WindowSpec` (`spec`): geometry (tumbling/sliding), grouping key, lateness, idle timeout.
* `Windower` (`windower`): the per-series state of one spec; `observe(reading, arrival_ms)`
  files a reading (returns a `Late` when refused), `advance(now_ms)` closes due windows and
  returns `WindowResult`s, `flush()` closes everything.
* `WindowResult` / `Late` (`result`): a closed window with its aggregates and `to_event()`,
  and a refused reading with its reason.
* `compute_batch` / `AGGREGATES` (`aggregate`): the aggregate math (numpy, imported lazily).

`edge.rules.AlertEngine` drives windows for the gateway; use `Windower` directly when only
aggregates are wanted.
"""

from edge.windows.aggregate import AGGREGATES, compute_batch
from edge.windows.result import Late, WindowResult
from edge.windows.spec import KEY_FIELDS, WindowSpec, format_duration_ms, parse_duration_ms
from edge.windows.windower import Windower

__all__ = ["AGGREGATES", "KEY_FIELDS", "Late", "WindowResult", "WindowSpec", "Windower",
           "compute_batch", "format_duration_ms", "parse_duration_ms"]
