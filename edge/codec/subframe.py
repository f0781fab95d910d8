"""Frames of some of a batch's readings, re-encoded from its columns (format v1).

    cols = scan_batch(frame)
    parts = encode_groups(cols, [[0, 2], [1]])      # the readings of runs 0 and 2; of run 1
    part = encode_rows(cols, rows)                  # the readings at any rows

Who calls it: cloud ingest, which splits a gateway's batch into one bus record per partition
key.  `encode_batch` would do, but it searches the smallest encoding of every column (~20 µs
per reading); this writes what the frame already holds in fixed, cheap layouts:

* every integer column (ts_ms, received_ms, seq, flags, sensor_ts_ms - ts_ms, the scaled
  integers of the floats) as RAW byte planes of the batch's values, computed once per batch
  with one C-level pass (`array` to little-endian bytes, then a strided slice per plane): a
  sub-frame's column is a join of slices of those planes, whatever rows it holds;
* floats as the frame had them: each run keeps its decimal scale and its scaled integers
  (`edge.codec.floats.decode_float_parts`), so every float comes back bit for bit without
  being checked again; raw runs stay raw float64;
* strings as literals, contexts and runs renumbered, the order section explicit (nil when
  the readings are grouped by run in batch order);
* byte strings inline, the blob table empty: hoisting them pays for zstd blocks per byte
  plane, which these frames do not use (every v1 decoder resolves blob references and takes
  bytes where they are).

Guarantees: the result is a v1 frame that `decode_batch` reads back as exactly the chosen
readings in their batch order, with the batch's gateway id, sequence and created_ms and no
events; deterministic (same columns and selection, same bytes).  `Oversize` when a column's
values span 2**64 or more (a hand-made frame; `encode_batch` never makes one); ValueError
for a selection that is not ascending rows / run indices of the columns.  Pure, no I/O.
Sizes are larger than `encode_batch`'s (planes as wide as the batch's values, not costed):
meant for a transport that compresses record batches itself (Kafka), or compressed here
(zstd at a fast level).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, lt, sub
from typing import Any

import msgpack

from edge.codec.columnar import ORDER_EXPLICIT, TIMES_ABSOLUTE, Columns
from edge.codec.columns import I64_MAX, I64_MIN, RAW, Planes
from edge.codec.compression import compress as compress_body
from edge.codec.header import COMPRESSIONS, U64, pack_header
from edge.codec.strings import STATIC
from edge.errors import Oversize

__all__ = ["encode_groups", "encode_rows", "encode_runs", "fast_ints"]

_STATIC_INDEX = {s: i for i, s in enumerate(STATIC)}
_NO_EVENTS = msgpack.packb([])
_NO_BLOBS: list[Any] = [[], b""]
_LITTLE = sys.byteorder == "little"
#: zstd level of compressed sub-frames: they are records, rewritten per batch, not uplink
_ZSTD_LEVEL = 3


# --------------------------------------------------------------------------- planes


def _planes_of(xs: Sequence[int]) -> tuple[int, list[bytes]]:
    """(low, planes): x = low + the little-endian number in the planes; all-zero top planes
    dropped.  OverflowError when the values span 2**64 or more."""
    try:
        words = array("Q", xs)  # the usual case, non-negative values: no arithmetic at all
        low = 0
    except OverflowError:
        low = min(xs)
        if not I64_MIN <= low <= U64:
            raise OverflowError("the column's minimum is no msgpack integer") from None
        words = array("Q", map(sub, xs, repeat(low)))
    if not _LITTLE:
        words.byteswap()
    buf = words.tobytes()
    planes = [buf[k::8] for k in range(8)]
    n = len(xs)
    while planes and planes[-1].count(0) == n:
        planes.pop()
    return low, planes


class _Column:
    """One integer column of the batch as RAW planes (see `_planes_of`); the RAW icol of any
    slices of it is a join of the planes' slices."""

    __slots__ = ("low", "planes")

    def __init__(self, xs: Sequence[int]) -> None:
        self.low, self.planes = _planes_of(xs)

    def spec(self, slices: list[slice]) -> Any:
        if not self.planes:
            return self.low  # CONST: every value is `low`
        out = Planes(b"".join([b"".join(map(plane.__getitem__, slices))
                               for plane in self.planes]))
        out.width = len(self.planes)
        return [RAW, self.low, out]


