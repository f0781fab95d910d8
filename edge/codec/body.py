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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import chain, repeat
from types import MemberDescriptorType
from typing import Any

import msgpack

from edge.codec.columns import decode_ints, encode_ints, expand
from edge.codec.floats import decode_floats, encode_floats
from edge.codec.strings import decode_strings, encode_strings
from edge.errors import MalformedFrame, Oversize, TimestampOutOfRange, WrongType
from edge.model import Event, Reading

#: total characters the string table of one frame may expand to
MAX_STRING_CHARS = 16 * 2**20

_BODY_ITEMS = 12
#: byte strings this long leave the section tree for the blob table at the body's head
_HOIST_MIN = 64
#: msgpack ext type of a reference into the blob table
BLOB_REF = 1
#: times are differenced against each other; within +-2**62 ms (146 million years) every
#: difference stays an int64
_TIME_LIMIT = 2**62
#: how the order section gives the input order
ORDER_EXPLICIT, ORDER_BY_RECEIVED = 0, 1
#: how the times section holds ts_ms and received_ms
TIMES_ABSOLUTE, TIMES_RECEIVED_RELATIVE, TIMES_TS_RELATIVE = 0, 1, 2


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
        error = TimestampOutOfRange if limit == _TIME_LIMIT else Oversize
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


def _present_lengths(presence: bool | bytes, lengths: list[int]) -> list[int]:
    """Per run, how many readings have the field."""
    if presence is True:
        return lengths
    if presence is False:
        return [0] * len(lengths)
    out = []
    start = 0
    for length in lengths:
        out.append(presence[start:start + length].count(1))
        start += length
    return out


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


def _by_received(received: list[int], lengths: list[int]) -> list[int]:
    """Run index of each reading if the input was sorted by received_ms (stable)."""
    run_of_row = expand(range(len(lengths)), lengths)
    return [run_of_row[i] for i in sorted(range(len(received)), key=received.__getitem__)]


