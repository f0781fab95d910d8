"""Frames of some of a batch's readings, re-encoded from its columns (format v1).

    cols = scan_batch(frame)
    part = encode_rows(cols, rows_of_runs(cols, [0, 2]))     # the readings of runs 0 and 2
    decode_batch(part).readings == [r for r in decode_batch(frame).readings if r in ...]

Who calls it: cloud ingest, which splits a gateway's batch into one bus record per partition
key.  `encode_batch` would do, but it searches the smallest encoding of every column
(~20 µs per reading); this writes each column in one fixed, cheap mode and copies what the
frame already holds, at a few passes in C per column:

* strings as literals (no templates), contexts and runs as given;
* run-wise integer columns (ts_ms, scaled values, seq, ...) as RUNS with RAW in-run deltas,
  the others as RAW (CONST when all values are equal);
* floats as the frame had them: each run keeps its decimal scale and its scaled integers
  (`edge.codec.floats.decode_float_parts`), so every float comes back bit for bit without
  being checked again; raw runs stay raw float64;
* the order section explicit (nil when the rows are grouped by run in batch order).

Guarantees: the result is a v1 frame that `decode_batch` reads back as exactly the selected
readings, in their batch order, with the batch's gateway id, sequence and created_ms and no
events; deterministic (same columns and rows, same bytes).  Raises `edge.errors.Oversize`
when a value is outside what v1 carries (received_ms / sensor_ts_ms beyond +-2**62 ms, seq
or flags beyond int64) — a frame from `encode_batch` never has one, a hostile one may; and
ValueError for rows that are not ascending row indices.  Pure, no I/O, thread-safe.
Sizes are larger than `encode_batch`'s (planes are not costed): meant for a transport that
compresses record batches itself (Kafka), or with compression="zstd".
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, and_, lshift, lt, rshift, sub, xor
from typing import Any

import msgpack

from edge.codec.body import TIME_LIMIT, assemble
from edge.codec.columnar import ORDER_EXPLICIT, TIMES_RECEIVED_RELATIVE, Columns, present_lengths
from edge.codec.columns import CENTRED, I64_MAX, I64_MIN, RAW, RUNS, Planes
from edge.codec.compression import compress as compress_body
from edge.codec.header import COMPRESSIONS, pack_header
from edge.codec.strings import STATIC
from edge.errors import Oversize

__all__ = ["encode_rows", "encode_runs", "fast_ints"]

_STATIC_INDEX = {s: i for i, s in enumerate(STATIC)}
_NO_EVENTS = msgpack.packb([])
#: scaled float ints beyond this go raw (their planes would not fit a v1 column)
_SCALED_LIMIT = 2**62


def _planes(zs: list[int], top: int) -> Planes:
    """Non-negative ints (largest `top` > 0) -> byte planes, least significant first."""
    width = (top.bit_length() + 7) // 8
    if width == 1:
        out = Planes(bytes(zs))
    else:
        out = Planes(b"".join(bytes(map(and_, map(rshift, zs, repeat(shift)), repeat(0xFF)))
                              for shift in range(0, 8 * width, 8)))
    out.width = width
    return out


def _in_i64(low: int, high: int) -> bool:
    return I64_MIN <= low and high <= I64_MAX


def fast_ints(xs: list[int], lengths: Sequence[int] | None = None) -> Any:
    """An icol spec of int64 values in one pass of choices: CONST, RUNS (when `lengths`, runs
    summing to len(xs), leave in-run deltas) or RAW.  ValueError outside int64."""
    if not xs:
        return 0
    low, high = min(xs), max(xs)
    if not _in_i64(low, high):
        raise ValueError("integer column outside the signed 64-bit range")
    if low == high:
        return low
    if lengths is not None:
        runs = [length for length in lengths if length]
        if sum(runs) != len(xs):
            raise ValueError("run lengths do not add up to the column")
        if len(runs) < len(xs):
            starts = list(accumulate(runs[:-1], initial=0))
            deltas = list(map(sub, xs[1:], xs))
            for start in reversed(starts[1:]):
                del deltas[start - 1]  # the step from one run into the next
            if _in_i64(min(deltas), max(deltas)):
                return [RUNS, fast_ints(list(map(xs.__getitem__, starts))), fast_ints(deltas)]
    return [RAW, low, _planes(list(map(sub, xs, repeat(low))), high - low)]


def _check(name: str, xs: list[int], limit: int) -> None:
    if xs and (min(xs) < -limit or max(xs) >= limit):
        raise Oversize(f"{name} outside -2**{limit.bit_length() - 1}.."
                       f"2**{limit.bit_length() - 1}", field=name)


class _Selection:
    """The chosen rows as ascending [start, stop) segments; gathers are C-level slice joins
    (a key's rows are whole runs: one segment per run)."""

    def __init__(self, cols: Columns, segments: list[tuple[int, int]], runs: list[int],
                 lengths: list[int]) -> None:
        self.cols = cols
        self.runs = runs
        self.lengths = lengths
        self.slices = [slice(a, b) for a, b in segments]
        self.count = sum(lengths)

    def gather(self, column: list[Any]) -> list[Any]:
        return list(chain.from_iterable(map(column.__getitem__, self.slices)))

    def rows(self) -> list[int]:
        return list(chain.from_iterable(range(s.start, s.stop) for s in self.slices))

    def present(self, presence: bool | bytes) -> tuple[bool | bytes, list[slice]]:
        """(presence of the chosen rows, slices of the present-only values they have)."""
        if presence is True:
            return True, self.slices
        if presence is False:
            return False, []
        picked = b"".join(map(presence.__getitem__, self.slices))
        have = picked.count(1)
        if not have:
            return False, []
        before = list(accumulate(presence, initial=0))  # present values before each row
        slices = [slice(before[s.start], before[s.stop]) for s in self.slices]
        return (True if have == len(picked) else picked), slices


def _join(values: list[Any], slices: list[slice]) -> list[Any]:
    return list(chain.from_iterable(map(values.__getitem__, slices)))


def _fcol(ints: list[int], scales: list[int], lengths: list[int],
          values: Callable[[], list[float]]) -> list[Any]:
    """fcol of the chosen values, keeping each run's scale: `ints` aligned with them, a scale
    per run, `values()` the floats (only asked for when some run is raw)."""
    if ints and not (-_SCALED_LIMIT < min(ints) and max(ints) < _SCALED_LIMIT):
        scales = [-1] * len(scales)  # raw float64 holds any value exactly
    if scales and min(scales) >= 0:
        return [fast_ints(scales), fast_ints(ints, lengths), b""]
    floats = values()
    scaled: list[int] = []
    scaled_lengths: list[int] = []
    raw: list[float] = []
    start = 0
    for k, length in zip(scales, lengths):
        if k < 0:
            raw += floats[start:start + length]
        else:
            scaled += ints[start:start + length]
            scaled_lengths.append(length)
        start += length
    return [fast_ints(scales), fast_ints(scaled, scaled_lengths),
            struct.pack(f"<{len(raw)}d", *raw)]


def _battery(sel: _Selection) -> list[Any]:
    cols = sel.cols
    picked, slices = sel.present(cols.battery_presence)
    if picked is False:
        return [False, None]
    return [picked, _fcol(_join(cols.battery_ints, slices),
                          list(map(cols.battery_scales.__getitem__, sel.runs)),
                          present_lengths(picked, sel.lengths),
                          lambda: _join(cols.battery, slices))]


def _optional_ints(name: str, sel: _Selection, presence: bool | bytes, values: list[int],
                   limit: int) -> list[Any]:
    picked, slices = sel.present(presence)
    if picked is False:
        return [False, None]
    chosen = _join(values, slices)
    _check(name, chosen, limit)
    return [picked, fast_ints(chosen, present_lengths(picked, sel.lengths))]


def _tags(sel: _Selection) -> list[Any]:
    """Sections strings, contexts and runs for the chosen runs (renumbered in order)."""
    cols, runs = sel.cols, sel.runs
    old_contexts = list(map(cols.run_context.__getitem__, runs))
    renumber = {c: i for i, c in enumerate(dict.fromkeys(old_contexts))}
    contexts = list(map(cols.contexts.__getitem__, renumber))
    devices = list(map(cols.run_device.__getitem__, runs))
    # device ids sorted, then the context strings: the table order encode_body uses
    distinct = dict.fromkeys(sorted(set(devices)))
    for context in contexts:
        distinct.update((s, None) for s in context if s is not None)
    index: dict[str | None, int] = {s: i + 1 for i, s in enumerate(distinct)}
    index[None] = 0  # context fields hold string index + 1, 0 for None
    literals = [_STATIC_INDEX.get(s, s) for s in distinct]
    return [
        [literals, [], 0, []],
        [len(contexts)] + [fast_ints([index[c[f]] for c in contexts]) for f in range(6)],
        [len(runs), fast_ints([index[d] - 1 for d in devices]),
         fast_ints(list(map(renumber.__getitem__, old_contexts))), fast_ints(sel.lengths)],
    ]


def _order(sel: _Selection) -> Any:
    cols = sel.cols
    if cols.grouped:
        return None  # column order is batch order, and the rows ascend
    run_of_row = cols.run_of_row()
    positions = cols.batch_positions()
    new_run = dict(zip(sel.runs, range(len(sel.runs))))
    order = list(map(new_run.__getitem__,
                     map(run_of_row.__getitem__, sorted(sel.rows(), key=positions.__getitem__))))
    if order == sorted(order):
        return None
    return [ORDER_EXPLICIT, fast_ints(order)]


def _encode(sel: _Selection, compression: str) -> bytes:
    cols = sel.cols
    header = cols.header
    if header is None:
        raise ValueError("columns without a header: use edge.codec.scan_batch")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use one of {COMPRESSIONS}")
    ts = sel.gather(cols.ts)
    received = sel.gather(cols.received)
    _check("ts_ms", ts, TIME_LIMIT)
    _check("received_ms", received, TIME_LIMIT)
    flags = sel.gather(cols.flags)
    _check("flags", flags, 2**63)
    sections = [
        *_tags(sel),
        _order(sel),
        [TIMES_RECEIVED_RELATIVE, fast_ints(ts, sel.lengths),
         fast_ints(list(map(sub, received, ts)))],
        _fcol(sel.gather(cols.value_ints), list(map(cols.value_scales.__getitem__, sel.runs)),
              sel.lengths, lambda: sel.gather(cols.values)),
        _battery(sel),
        _optional_ints("seq", sel, cols.seq_presence, cols.seq, 2**63),
        _optional_ints("sensor_ts_ms", sel, cols.sts_presence, cols.sts_rel, 2**63),
        fast_ints(flags),
    ]
    return _frame(cols, sections, sel.count, compression)


def encode_rows(cols: Columns, rows: Sequence[int], compression: str = "none") -> bytes:
    """A frame of the readings at `rows` (ascending row indices of `cols`, not empty)."""
    rows = list(rows)
    if not rows or rows[0] < 0 or rows[-1] >= cols.n or not all(map(lt, rows, rows[1:])):
        raise ValueError("rows must be ascending row indices of the columns, at least one")
    counts = Counter(map(cols.run_of_row().__getitem__, rows))
    # segments: maximal runs of consecutive row numbers
    breaks = [i for i in range(1, len(rows)) if rows[i] != rows[i - 1] + 1]
    bounds = [0, *breaks, len(rows)]
    segments = [(rows[a], rows[b - 1] + 1) for a, b in zip(bounds, bounds[1:])]
    return _encode(_Selection(cols, segments, list(counts), list(counts.values())), compression)


class _Centred:
    """A batch column zig-zagged around one centre, as byte planes: the CENTRED icol of any
    slices of it is a join of the planes' slices (no per-value work per sub-frame)."""

    __slots__ = ("mid", "width", "planes")

    def __init__(self, xs: list[int]) -> None:
        low, high = (min(xs), max(xs)) if xs else (0, 0)
        self.mid = (low + high) // 2
        # every |x - mid| < 2**63 for int64 xs: zig-zag < 2**64, at most 8 planes
        d = list(map(sub, xs, repeat(self.mid))) if self.mid else xs
        zs = list(map(xor, map(lshift, d, repeat(1)), map(rshift, d, repeat(63))))
        self.width = (max(zs, default=0).bit_length() + 7) // 8
        self.planes = [bytes(zs) if self.width == 1 else
                       bytes(map(and_, map(rshift, zs, repeat(8 * k)), repeat(0xFF)))
                       for k in range(self.width)]

    def spec(self, slices: list[slice]) -> Any:
        if not self.width:
            return self.mid  # CONST: every value is the centre
        out = Planes(b"".join(b"".join(map(plane.__getitem__, slices))
                              for plane in self.planes))
        out.width = self.width
        return [CENTRED, self.mid, out]


class _Runs:
    """A run-wise batch column (values in runs of `lengths`, empty runs allowed) as RUNS
    pieces: each run's head, and the in-run deltas of all runs centred once."""

    __slots__ = ("heads", "deltas", "slices")

    def __init__(self, xs: list[int], lengths: list[int]) -> None:
        starts = list(accumulate(lengths[:-1], initial=0)) if lengths else []
        deltas = list(map(sub, xs[1:], xs))
        nonempty = [start for start, length in zip(starts, lengths) if length]
        for start in reversed(nonempty[1:]):
            del deltas[start - 1]  # the step from one run into the next
        if deltas and not _in_i64(min(deltas), max(deltas)):
            raise ValueError("in-run deltas outside int64")
        self.heads = [xs[start] if length else None for start, length in zip(starts, lengths)]
        self.deltas = _Centred(deltas)
        # run r's deltas follow those of the nonempty runs before it
        before = accumulate((1 if length else 0 for length in lengths), initial=0)
        self.slices = [slice(start - k, start - k + length - 1) if length else slice(0, 0)
                       for start, length, k in zip(starts, lengths, before)]

    def spec(self, runs: list[int]) -> Any:
        heads = [h for h in map(self.heads.__getitem__, runs) if h is not None]
        return [RUNS, fast_ints(heads), self.deltas.spec(list(map(self.slices.__getitem__, runs)))]


class _State:
    """What every sub-frame of one batch shares, computed on the first `encode_runs`.
    `usable` is False when some value would need the per-selection checks (a hand-made
    frame): then every sub-frame takes the general path."""

    def __init__(self, cols: Columns) -> None:
        self.usable = False
        ints_ok = all(_fits(xs, limit) for xs, limit in (
            (cols.ts, TIME_LIMIT), (cols.received, TIME_LIMIT), (cols.flags, 2**63),
            (cols.seq, 2**63), (cols.sts_rel, 2**63), (cols.value_ints, _SCALED_LIMIT),
            (cols.battery_ints, _SCALED_LIMIT)))
        if not ints_ok:
            return
        lengths = cols.lengths
        try:
            self.ts = _Runs(cols.ts, lengths)
            self.values = _Runs(cols.value_ints, lengths)
            self.battery = _Runs(cols.battery_ints,
                                 present_lengths(cols.battery_presence, lengths))
            self.seq = _Runs(cols.seq, present_lengths(cols.seq_presence, lengths))
            self.sts = _Runs(cols.sts_rel, present_lengths(cols.sts_presence, lengths))
        except ValueError:
            return
        self.rel = _Centred(list(map(sub, cols.received, cols.ts)))
        self.flags = _Centred(cols.flags)
        self.order = None if cols.grouped else cols.batch_order()
        self.usable = True


def _fits(xs: list[int], limit: int) -> bool:
    return not xs or (-limit <= min(xs) and max(xs) < limit)


def _optional(presence: bool | bytes, sel: _Selection, runs: _Runs) -> list[Any]:
    picked, _ = sel.present(presence)
    if picked is False:
        return [False, None]
    return [picked, runs.spec(sel.runs)]


def _runs_order(sel: _Selection, state: _State) -> Any:
    if state.order is None:
        return None
    chosen = bytearray(sel.cols.n_runs)
    renumber = [0] * sel.cols.n_runs
    for new, run in enumerate(sel.runs):
        chosen[run] = 1
        renumber[run] = new
    order = list(map(renumber.__getitem__, compress(state.order, map(chosen.__getitem__,
                                                                      state.order))))
    if order == sorted(order):
        return None
    return [ORDER_EXPLICIT, fast_ints(order)]


def _encode_cached(sel: _Selection, state: _State, compression: str) -> bytes | None:
    """`_encode` from the batch's shared state, or None when the selection needs the
    general path (a run of raw floats)."""
    cols = sel.cols
    value_scales = list(map(cols.value_scales.__getitem__, sel.runs))
    battery_scales = list(map(cols.battery_scales.__getitem__, sel.runs)) \
        if cols.battery_presence is not False else []
    if min(value_scales) < 0 or (battery_scales and min(battery_scales) < 0):
        return None
    battery, _ = sel.present(cols.battery_presence)
    sections = [
        *_tags(sel),
        _runs_order(sel, state),
        [TIMES_RECEIVED_RELATIVE, state.ts.spec(sel.runs), state.rel.spec(sel.slices)],
        [fast_ints(value_scales), state.values.spec(sel.runs), b""],
        [battery, None if battery is False else
         [fast_ints(battery_scales), state.battery.spec(sel.runs), b""]],
        _optional(cols.seq_presence, sel, state.seq),
        _optional(cols.sts_presence, sel, state.sts),
        state.flags.spec(sel.slices),
    ]
    return _frame(cols, sections, sel.count, compression)


def _frame(cols: Columns, sections: list[Any], count: int, compression: str) -> bytes:
    header = cols.header
    assert header is not None
    chunks = assemble(sections, _NO_EVENTS)
    data = compress_body(chunks, compression)
    return pack_header(compression=compression, gateway_id=header.gateway_id,
                       sequence=header.sequence, created_ms=header.created_ms,
                       reading_count=count, event_count=0, body=data,
                       raw_len=sum(map(len, chunks))) + data


def encode_runs(cols: Columns, runs: Sequence[int], compression: str = "none") -> bytes:
    """A frame of every reading of these runs (the same readings as `encode_rows` of their
    rows).  What all sub-frames of a batch share is computed on the first call and kept on
    `cols`, so splitting a batch into keys costs per key little more than its bytes."""
    if cols.header is None:
        raise ValueError("columns without a header: use edge.codec.scan_batch")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use one of {COMPRESSIONS}")
    chosen = sorted(set(runs))
    if not chosen or chosen[0] < 0 or chosen[-1] >= cols.n_runs:
        raise ValueError("runs must be run indices of the columns, at least one")
    lengths = list(map(cols.lengths.__getitem__, chosen))
    starts = list(map(cols.starts.__getitem__, chosen))
    sel = _Selection(cols, list(zip(starts, map(add, starts, lengths))), chosen, lengths)
    if cols.encoder_state is None:
        cols.encoder_state = _State(cols)
    if cols.encoder_state.usable:
        frame = _encode_cached(sel, cols.encoder_state, compression)
        if frame is not None:
            return frame
    return _encode(sel, compression)