def fast_ints(xs: list[int], lengths: Sequence[int] | None = None) -> Any:
    """A CONST or RAW icol of int64 values `xs` (no cost search; `lengths` is ignored, kept
    so it reads like `encode_ints`).  ValueError outside int64."""
    if not xs:
        return 0
    low, high = min(xs), max(xs)
    if not (I64_MIN <= low and high <= I64_MAX):
        raise ValueError("integer column outside the signed 64-bit range")
    if low == high:
        return low
    if high - low < 256:
        planes = Planes(bytes(map(sub, xs, repeat(low))) if low else bytes(xs))
        planes.width = 1
        return [RAW, low, planes]
    return _Column(xs).spec([slice(0, len(xs))])


class _State:
    """What every sub-frame of one batch shares, built on the first call and kept on the
    columns (`Columns.encoder_state`)."""

    def __init__(self, cols: Columns) -> None:
        try:
            self.ts = _Column(cols.ts)
            self.received = _Column(cols.received)
            self.flags = _Column(cols.flags if any(cols.flags) else [])
            self.seq = _Column(cols.seq)
            self.sts = _Column(cols.sts_rel)
        except OverflowError as e:
            raise Oversize("an integer column of the batch spans 2**64 or more",
                           field="readings") from e
        self.values = _optional_column(cols.value_ints)
        self.battery = _optional_column(cols.battery_ints)
        self.before: dict[str, list[int]] = {}

    def present_before(self, field: str, presence: bytes) -> list[int]:
        """How many rows before each row have the field (cached per field)."""
        before = self.before.get(field)
        if before is None:
            before = self.before[field] = list(accumulate(presence, initial=0))
        return before


def _optional_column(xs: list[int]) -> _Column | None:
    try:
        return _Column(xs)
    except OverflowError:
        return None


def _state(cols: Columns) -> _State:
    if cols.header is None:
        raise ValueError("columns without a header: use edge.codec.scan_batch")
    if cols.encoder_state is None:
        cols.encoder_state = _State(cols)
    state: _State = cols.encoder_state
    return state


# --------------------------------------------------------------------------- selections


class _Selection:
    """The chosen rows as segments (run, start, stop), each inside one run, ascending."""

    def __init__(self, cols: Columns, segments: list[tuple[int, int, int]]) -> None:
        self.cols = cols
        self.segments = segments
        self.slices = [slice(a, b) for _, a, b in segments]
        counts: dict[int, int] = {}
        for run, a, b in segments:
            counts[run] = counts.get(run, 0) + b - a
        self.runs = list(counts)
        self.lengths = list(counts.values())
        self.count = sum(self.lengths)

    def present(self, state: _State, field: str,
                presence: bool | bytes) -> tuple[bool | bytes, list[slice]]:
        """(presence of the chosen rows, slices of the present-only values they have)."""
        if presence is True:
            return True, self.slices
        if presence is False:
            return False, []
        picked = b"".join(map(presence.__getitem__, self.slices))
        have = picked.count(1)
        if not have:
            return False, []
        before = state.present_before(field, presence)
        slices = [slice(before[s.start], before[s.stop]) for s in self.slices]
        return (True if have == len(picked) else picked), slices


def _join(values: list[Any], slices: list[slice]) -> list[Any]:
    return list(chain.from_iterable(map(values.__getitem__, slices)))


