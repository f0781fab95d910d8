"""The string table of a batch: every distinct string once, numbers inside them as columns.

Device ids, facilities and lines are mostly a fixed text with numbers in it
(`sensor_0001_line3`).  Such a string is split at its ASCII digit runs into a *template* (the
text parts, `["sensor_", "_line", ""]`) and *fields* (the digit runs, kept as value + width so
leading zeros survive: `0001` is (1, 4)).  Strings that share a template are stored as one
integer column per field (see `edge.codec.columns`), so a thousand numbered device ids cost a
few bytes instead of a thousand near-identical literals.  Strings without digits, and strings
with a digit run longer than 18 digits (beyond int64), are stored as literals.

Spec (msgpack-ready):

    [literals, templates, counts, fields]

    literals    list of str, or int: an index into STATIC (common words sent as one byte)
    templates   list of templates, each a list of F+1 text parts (F >= 1 fields)
    counts      icol: how many strings each template has
    fields      for each template in order, for each of its F fields: [value icol, width icol]
                over the strings of that template

Table order (what string indices refer to): the literals, then the strings of template 0,
then those of template 1, and so on; within each group, the order they were given in.
`encode_strings` returns that order.

Decoding is bounded: `max_count` and `max_chars` cap how many strings and how many
characters it will build, so a hostile frame cannot expand a small template into gigabytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from edge.codec.columns import decode_ints, encode_ints
from edge.errors import MalformedFrame

_DIGITS = re.compile(r"([0-9]+)")
_MAX_DIGITS = 18

#: Strings almost every batch carries (measurements, units, qualities), sent as their index
#: here instead of their text.  Part of format v1: no entry is changed, removed or added
#: within v1 (a decoder of the same version would misread or reject it); a new table is a
#: new format version.
STATIC = (
    "", "temperature", "humidity", "pressure", "vibration", "voltage", "current", "power",
    "energy", "flow", "level", "speed", "co2", "light", "sound",
    "celsius", "fahrenheit", "kelvin", "percent", "%", "hPa", "kPa", "Pa", "bar", "psi",
    "V", "A", "W", "kW", "kWh", "Wh", "mm/s", "m/s", "g", "rpm", "ppm", "lux", "dB", "l/min",
    "m3/h",
    "good", "uncertain", "bad",
)
_STATIC_INDEX = {s: i for i, s in enumerate(STATIC)}


def encode_strings(strings: Sequence[str]) -> tuple[list[Any], list[str]]:
    """(spec, table order) for the distinct `strings`."""
    literals: list[str] = []
    index: dict[tuple[str, ...], int] = {}
    templates: list[list[str]] = []
    members: list[list[str]] = []
    digits_of: list[list[list[str]]] = []
    for s in strings:
        parts = _DIGITS.split(s)
        digits = parts[1::2]
        if not digits or any(len(d) > _MAX_DIGITS for d in digits):
            literals.append(s)
            continue
        texts = tuple(parts[0::2])
        t = index.get(texts)
        if t is None:
            t = index[texts] = len(templates)
            templates.append(list(texts))
            members.append([])
            digits_of.append([])
        members[t].append(s)
        digits_of[t].append(digits)
    fields: list[list[Any]] = []
    for parts_of, rows in zip(templates, digits_of):
        for f in range(len(parts_of) - 1):
            column = [row[f] for row in rows]
            fields.append([encode_ints([int(d) for d in column])[0],
                           encode_ints([len(d) for d in column])[0]])
    coded: list[str | int] = [_STATIC_INDEX.get(s, s) for s in literals]
    spec = [coded, templates, encode_ints([len(m) for m in members])[0], fields]
    order = literals + [s for group in members for s in group]
    return spec, order


def _format_of(texts: list[str], widths: list[int | None]) -> str:
    # a field is "%0Wd" % value when all its widths are W, else "%0*d" % (width, value)
    out = [texts[0].replace("%", "%%")]
    for text, width in zip(texts[1:], widths):
        out.append("%0*d" if width is None else f"%0{width}d")
        out.append(text.replace("%", "%%"))
    return "".join(out)


def decode_strings(spec: Any, max_count: int, max_chars: int) -> list[str]:
    """Inverse of `encode_strings`, in table order.  Raises MalformedFrame on anything off."""
    if type(spec) is not list or len(spec) != 4:
        raise MalformedFrame("string table is not a 4-item list")
    literals, templates, counts_spec, fields = spec
    if (type(literals) is not list or type(templates) is not list
            or type(fields) is not list):
        raise MalformedFrame("string table parts are not lists")
    try:
        literals = [s if type(s) is str else STATIC[s] if type(s) is int and s >= 0 else None
                    for s in literals]
    except IndexError as e:
        raise MalformedFrame("unknown static string") from e
    if None in literals:
        raise MalformedFrame("string literal is neither a str nor a static string index")
    for texts in templates:
        if type(texts) is not list or len(texts) < 2 or any(type(t) is not str for t in texts):
            raise MalformedFrame("string template is not a list of 2 or more str")
    counts = decode_ints(counts_spec, len(templates))
    if counts and min(counts) < 0:
        raise MalformedFrame("negative string count")
    if len(literals) + sum(counts) > max_count:
        raise MalformedFrame("string table larger than the batch can use")
    if len(fields) != sum(len(texts) - 1 for texts in templates):
        raise MalformedFrame("string table has the wrong number of field columns")
    chars = sum(count * (sum(map(len, texts)) + _MAX_DIGITS * (len(texts) - 1))
                for count, texts in zip(counts, templates))
    if chars > max_chars:
        raise MalformedFrame(f"string table would expand to {chars} characters",
                             reason="oversize")
    out = list(literals)
    f = 0
    for texts, count in zip(templates, counts):
        args: list[list[int]] = []
        fixed: list[int | None] = []
        for column in fields[f:f + len(texts) - 1]:
            if type(column) is not list or len(column) != 2:
                raise MalformedFrame("string field column is not a [values, widths] pair")
            values = decode_ints(column[0], count)
            widths = decode_ints(column[1], count)
            if count and not (0 <= min(values) and max(values) < 10**_MAX_DIGITS
                              and 1 <= min(widths) and max(widths) <= _MAX_DIGITS):
                raise MalformedFrame("string field value or width out of range")
            if type(column[1]) is int:
                fixed.append(column[1])
            else:
                fixed.append(None)
                args.append(widths)
            args.append(values)
        f += len(texts) - 1
        fmt = _format_of(texts, fixed)
        if len(args) == 1:
            out += map(fmt.__mod__, args[0])
        else:
            out += map(fmt.__mod__, zip(*args))
    return out
