"""Which closed windows a window rule has to be stepped on — decided on the columns.

`AlertEngine` evaluates a batch of closed windows (`edge.windows.ClosedWindows`) rule by
rule.  For most windows nothing can happen: the subject has no alert and no `for N windows`
count for the rule, and the rule's condition does not hold — stepping it would change
nothing.  `candidates` finds the others with one numpy comparison over the batch instead of
a Python step per window:

* windows whose value meets the rule's condition (`fire`; missing values — NaN — never do,
  except for `!=`, which only makes them candidates: the step itself sees None and leaves
  the state alone), and
* every window of a subject that already has state, or that meets the condition anywhere
  in the batch (a firing in this batch makes its later windows matter for the clear).

The step (`AlertEngine._step`) then runs on exactly these, in close order, with the exact
Python values, so the result is the same as stepping every window.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from edge.rules.model import Rule
from edge.windows import ClosedWindows

_OPS: dict[str, Callable[[Any, float], Any]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}


def rule_column(rule: Rule, batch: ClosedWindows) -> Any:
    """The values `rule.window_value` would test, for every window of the batch (NaN where
    it would be None)."""
    import numpy as np

    if rule.kind == "rate_of_change":
        return np.abs(batch.column("rate"))
    if rule.kind == "low_battery":
        return batch.column("battery_min")
    assert rule.fire is not None
    return batch.column(rule.fire.name)


def candidates(rule: Rule, batch: ClosedWindows, idx: list[int], keys: list[str],
               stateful: set[str]) -> list[int]:
    """The indices among `idx` (windows the rule matches, in close order) to step."""
    import numpy as np

    assert rule.fire is not None
    pos = np.asarray(idx, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        hot = _OPS[rule.fire.op](rule_column(rule, batch)[pos], rule.fire.threshold)
    subjects = {keys[i] for i in pos[hot].tolist()}
    if stateful:
        subjects |= stateful
    if not subjects:
        return []
    return [i for i in idx if keys[i] in subjects]
