"""Alert message templates: `str.format` over a fixed, per-rule-kind set of names.

A template such as ``"{device_id} max {max:.1f} °C > 90 in window {start}"`` is checked at
load time: every placeholder must be a plain name from the rule kind's allowed set (no
positional `{}`, no attribute or index access such as `{x.__class__}` or `{x[0]}`, no nested
`{x:{width}}`), and its format spec must suit the value's type (it is trial-rendered with a
sample value).  Rendering never raises: a value that is missing or None (e.g. `rate` of a
single-point window) renders as ``n/a`` whatever its format spec.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

_SAMPLES: dict[type, Any] = {float: 1.5, int: 1, str: "x"}


class _NotAvailable:
    def __format__(self, spec: str) -> str:
        return "n/a"

    def __str__(self) -> str:
        return "n/a"

    __repr__ = __str__


_NA = _NotAvailable()


class _Values(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        return _NA


class Template:
    """A validated message template.  `names` maps each allowed placeholder to its type."""

    __slots__ = ("text",)

    def __init__(self, text: str, names: Mapping[str, type]) -> None:
        problems = check_template(text, names)
        if problems:
            raise ValueError(problems)
        self.text = text

    def render(self, values: Mapping[str, Any]) -> str:
        safe = _Values({k: (_NA if v is None else v) for k, v in values.items()})
        try:
            return self.text.format_map(safe)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            # only reachable when a value has another type than declared; keep the alert
            return f"{self.text} {dict(values)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def check_template(text: object, names: Mapping[str, type]) -> str | None:
    """The first problem with a template, as a config-error reason, or None if it is valid."""
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    allowed = ", ".join(sorted(names))
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"invalid template: {exc} (write '{{{{' or '}}}}' for a literal brace)"
    sample: dict[str, Any] = {}
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field == "" or field.isdigit():
            return f"positional placeholder '{{{field}}}' is not allowed; name a value " \
                   f"(allowed: {allowed})"
        if not field.isidentifier():
            return f"placeholder '{{{field}}}' may not use attribute or index access " \
                   f"(allowed: {allowed})"
        if field not in names:
            return f"unknown placeholder '{{{field}}}' (allowed: {allowed})"
        if conversion not in (None, "s", "r"):
            return f"placeholder '{{{field}}}' has an invalid conversion '!{conversion}'"
        if spec and ("{" in spec or "}" in spec):
            return f"placeholder '{{{field}}}' may not nest placeholders in its format spec"
        sample[field] = _SAMPLES.get(names[field], "x")
    try:
        text.format_map(sample)
    except (ValueError, TypeError) as exc:
        return f"invalid format spec: {exc}"
    return None