def _fcol(sel: _Selection, column: _Column | None, scales: list[int], slices: list[slice],
          values: Callable[[], list[float]]) -> list[Any]:
    """fcol of the chosen values keeping each run's scale; `slices` (one per segment) pick
    them out of the batch's (present-only) values.  Without a column (scaled integers that
    no v1 column holds: a hand-made frame) every run goes raw, float64 keeps any value."""
    if column is None:
        scales = [-1] * len(scales)
    elif min(scales) >= 0:
        return [fast_ints(scales), column.spec(slices), b""]
    run_scale = dict(zip(sel.runs, scales))
    segments = list(zip(sel.segments, slices))
    scaled = [s for (run, _, _), s in segments if run_scale[run] >= 0]
    raw = _join(values(), [s for (run, _, _), s in segments if run_scale[run] < 0])
    return [fast_ints(scales), 0 if column is None else column.spec(scaled),
            struct.pack(f"<{len(raw)}d", *raw)]


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
    if len(contexts) == 1:
        # the usual group (one production line): every context field is a constant
        context_section = [1, *map(index.__getitem__, contexts[0])]
        run_contexts: Any = 0
    else:
        context_section = [len(contexts)] + [fast_ints([index[c[f]] for c in contexts])
                                             for f in range(6)]
        run_contexts = fast_ints(list(map(renumber.__getitem__, old_contexts)))
    return [
        [literals, [], 0, []],
        context_section,
        [len(runs), fast_ints([index[d] - 1 for d in devices]), run_contexts,
         fast_ints(sel.lengths)],
    ]


def _order_spec(order: list[int] | bytes, sel: _Selection) -> Any:
    """The order section for the sub-frame's run indices in batch order (None: grouped)."""
    grouped = list(chain.from_iterable(map(repeat, range(len(sel.runs)), sel.lengths)))
    if isinstance(order, bytes):
        if order == bytes(grouped):
            return None
        planes = Planes(order)  # run indices below 256: one plane, RAW from 0
        planes.width = 1
        return [ORDER_EXPLICIT, [RAW, 0, planes]]
    return None if order == grouped else [ORDER_EXPLICIT, fast_ints(order)]


def _order_of_rows(sel: _Selection) -> Any:
    cols = sel.cols
    if cols.grouped:
        return None  # column order is batch order, and the rows ascend
    run_of_row = cols.run_of_row()
    positions = cols.batch_positions()
    new_run = dict(zip(sel.runs, range(len(sel.runs))))
    rows = chain.from_iterable(range(s.start, s.stop) for s in sel.slices)
    return _order_spec(list(map(new_run.__getitem__, map(
        run_of_row.__getitem__, sorted(rows, key=positions.__getitem__)))), sel)


def _sections(sel: _Selection, state: _State, order: Any) -> list[Any]:
    cols = sel.cols
    runs = sel.runs
    slices = sel.slices
    battery, battery_slices = sel.present(state, "battery", cols.battery_presence)
    seq, seq_slices = sel.present(state, "seq", cols.seq_presence)
    sts, sts_slices = sel.present(state, "sts", cols.sts_presence)
    return [
        *_tags(sel),
        order,
        [TIMES_ABSOLUTE, state.ts.spec(slices), state.received.spec(slices)],
        _fcol(sel, state.values, list(map(cols.value_scales.__getitem__, runs)), slices,
              lambda: cols.values),
        [battery, None if battery is False else _fcol(
            sel, state.battery, list(map(cols.battery_scales.__getitem__, runs)),
            battery_slices, lambda: cols.battery)],
        [seq, None if seq is False else state.seq.spec(seq_slices)],
        [sts, None if sts is False else state.sts.spec(sts_slices)],
        state.flags.spec(slices),
    ]


