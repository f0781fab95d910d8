"""Rule conditions: ``<aggregate> <op> <number> [for N windows]``, parsed without eval.

Grammar (whitespace between tokens is free)::

    condition := NAME OP NUMBER [ "for" INT ("window" | "windows") ]
    OP        := ">" | ">=" | "<" | "<=" | "==" | "!="

`NAME` must be one of the names the caller allows (the window aggregates, for threshold
rules).  A condition tested on a missing value (None: e.g. `rate` of a single-point window)
is neither true nor false — `test()` returns None and the rule's state does not change.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")
_OP = re.compile(r"\s*(>=|<=|==|!=|>|<)")
_NUMBER = re.compile(r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])")
_FOR = re.compile(r"\s*for\s+(\d+)\s+(windows?)\s*$")
_WORD = re.compile(r"\s*(\S+)")


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    op: str
    threshold: float
    #: how many consecutive windows must satisfy it
    windows: int = 1

    def test(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        text = f"{self.name} {self.op} {self.threshold:g}"
        return text + (f" for {self.windows} windows" if self.windows != 1 else "")


def _next_word(text: str, pos: int) -> str:
    m = _WORD.match(text, pos)
    return repr(m.group(1)) if m else "end of text"


def parse_condition(text: object, names: Sequence[str]) -> Condition:
    """Parse a condition string.  Raises ValueError with a reason fit for a config error."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string like 'max > 90', got {type(text).__name__}")
    m = _NAME.match(text)
    if not m:
        raise ValueError(f"expected an aggregate name at the start of {text!r} "
                         f"(one of {', '.join(names)})")
    name = m.group(1)
    if name not in names:
        raise ValueError(f"unknown aggregate {name!r} (expected one of {', '.join(names)})")
    pos = m.end()
    m = _OP.match(text, pos)
    if not m:
        raise ValueError(f"expected an operator (> >= < <= == !=) after {name!r}, got "
                         f"{_next_word(text, pos)}")
    op = m.group(1)
    pos = m.end()
    m = _NUMBER.match(text, pos)
    if not m:
        raise ValueError(f"expected a number after {op!r}, got {_next_word(text, pos)}")
    threshold = float(m.group(1))
    if not math.isfinite(threshold):
        raise ValueError(f"the threshold must be a finite number, got {m.group(1)!r}")
    pos = m.end()
    windows = 1
    rest = text[pos:]
    if rest.strip():
        fm = _FOR.match(rest)
        if not fm:
            raise ValueError(f"expected 'for N windows' or nothing after {m.group(1).strip()!r},"
                             f" got {rest.strip()!r}")
        windows = int(fm.group(1))
        if windows < 1:
            raise ValueError("'for N windows' needs N >= 1")
    return Condition(name, op, threshold, windows)


def overlap_example(fire: Condition, clear: Condition) -> float | None:
    """A value that satisfies both conditions on the same aggregate, if there is one.

    A rule whose clear condition overlaps its firing condition would fire and clear on the
    same kind of window, forever; the loader rejects it with this example value.
    """
    if fire.name != clear.name:
        return None
    a, b = fire.threshold, clear.threshold
    span = max(abs(a), abs(b), 1.0)
    candidates = [a, b, (a + b) / 2, -1e300, 1e300]
    for t in (a, b):
        candidates += [t - span * 1e-9, t + span * 1e-9]
    for x in candidates:
        if fire.test(x) and clear.test(x):
            return x
    return None
