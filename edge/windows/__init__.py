"""Event-time windows over readings — pure code, no asyncio, no I/O.

* `WindowSpec` (`spec`): geometry (tumbling/sliding), grouping key, lateness, idle timeout.
* `Windower` (`windower`): the per-series state of one spec; `observe(reading, arrival_ms)`
  files a reading (returns a `Late` when refused), `close_due(now_ms, max_windows=None)`
  closes due windows, oldest due first, bounded if asked (`advance(now_ms)`: all of them, as
  a list), `flush()` closes everything.
* `ClosedWindows` / `Chain` (`batch`): closed windows held column-wise — a
  `Sequence[WindowResult]` whose elements are built only when accessed.
* `WindowResult` / `Late` (`result`): a closed window with its aggregates and `to_event()`,
  and a refused reading with its reason.
* `compute_columns` / `compute_batch` / `AGGREGATES` (`aggregate`): the aggregate math for
  many windows at once (numpy, imported lazily).

`edge.rules.AlertEngine` drives windows for the gateway; use `Windower` directly when only
aggregates are wanted.
"""

from edge.windows.aggregate import AGGREGATES, compute_batch, compute_columns
from edge.windows.batch import Chain, ClosedWindows
from edge.windows.result import Late, WindowResult
from edge.windows.spec import KEY_FIELDS, WindowSpec, format_duration_ms, parse_duration_ms
from edge.windows.windower import Windower

__all__ = ["AGGREGATES", "KEY_FIELDS", "Chain", "ClosedWindows", "Late", "WindowResult",
           "WindowSpec", "Windower", "compute_batch", "compute_columns", "format_duration_ms",
           "parse_duration_ms"]