def _frame(cols: Columns, sections: list[Any], count: int, compression: str) -> bytes:
    header = cols.header
    assert header is not None
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use one of {COMPRESSIONS}")
    # byte strings stay inline (an empty blob table): a v1 decoder resolves blob references
    # and takes bytes where they are; hoisting pays for per-plane zstd blocks, not here
    body = msgpack.packb([_NO_BLOBS, *sections, _NO_EVENTS], use_bin_type=True)
    data = compress_body([body], compression, zstd_level=_ZSTD_LEVEL)
    return pack_header(compression=compression, gateway_id=header.gateway_id,
                       sequence=header.sequence, created_ms=header.created_ms,
                       reading_count=count, event_count=0, body=data,
                       raw_len=len(body)) + data


# --------------------------------------------------------------------------- public


def encode_rows(cols: Columns, rows: Sequence[int], compression: str = "none") -> bytes:
    """A frame of the readings at `rows` (ascending row indices of `cols`, not empty)."""
    rows = list(rows)
    if not rows or rows[0] < 0 or rows[-1] >= cols.n or not all(map(lt, rows, rows[1:])):
        raise ValueError("rows must be ascending row indices of the columns, at least one")
    state = _state(cols)
    run_of_row = cols.run_of_row()
    segments: list[tuple[int, int, int]] = []
    start = rows[0]
    for previous, row in zip(rows, rows[1:] + [-1]):
        # a segment ends where the rows skip one or a run ends
        if row != previous + 1 or run_of_row[row] != run_of_row[previous]:
            segments.append((run_of_row[previous], start, previous + 1))
            start = row
    sel = _Selection(cols, segments)
    return _frame(cols, _sections(sel, state, _order_of_rows(sel)), sel.count, compression)


def encode_groups(cols: Columns, groups: Sequence[Sequence[int]],
                  compression: str = "none") -> list[bytes]:
    """A frame per group of run indices, of every reading of those runs.  What the frames
    share (the batch's planes, its order) is computed once for all of them."""
    state = _state(cols)
    chosen = [sorted(set(runs)) for runs in groups]
    if any(not runs or runs[0] < 0 or runs[-1] >= cols.n_runs for runs in chosen):
        raise ValueError("groups must be non-empty lists of run indices of the columns")
    orders = _group_orders(cols, chosen)
    out = []
    for runs, order in zip(chosen, orders):
        starts = map(cols.starts.__getitem__, runs)
        stops = map(add, map(cols.starts.__getitem__, runs), map(cols.lengths.__getitem__, runs))
        sel = _Selection(cols, list(zip(runs, starts, stops)))
        out.append(_frame(cols, _sections(sel, state, None if order is None else
                                          _order_spec(order, sel)), sel.count, compression))
    return out


def encode_runs(cols: Columns, runs: Sequence[int], compression: str = "none") -> bytes:
    """A frame of every reading of these runs (`encode_groups` of one group)."""
    return encode_groups(cols, [runs], compression)[0]


def _group_orders(cols: Columns, groups: list[list[int]]) -> list[list[int] | bytes | None]:
    """Per group, the renumbered run index of each of its readings in batch order (None when
    the batch is grouped by run: so is every group)."""
    if cols.grouped:
        return [None] * len(groups)
    order = cols.batch_order()
    if cols.n_runs <= 256:
        # bytes.translate renumbers and drops the other groups' runs in one C pass
        order_bytes = bytes(order)
        out: list[list[int] | bytes | None] = []
        for runs in groups:
            table = bytearray(256)
            others = bytearray(b"\x01" * 256)
            for new, run in enumerate(runs):
                table[run] = new
                others[run] = 0
            out.append(order_bytes.translate(bytes(table), bytes(compress(range(256), others))))
        return out
    result: list[list[int] | bytes | None] = []
    for runs in groups:
        renumber = [0] * cols.n_runs
        mine = bytearray(cols.n_runs)
        for new, run in enumerate(runs):
            renumber[run] = new
            mine[run] = 1
        result.append(list(map(renumber.__getitem__,
                               compress(order, map(mine.__getitem__, order)))))
    return result

