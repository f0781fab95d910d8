"""A decoded body as columns (format v1), without building a `Reading` per reading.

`decode_columns(raw, reading_count, event_count)` runs every check `edge.codec.body` runs on
a decompressed body — it IS the decoder: `decode_body` is `decode_columns` plus building the
readings — and returns a `Columns`: per-run tags, per-reading columns in *column order* (run
by run, each run in batch order, as the body stores them), and the run index of every
reading in batch order.  A body it accepts decodes; a body it refuses raises the same
`MalformedFrame`.  Other exceptions on hostile input are left to the caller
(`edge.codec.batch`) to convert, as for `decode_body`.

Who calls what: `edge.codec.batch.scan_batch` (cloud ingest: validation, de-duplication and
partition keys without a `Reading` object each), `edge.codec.body.decode_body`, and
`edge.codec.subframe` (frames of a subset of the readings, re-encoded from these columns).

Columns are read-only by contract (lists are shared, not copied).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import accumulate, chain
from math import isfinite
from operator import add
from typing import Any

import msgpack

from edge.codec.columns import RUNS, decode_ints, expand
from edge.codec.floats import decode_float_parts, scaled_values
from edge.codec.header import Header
from edge.codec.strings import decode_strings
from edge.errors import MalformedFrame
from edge.model import Event

__all__ = ["BLOB_REF", "CONTEXT_FIELDS", "Columns", "MAX_STRING_CHARS", "ORDER_BY_RECEIVED",
           "ORDER_EXPLICIT", "TIMES_ABSOLUTE", "TIMES_RECEIVED_RELATIVE", "TIMES_TS_RELATIVE",
           "by_received", "decode_columns", "present_lengths", "rows_of_runs"]

#: total characters the string table of one frame may expand to
MAX_STRING_CHARS = 16 * 2**20
BODY_ITEMS = 12
#: msgpack ext type of a reference into the blob table
BLOB_REF = 1
#: how the order section gives the input order
ORDER_EXPLICIT, ORDER_BY_RECEIVED = 0, 1
#: how the times section holds ts_ms and received_ms
TIMES_ABSOLUTE, TIMES_RECEIVED_RELATIVE, TIMES_TS_RELATIVE = 0, 1, 2
#: Reading fields that are a run's tags, in `Columns.contexts` tuple order
CONTEXT_FIELDS = ("measurement", "unit", "facility", "line", "zone", "quality")


class Columns:
    """One batch body, column-wise.  Row `j` is the j-th reading in column order.

    Per run (`n_runs`): `lengths`, `run_device` (device id), `run_context` (index into
    `contexts`, tuples in `CONTEXT_FIELDS` order), `starts` (first row of the run).
    Per row (`n`): `ts`, `received`, `values`, `value_ints` with `value_scales` per run
    (see `edge.codec.floats.decode_float_parts`), `flags`.
    Optional fields: `*_presence` is True (every row has it), False (none) or bytes of one
    0/1 per row; `battery`, `battery_ints` (with `battery_scales` per run), `seq` and
    `sts_rel` (sensor_ts_ms - ts_ms) hold the present values only, in row order.
    `events`: the batch's events, decoded.  `header`: set by `edge.codec.scan_batch`.

    Batch order: `batch_order()` is the run index of each reading in batch order,
    `batch_positions()` the batch position of each row; both computed on first use.
    """

    __slots__ = ("n", "n_runs", "lengths", "starts", "run_device", "run_context", "contexts",
                 "ts", "received", "_values", "value_scales", "value_ints", "battery_presence",
                 "_battery", "battery_scales", "battery_ints", "seq_presence", "seq",
                 "sts_presence", "sts_rel", "flags", "events", "header", "_order",
                 "_order_by_received", "_positions", "_run_of_row", "_seq_counting",
                 "encoder_state")

    n: int
    n_runs: int
    lengths: list[int]
    starts: list[int]
    run_device: list[str]
    run_context: list[int]
    contexts: list[tuple[str, str, str | None, str | None, str | None, str]]
    ts: list[int]
    received: list[int]
    value_scales: list[int]
    value_ints: list[int]
    battery_presence: bool | bytes
    battery_scales: list[int]
    battery_ints: list[int]
    seq_presence: bool | bytes
    seq: list[int]
    sts_presence: bool | bytes
    sts_rel: list[int]
    flags: list[int]
    events: list[Event]
    header: Header | None

    def __init__(self) -> None:
        self.header = None
        self._values: list[float] | None = None
        self._battery: list[float] | None = None
        #: None: the body had no order section (rows are in batch order already)
        self._order: list[int] | None = None
        #: the order is a sort by received_ms without corrections, computed on first use
        self._order_by_received = False
        self._positions: list[int] | None = None
        self._run_of_row: list[int] | None = None
        #: whether every run's seqs count up by one; None: not known yet
        self._seq_counting: bool | None = None
        #: what `edge.codec.subframe` computes once per batch for all its sub-frames
        self.encoder_state: Any = None

    # -- derived, on first use -------------------------------------------------------------

    @property
    def values(self) -> list[float]:
        """value of each row."""
        if self._values is None:
            self._values = scaled_values(self.value_scales, self.value_ints)
        return self._values

    @property
    def battery(self) -> list[float]:
        """battery_voltage of the rows that have one."""
        if self._battery is None:
            self._battery = scaled_values(self.battery_scales, self.battery_ints)
        return self._battery

    def all_finite(self) -> bool:
        """Whether every value and battery voltage is finite (no NaN, no inf).  Free when
        they are scaled integers, which are always finite."""
        return all(v is None or _finite(v) for v in (self._values, self._battery))

    def run_of_row(self) -> list[int]:
        """The run index of each row (column order: non-decreasing)."""
        if self._run_of_row is None:
            self._run_of_row = expand(range(self.n_runs), self.lengths)
        return self._run_of_row

    @property
    def grouped(self) -> bool:
        """True when the batch order is the column order (readings grouped by run)."""
        return self._order is None and not self._order_by_received

    def batch_order(self) -> list[int]:
        """The run index of each reading, in batch order."""
        if self._order_by_received:
            self._order = by_received(self.received, self.lengths)
            self._order_by_received = False
        if self._order is None:
            return self.run_of_row()
        return self._order

    def batch_positions(self) -> list[int]:
        """The batch position of each row: readings[positions[j]] is row j."""
        if self._positions is None:
            if self.grouped:
                self._positions = list(range(self.n))
            else:
                # a stable sort by run lists the batch positions run by run, in batch order
                # within each run: exactly the column order of the rows
                order = self.batch_order()
                self._positions = sorted(range(self.n), key=order.__getitem__)
        return self._positions

    def seq_counts_up(self) -> bool:
        """Whether every reading has a seq and each run's seqs count up by one (a sensor's
        counter, uninterrupted).  Free when the column says so itself (RUNS whose deltas
        are the constant 1, what `encode_batch` writes for such a counter); else one pass."""
        if self._seq_counting is None:
            if self.seq_presence is not True:
                self._seq_counting = False
            else:
                heads = list(map(self.seq.__getitem__, self.starts))
                self._seq_counting = list(chain.from_iterable(
                    map(range, heads, map(add, heads, self.lengths)))) == self.seq
        return self._seq_counting

    def spread(self, presence: bool | bytes, values: list[Any]) -> list[Any]:
        """Present-only `values` -> one per row, None where absent."""
        return _spread(presence, values, self.n)

    def sensor_ts(self) -> list[int | None]:
        """sensor_ts_ms of each row (None where absent)."""
        if self.sts_presence is False:
            return [None] * self.n
        present_ts = self.ts
        if isinstance(self.sts_presence, bytes):
            present_ts = [t for t, p in zip(self.ts, self.sts_presence) if p]
        return _spread(self.sts_presence, [s + t for s, t in zip(self.sts_rel, present_ts)],
                       self.n)


# --------------------------------------------------------------------------- helpers


def _finite(values: list[float]) -> bool:
    # a sum is finite only if every term is (NaN and inf propagate); a finite sum that
    # overflowed is decided value by value
    return isfinite(sum(values)) or all(map(isfinite, values))


def present_lengths(presence: bool | bytes, lengths: list[int]) -> list[int]:
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


def by_received(received: list[int], lengths: list[int]) -> list[int]:
    """Run index of each reading if the input was sorted by received_ms (stable)."""
    run_of_row = expand(range(len(lengths)), lengths)
    return list(map(run_of_row.__getitem__,
                    sorted(range(len(received)), key=received.__getitem__)))


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
    """Blob references (1-based) -> the blobs."""
    if type(node) is list:
        return [_resolve(item, blobs) for item in node]
    if type(node) is msgpack.ExtType:
        index = int.from_bytes(node.data, "big") - 1
        if node.code != BLOB_REF or not 0 <= index < len(blobs):
            raise MalformedFrame(f"bad blob reference {node!r}")
        return blobs[index]
    return node


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
        return first, list(map(add, second, first))
    if mode == TIMES_TS_RELATIVE:
        return list(map(add, second, first)), first
    raise MalformedFrame(f"unknown times mode {mode!r}")


def _decode_order(cols: Columns, order_spec: Any) -> None:
    """Sets the batch order; a non-trivial one is checked against the run lengths."""
    if order_spec is None:
        return
    mode, spec = _pair(order_spec, "order")
    n, lengths = cols.n, cols.lengths
    order = decode_ints(spec, n)
    if mode == ORDER_BY_RECEIVED:
        if type(spec) is int and spec == 0:
            # no corrections: a stable sort of the rows is a valid order by construction,
            # so it is only computed when someone asks for it
            cols._order_by_received = True
            return
        order = list(map(add, order, by_received(cols.received, lengths)))
    elif mode != ORDER_EXPLICIT:
        raise MalformedFrame(f"unknown order mode {mode!r}")
    # each run exactly as often as it has readings; since the counts add up to n, a value
    # that is no run index at all leaves some run short, so this is the range check too
    counts = Counter(order)
    if any(counts[r] != length for r, length in enumerate(lengths)):
        raise MalformedFrame("the order section does not place each run's readings")
    cols._order = order


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


# --------------------------------------------------------------------------- decode


def decode_columns(raw: bytes, reading_count: int, event_count: int) -> Columns:
    """The columns of a decompressed body; counts come from the frame header.

    Raises MalformedFrame on inconsistencies; other exceptions from hostile input are left to
    the caller (`edge.codec.batch`) to convert.
    """
    body = msgpack.unpackb(raw, raw=False)
    if type(body) is not list or len(body) != BODY_ITEMS:
        raise MalformedFrame(f"body is not a {BODY_ITEMS}-item list")
    blobs, events_bin = _blobs(body[0]), body[-1]
    if type(events_bin) is not bytes:
        raise MalformedFrame("events section is not bytes")
    (strings_spec, contexts_raw, runs, order_spec, times, value_spec, battery, seq,
     sensor_ts, flags_spec) = _resolve(body[1:-1], blobs)
    n = reading_count
    cols = Columns()
    cols.n = n

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
    cols.run_context = _indices(decode_ints(runs[2], n_runs), n_contexts, "context")
    cols.n_runs, cols.lengths = n_runs, lengths
    cols.starts = list(accumulate(lengths[:-1], initial=0)) if lengths else []
    cols.run_device = list(map(strings.__getitem__, run_device))
    cols.contexts = list(zip(*context_fields))

    cols.ts, cols.received = _decode_times(times, n, lengths)
    cols._values, cols.value_scales, cols.value_ints = decode_float_parts(value_spec, lengths)

    cols.battery_presence, n_battery = _presence_flags(_pair(battery, "battery")[0], n)
    cols._battery, cols.battery_scales, cols.battery_ints = [], [], []
    if n_battery:
        cols._battery, cols.battery_scales, cols.battery_ints = decode_float_parts(
            battery[1], present_lengths(cols.battery_presence, lengths))

    cols.seq_presence, n_seq = _presence_flags(_pair(seq, "seq")[0], n)
    cols.seq = []
    if n_seq:
        cols.seq = decode_ints(seq[1], n_seq, present_lengths(cols.seq_presence, lengths))
        spec = seq[1]
        if (cols.seq_presence is True and type(spec) is list and len(spec) == 3
                and spec[0] == RUNS and type(spec[2]) is int and spec[2] == 1):
            cols._seq_counting = True  # in-run deltas all 1: decoded as such just above

    cols.sts_presence, n_sts = _presence_flags(_pair(sensor_ts, "sensor_ts")[0], n)
    cols.sts_rel = []
    if n_sts:
        cols.sts_rel = decode_ints(sensor_ts[1], n_sts,
                                   present_lengths(cols.sts_presence, lengths))

    cols.flags = decode_ints(flags_spec, n)
    _decode_order(cols, order_spec)
    event_rows = msgpack.unpackb(events_bin, raw=False, strict_map_key=False)
    cols.events = _decode_events(event_rows, event_count)
    return cols


def rows_of_runs(cols: Columns, runs: Sequence[int]) -> list[int]:
    """The rows of these runs (ascending runs give ascending rows)."""
    starts, lengths = cols.starts, cols.lengths
    return list(chain.from_iterable(
        map(range, map(starts.__getitem__, runs),
            map(add, map(starts.__getitem__, runs), map(lengths.__getitem__, runs)))))