def _encode_order(order: list[int], received: list[int], lengths: list[int]) -> list[Any]:
    explicit, explicit_cost = encode_ints(order)
    # a gateway buffer drains in arrival order: then only the ties (same millisecond) and
    # the few readings committed out of order differ from a sort by received_ms
    guess = _by_received(received, lengths)
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
    _check_ints("ts_ms", ts, limit=_TIME_LIMIT)
    _check_ints("received_ms", received, limit=_TIME_LIMIT)
    _check_ints("sensor_ts_ms", sensor_ts, optional=True, limit=_TIME_LIMIT)
    _check_ints("flags", flags)
    _check_ints("seq", seq, optional=True)
    _check_floats("value", values)
    _check_floats("battery_voltage", battery, optional=True)

    battery_presence = _presence(battery)
    battery_spec = None
    if battery_presence is not False:
        battery_spec = encode_floats([b for b in battery if b is not None],
                                     _present_lengths(battery_presence, lengths))[0]
    seq_presence = _presence(seq)
    seq_spec = None
    if seq_presence is not False:
        seq_spec = encode_ints([s for s in seq if s is not None],
                               _present_lengths(seq_presence, lengths))[0]
    sts_presence = _presence(sensor_ts)
    sts_spec = None
    if sts_presence is not False:
        sts_spec = encode_ints([s - t for s, t in zip(sensor_ts, ts) if s is not None],
                               _present_lengths(sts_presence, lengths))[0]
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
        return [_hoist(item, blobs) for item in node]
    if isinstance(node, bytes) and len(node) >= _HOIST_MIN:
        blobs.append(node)
        index = len(blobs)
        return msgpack.ExtType(BLOB_REF, index.to_bytes((index.bit_length() + 7) // 8, "big"))
    return node


def _blobs(table: Any) -> list[bytes]:
    """The blob table [lengths, data] -> the blobs."""
    if type(table) is not list or len(table) != 2:
        raise MalformedFrame("blob table is not a [lengths, data] pair")
    lengths, data = table
    if (type(lengths) is not list or type(data) is not bytes
            or any(type(n) is not int or n < 0 for n in lengths) or sum(lengths) != len(data)):
        raise MalformedFrame("blob table lengths do not match its data")
    out = []
    start = 0
    for n in lengths:
        out.append(data[start:start + n])
        start += n
    return out


def _resolve(node: Any, blobs: list[bytes]) -> Any:
    """Inverse of `_hoist` (references are 1-based)."""
    if type(node) is list:
        return [_resolve(item, blobs) for item in node]
    if type(node) is msgpack.ExtType:
        index = int.from_bytes(node.data, "big") - 1
        if node.code != BLOB_REF or not 0 <= index < len(blobs):
            raise MalformedFrame(f"bad blob reference {node!r}")
        return blobs[index]
    return node



# --------------------------------------------------------------------------- decode


def _presence_flags(presence: Any, n: int) -> tuple[bool | bytes, int]:
    if presence is True or presence is False:
        return presence, n if presence else 0
    if type(presence) is not bytes or len(presence) != n or (n and max(presence) > 1):
        raise MalformedFrame("presence map is not true, false or one 0/1 byte per reading")
    return presence, presence.count(1)


def _spread(presence: bool | bytes, values: list[Any], n: int) -> list[Any]:
    if presence is True:
        return values
    if presence is False:
        return [None] * n
    it = iter(values)
    return [next(it) if p else None for p in presence]


def _pair(item: Any, what: str) -> list[Any]:
    if type(item) is not list or len(item) != 2:
        raise MalformedFrame(f"{what} section is not a 2-item list")
    return item


def _indices(values: list[int], size: int, what: str) -> list[int]:
    if values and not (0 <= min(values) and max(values) < size):
        raise MalformedFrame(f"{what} index out of range")
    return values


def _decode_times(times: Any, n: int, lengths: list[int]) -> tuple[list[int], list[int]]:
    if type(times) is not list or len(times) != 3:
        raise MalformedFrame("times section is not a 3-item list")
    mode, first_spec, second_spec = times
    first = decode_ints(first_spec, n, lengths)
    second = decode_ints(second_spec, n, lengths)
    if mode == TIMES_ABSOLUTE:
        return first, second
    if mode == TIMES_RECEIVED_RELATIVE:
        return first, [s + t for s, t in zip(second, first)]
    if mode == TIMES_TS_RELATIVE:
        return [s + r for s, r in zip(second, first)], first
    raise MalformedFrame(f"unknown times mode {mode!r}")


def decode_body(raw: bytes, reading_count: int,
                event_count: int) -> tuple[list[Reading], list[Event]]:
    """Readings and events of a decompressed body; counts come from the frame header.

    Raises MalformedFrame on inconsistencies; other exceptions from hostile input are left to
    the caller (`edge.codec.batch.decode_batch`) to convert.
    """
    body = msgpack.unpackb(raw, raw=False)
    if type(body) is not list or len(body) != _BODY_ITEMS:
        raise MalformedFrame(f"body is not a {_BODY_ITEMS}-item list")
    blobs, events_bin = _blobs(body[0]), body[-1]
    if type(events_bin) is not bytes:
        raise MalformedFrame("events section is not bytes")
    (strings_spec, contexts_raw, runs, order_spec, times, value_spec, battery, seq,
     sensor_ts, flags_spec) = _resolve(body[1:-1], blobs)
    n = reading_count

    if type(runs) is not list or len(runs) != 4:
        raise MalformedFrame("runs section is not a 4-item list")
    n_runs = runs[0]
    if type(n_runs) is not int or not (0 < n_runs <= n or n_runs == n == 0):
        raise MalformedFrame(f"run count {n_runs!r} does not fit {n} readings")
    lengths = decode_ints(runs[3], n_runs)
    if lengths and (min(lengths) < 1 or sum(lengths) != n):
        raise MalformedFrame("run lengths do not add up to the reading count")
    if type(contexts_raw) is not list or len(contexts_raw) != 7:
        raise MalformedFrame("context section is not a 7-item list")
    n_contexts = contexts_raw[0]
    if type(n_contexts) is not int or not (0 < n_contexts <= n_runs or n_contexts == n_runs):
        raise MalformedFrame(f"context count {n_contexts!r} does not fit {n_runs} runs")
    strings = decode_strings(strings_spec, n_runs + 6 * n_contexts, MAX_STRING_CHARS)
    lookup: list[str | None] = [None, *strings]
    context_fields = [list(map(lookup.__getitem__,
                               _indices(decode_ints(spec, n_contexts), len(lookup), "string")))
                      for spec in contexts_raw[1:]]
    run_device = _indices(decode_ints(runs[1], n_runs), len(strings), "device string")
    run_context = _indices(decode_ints(runs[2], n_runs), n_contexts, "context")
    run_of_row = range(n) if n_runs == n else expand(range(n_runs), lengths)

    ts, received_ms = _decode_times(times, n, lengths)
    values = decode_floats(value_spec, lengths)

    battery_presence, n_battery = _presence_flags(_pair(battery, "battery")[0], n)
    battery_values: list[Any] = []
    if n_battery:
        battery_values = decode_floats(battery[1], _present_lengths(battery_presence, lengths))

    seq_presence, n_seq = _presence_flags(_pair(seq, "seq")[0], n)
    seq_values: list[Any] = []
    if n_seq:
        seq_values = decode_ints(seq[1], n_seq, _present_lengths(seq_presence, lengths))

    sts_presence, n_sts = _presence_flags(_pair(sensor_ts, "sensor_ts")[0], n)
    sts_values: list[Any] = []
    if n_sts:
        sts_rel = decode_ints(sensor_ts[1], n_sts, _present_lengths(sts_presence, lengths))
        present_ts = ts
        if isinstance(sts_presence, bytes):
            present_ts = [t for t, p in zip(ts, sts_presence) if p]
        sts_values = [s + t for s, t in zip(sts_rel, present_ts)]

    flags = decode_ints(flags_spec, n)
    device_of_row = list(map(run_device.__getitem__, run_of_row))
    context_of_row = list(map(run_context.__getitem__, run_of_row))
    rows = _readings([
        list(map(strings.__getitem__, device_of_row)), ts, values,
        *(list(map(field.__getitem__, context_of_row)) if len(field) > 1 else field * n
          for field in context_fields),
        _spread(battery_presence, battery_values, n), _spread(seq_presence, seq_values, n),
        received_ms, _spread(sts_presence, sts_values, n), flags])

    if order_spec is None:
        readings = rows
    else:
        mode, spec = _pair(order_spec, "order")
        order = decode_ints(spec, n)
        if mode == ORDER_BY_RECEIVED:
            order = [a + b for a, b in zip(order, _by_received(received_ms, lengths))]
        elif mode != ORDER_EXPLICIT:
            raise MalformedFrame(f"unknown order mode {mode!r}")
        _indices(order, n_runs, "run")
        runs_iters = []
        start = 0
        for length in lengths:
            runs_iters.append(iter(rows[start:start + length]))
            start += length
        readings = [next(runs_iters[i]) for i in order]
    event_rows = msgpack.unpackb(events_bin, raw=False, strict_map_key=False)
    return readings, _decode_events(event_rows, event_count)


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


def _decode_events(rows: Any, count: int) -> list[Event]:
    if type(rows) is not list or len(rows) != count:
        raise MalformedFrame(f"events section does not hold the {count} events announced")
    events = []
    for row in rows:
        if type(row) is not list or len(row) != 5:
            raise MalformedFrame("event is not a 5-item list")
        kind, key, ts_ms, device_id, body = row
        if (type(kind) is not str or type(key) is not bytes or type(ts_ms) is not int
                or type(device_id) is not str or type(body) is not dict):
            raise MalformedFrame("event fields have the wrong types")
        events.append(Event(kind=kind, key=key, ts_ms=ts_ms, device_id=device_id, body=body))
    return events
