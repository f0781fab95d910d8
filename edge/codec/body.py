"""The body of a batch frame (format v1): readings and events <-> msgpack chunks.

Readings are grouped into *runs*, one per series (device id + measurement + unit + facility +
line + zone + quality), numbered by first appearance.  Columns list the readings run by run,
each run in input order, so consecutive values belong to one sensor and their differences are
small; the order section restores the input order exactly.  Column specs are described in
`edge.codec.columns` (icol) and `edge.codec.floats` (fcol), the string table in
`edge.codec.strings`.

The body is one msgpack array:

    0  blobs      [lengths, data]: every byte string of 64+ bytes in sections 1-10, moved
                  here and replaced by ext type 1 (data: its 1-based index, big-endian)
    1  strings    string table (`edge.codec.strings`) of the device ids (sorted) and the
                  context strings
    2  contexts   [count, then one icol per field (measurement, unit, facility, line, zone,
                  quality) over contexts: string index + 1, 0 for None]
    3  runs       [run count, device string index icol, context index icol, length icol]
    4  order      nil (input was grouped by run already), [0, icol of the run index of each
                  reading in input order], or [1, icol of corrections to the run indices of
                  a stable sort by received_ms]
    5  times      [0, ts_ms icol, received_ms icol] | [1, ts_ms icol, received - ts icol]
                  | [2, received_ms icol, ts - received icol]
    6  value      fcol over runs
    7  battery    [presence, fcol over the runs' present values | nil]
    8  seq        [presence, icol over the runs' present values | nil]
    9  sensor_ts  [presence, icol of sensor_ts_ms - ts_ms for present values | nil]
    10 flags      icol
    11 events     bytes: msgpack of [[kind, key, ts_ms, device_id, body], ...]

presence is true (every reading has the field), false (none has) or bytes with one 0/1 per
reading in column order.  Run-wise icols get the run lengths (of present values) as runs.

The blob table comes first and its data holds no msgpack framing, so `encode_body` can hand
`edge.codec.compression` each byte plane as its own chunk: zstd then codes every plane with
its own small code table instead of one table for the whole body.

Decoding is `edge.codec.columnar.decode_columns` (every check) plus `readings_of`, which
builds the `Reading` objects from the columns and puts them in batch order.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from itertools import chain, repeat
from types import MemberDescriptorType
from typing import Any

import msgpack

from edge.codec.columnar import (
    BLOB_REF,
    ORDER_BY_RECEIVED,
    ORDER_EXPLICIT,
    TIMES_ABSOLUTE,
    TIMES_RECEIVED_RELATIVE,
    TIMES_TS_RELATIVE,
    Columns,
    by_received,
    decode_columns,
    present_lengths,
)
from edge.codec.columns import encode_ints, expand
from edge.codec.floats import encode_floats
from edge.codec.strings import encode_strings
from edge.errors import Oversize, TimestampOutOfRange, WrongType
from edge.model import Event, Reading

#: byte strings this long leave the section tree for the blob table at the body's head
_HOIST_MIN = 64
#: times are differenced against each other; within +-2**62 ms (146 million years) every
#: difference stays an int64
TIME_LIMIT = 2**62


# --------------------------------------------------------------------------- encode


def _check_ints(name: str, values: Sequence[Any], optional: bool = False,
                limit: int = 2**63) -> None:
    types = set(map(type, values))
    types.discard(int)
    if optional:
        types.discard(type(None))
    if types:
        raise WrongType(f"{name} must be int, got {sorted(t.__name__ for t in types)}",
                        field=name)
    present = [v for v in values if v is not None] if optional else values
    if present and (min(present) < -limit or max(present) >= limit):
        error = TimestampOutOfRange if limit == TIME_LIMIT else Oversize
        raise error(f"{name} outside -2**{limit.bit_length() - 1}..2**"
                    f"{limit.bit_length() - 1}", field=name)


def _check_floats(name: str, values: Sequence[Any], optional: bool = False) -> None:
    types = set(map(type, values))
    if optional:
        types.discard(type(None))
    if types - {float, int}:
        raise WrongType(f"{name} must be a number, got "
                        f"{sorted(t.__name__ for t in types - {float, int})}", field=name)
    if int in types:
        # an int comes back as a float: only ints a float64 holds exactly are lossless
        for v in values:
            if type(v) is int and abs(v) > 2**53 and not _exact_float(v):
                raise Oversize(f"{name} {v} is not exactly a float64", field=name, value=v)


def _exact_float(v: int) -> bool:
    try:
        return float(v) == v
    except OverflowError:
        return False


def _presence(values: Sequence[Any]) -> bool | bytes:
    flags = [v is not None for v in values]
    if all(flags):
        return True
    if not any(flags):
        return False
    return bytes(flags)


_KEY_FIELDS = ("device_id", "measurement", "unit", "facility", "line", "zone", "quality")
_OPTIONAL_KEY_FIELDS = {"facility", "line", "zone"}


def _check_keys(keys: list[tuple[Any, ...]]) -> None:
    for i, name in enumerate(_KEY_FIELDS):
        allowed = {str, type(None)} if name in _OPTIONAL_KEY_FIELDS else {str}
        wrong = {type(k[i]) for k in keys} - allowed
        if wrong:
            bad = next(k[i] for k in keys if type(k[i]) not in allowed)
            raise WrongType(f"{name} must be a string, got {type(bad).__name__}", field=name,
                            value=bad)
        for value in {k[i] for k in keys}:
            if value is not None and not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError as e:
                    raise WrongType(f"{name} is not valid unicode: {e.reason}", field=name,
                                    value=value) from e


def _encode_order(order: list[int], received: list[int], lengths: list[int]) -> list[Any]:
    explicit, explicit_cost = encode_ints(order)
    # a gateway buffer drains in arrival order: then only the ties (same millisecond) and
    # the few readings committed out of order differ from a sort by received_ms
    guess = by_received(received, lengths)
    corrections, cost = encode_ints([a - b for a, b in zip(order, guess)])
    if cost < explicit_cost:
        return [ORDER_BY_RECEIVED, corrections]
    return [ORDER_EXPLICIT, explicit]


def _encode_times(ts: list[int], received: list[int], lengths: list[int]) -> list[Any]:
    ts_spec, ts_cost = encode_ints(ts, lengths)
    # network delay is noise around a level: run-wise modes do not pay for it
    rel_spec, rel_cost = encode_ints([r - t for r, t in zip(received, ts)])
    abs_spec, abs_cost = encode_ints(received)
    # a snapshot in arrival order has received_ms nearly sorted: then it is the column to
    # difference, and ts_ms follows as the (small) network delay before it
    best = min(ts_cost + rel_cost, ts_cost + abs_cost, abs_cost + rel_cost)
    if best == ts_cost + rel_cost:
        return [TIMES_RECEIVED_RELATIVE, ts_spec, rel_spec]
    if best == ts_cost + abs_cost:
        return [TIMES_ABSOLUTE, ts_spec, abs_spec]
    back = encode_ints([t - r for r, t in zip(received, ts)])[0]
    return [TIMES_TS_RELATIVE, abs_spec, back]


def encode_body(readings: Sequence[Reading], events: Sequence[Event]) -> list[bytes]:
    """The body as chunks whose concatenation is the msgpack body (see module docstring).

    Raises WrongType / Oversize for values the format cannot carry.
    """
    run_of: dict[tuple[Any, ...], int] = {}
    members: list[list[Reading]] = []
    order: list[int] = []
    try:
        for r in readings:
            key = (r.device_id, r.measurement, r.unit, r.facility, r.line, r.zone, r.quality)
            i = run_of.get(key)
            if i is None:
                i = run_of[key] = len(members)
                members.append([])
            members[i].append(r)
            order.append(i)
    except (AttributeError, TypeError) as e:
        # not a Reading, or an unhashable value where a string belongs
        raise WrongType(f"readings must be edge.model.Reading with string fields: {e}",
                        field="readings") from e
    keys = list(run_of)
    _check_keys(keys)
    lengths = [len(m) for m in members]
    contiguous = all(a <= b for a, b in zip(order, order[1:]))

    # device ids sorted: numbered ids then differ by small steps in the string table, and
    # the run -> device column carries the arrival order instead
    distinct = dict.fromkeys(sorted({k[0] for k in keys}))
    context_index: dict[tuple[Any, ...], int] = {}
    for key in keys:
        context_index.setdefault(key[1:], len(context_index))
    for context in context_index:
        distinct.update((s, None) for s in context if s is not None)
    strings_spec, table = encode_strings(list(distinct))
    string_index = {s: i for i, s in enumerate(table)}
    # one column per context field, string index + 1 (0 is None)
    contexts = [len(context_index)] + [
        encode_ints([0 if c[f] is None else string_index[c[f]] + 1 for c in context_index])[0]
        for f in range(6)]
    run_dev = [string_index[k[0]] for k in keys]
    run_ctx = [context_index[k[1:]] for k in keys]

    rows = list(chain.from_iterable(members))
    ts = [r.ts_ms for r in rows]
    values = [r.value for r in rows]
    battery = [r.battery_voltage for r in rows]
    seq = [r.seq for r in rows]
    received = [r.received_ms for r in rows]
    sensor_ts = [r.sensor_ts_ms for r in rows]
    flags = [r.flags for r in rows]
    _check_ints("ts_ms", ts, limit=TIME_LIMIT)
    _check_ints("received_ms", received, limit=TIME_LIMIT)
    _check_ints("sensor_ts_ms", sensor_ts, optional=True, limit=TIME_LIMIT)
    _check_ints("flags", flags)
    _check_ints("seq", seq, optional=True)
    _check_floats("value", values)
    _check_floats("battery_voltage", battery, optional=True)

    battery_presence = _presence(battery)
    battery_spec = None
    if battery_presence is not False:
        battery_spec = encode_floats([b for b in battery if b is not None],
                                     present_lengths(battery_presence, lengths))[0]
    seq_presence = _presence(seq)
    seq_spec = None
    if seq_presence is not False:
        seq_spec = encode_ints([s for s in seq if s is not None],
                               present_lengths(seq_presence, lengths))[0]
    sts_presence = _presence(sensor_ts)
    sts_spec = None
    if sts_presence is not False:
        sts_spec = encode_ints([s - t for s, t in zip(sensor_ts, ts) if s is not None],
                               present_lengths(sts_presence, lengths))[0]
    times = _encode_times(ts, received, lengths)

    try:
        event_rows = [[e.kind, e.key, e.ts_ms, e.device_id, e.body] for e in events]
    except AttributeError as e:
        raise WrongType(f"events must be edge.model.Event: {e}", field="events") from e
    for event in events:
        if (type(event.kind) is not str or type(event.key) is not bytes
                or type(event.ts_ms) is not int or type(event.device_id) is not str
                or type(event.body) is not dict):
            raise WrongType(f"event fields have the wrong types: {event!r}", field="events")

    sections = [
        strings_spec,
        contexts,
        [len(keys), encode_ints(run_dev)[0], encode_ints(run_ctx)[0], encode_ints(lengths)[0]],
        None if contiguous else _encode_order(order, received, lengths),
        times,
        encode_floats(values, lengths)[0],
        [battery_presence, battery_spec],
        [seq_presence, seq_spec],
        [sts_presence, sts_spec],
        encode_ints(flags)[0],
    ]
    try:
        events_bin = msgpack.packb(event_rows, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WrongType(f"an event body is not msgpack-serialisable: {e}", field="body") from e
    return assemble(sections, events_bin)


def assemble(sections: list[Any], events_bin: bytes) -> list[bytes]:
    """Body sections 1-10 and the events bytes -> the body as chunks (blobs hoisted)."""
    blobs: list[bytes] = []
    sections = _hoist(sections, blobs)
    packer = msgpack.Packer(use_bin_type=True)
    data = b"".join(blobs)
    head = (packer.pack_array_header(len(sections) + 2) + packer.pack_array_header(2)
            + packer.pack([len(blob) for blob in blobs]))
    # chunks: the head, then each byte plane of each blob alone (no msgpack framing inside,
    # so each can be a compression block of a few distinct byte values), then the sections
    chunks = [head + packer.pack(data)[:-len(data)] if data else head + packer.pack(data)]
    for blob in blobs:
        width = getattr(blob, "width", 1)
        step = len(blob) // width if width > 1 else len(blob)
        chunks += [blob[i:i + step] for i in range(0, len(blob), step)]
    chunks.append(b"".join(packer.pack(section) for section in sections) + packer.pack(events_bin))
    return chunks


def _hoist(node: Any, blobs: list[bytes]) -> Any:
    """Moves long byte strings out of `node` into `blobs`, leaving BLOB_REF ext markers."""
    if type(node) is list:
        # scalars (most items) are kept without a call
        return [_hoist(item, blobs) if type(item) is list or isinstance(item, bytes) else item
                for item in node]
    if isinstance(node, bytes) and len(node) >= _HOIST_MIN:
        blobs.append(node)
        return _blob_ref(len(blobs))
    return node


@functools.lru_cache(maxsize=256)
def _blob_ref(index: int) -> msgpack.ExtType:
    """The reference to blob `index` (1-based); a handful of them serve every body."""
    return msgpack.ExtType(BLOB_REF, index.to_bytes((index.bit_length() + 7) // 8, "big"))


# --------------------------------------------------------------------------- decode


def decode_body(raw: bytes, reading_count: int,
                event_count: int) -> tuple[list[Reading], list[Event]]:
    """Readings and events of a decompressed body; counts come from the frame header.

    `edge.codec.columnar.decode_columns` does the decoding and every check; this builds the
    readings from its columns and puts them in batch order.  Raises MalformedFrame on
    inconsistencies; other exceptions from hostile input are left to the caller
    (`edge.codec.batch.decode_batch`) to convert.
    """
    cols = decode_columns(raw, reading_count, event_count)
    return readings_of(cols), cols.events


def readings_of(cols: Columns) -> list[Reading]:
    """The readings of `cols`, in batch order."""
    n = cols.n
    context_fields: list[list[Any]] = [list(f) for f in zip(*cols.contexts)] or [[]] * 6
    if cols.n_runs == n:
        device_of_row: list[str] = cols.run_device
        context_of_row: Sequence[int] = cols.run_context
    else:
        device_of_row = expand(cols.run_device, cols.lengths)
        context_of_row = expand(cols.run_context, cols.lengths)
    rows = _readings([
        device_of_row, cols.ts, cols.values,
        *(list(map(field.__getitem__, context_of_row)) if len(field) > 1 else field * n
          for field in context_fields),
        cols.spread(cols.battery_presence, cols.battery),
        cols.spread(cols.seq_presence, cols.seq),
        cols.received, cols.sensor_ts(), cols.flags])
    if cols.grouped:
        return rows
    runs_iters = [iter(rows[start:start + length])
                  for start, length in zip(cols.starts, cols.lengths)]
    # the order was checked against the run lengths when it was decoded
    return list(map(next, map(runs_iters.__getitem__, cols.batch_order())))


_READING_FIELDS = tuple(Reading.__dataclass_fields__)
_READING_SETTERS = [getattr(Reading, name).__set__ for name in _READING_FIELDS]
#: Reading is a slotted dataclass whose __init__ only assigns its fields; filling the slots
#: column by column from C skips a Python frame and 14 calls per reading (3x faster).  Should
#: the model ever validate in __init__ / __post_init__, this must go back to calling it.
_SLOT_FILL = (not hasattr(Reading, "__post_init__") and len(_READING_FIELDS) == 14
              and all(type(getattr(Reading, name)) is MemberDescriptorType
                      for name in _READING_FIELDS))


def _readings(columns: list[list[Any]]) -> list[Reading]:
    """Readings from columns in dataclass field order (same result as map(Reading, ...))."""
    if not _SLOT_FILL:
        return list(map(Reading, *columns))
    out = list(map(object.__new__, repeat(Reading, len(columns[0]))))
    for setter, column in zip(_READING_SETTERS, columns):
        deque(map(setter, out, column), maxlen=0)
    return out
