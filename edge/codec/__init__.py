"""The batch wire codec: the only place batch bytes become readings (format v1).

    from edge.codec import Batch, encode_batch, decode_batch, peek_header

    frame = encode_batch(Batch(gateway_id="gw-1", sequence=42, created_ms=now_ms,
                               readings=readings, events=events), compression="zstd")
    header = peek_header(frame)          # checksum-verified, no decompression
    batch = decode_batch(frame)          # DecodeError subclasses only; batch.header is set
    assert batch == Batch("gw-1", 42, now_ms, readings, events)

    cols = scan_batch(frame)             # the same checks, columns instead of Reading objects
    part = encode_runs(cols, [0, 2])     # a frame of runs 0 and 2 only, without a cost search

Frames are lossless, deterministic and checksummed; the byte layout and versioning rules are
in docs/wire-format.md, the header in `edge.codec.header`, the body in `edge.codec.body`,
columns in `edge.codec.columnar`, sub-frames in `edge.codec.subframe`.
"""

from edge.codec.batch import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_EVENTS,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_READINGS,
    Batch,
    decode_batch,
    encode_batch,
    peek_header,
    scan_batch,
)
from edge.codec.body import readings_of
from edge.codec.columnar import Columns, rows_of_runs
from edge.codec.header import COMPRESSIONS, HEADER_SIZE, MAGIC, VERSION, Header, batch_id
from edge.codec.subframe import encode_groups, encode_rows, encode_runs

FORMAT_VERSION = VERSION

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_READINGS",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "Batch",
    "Columns",
    "Header",
    "batch_id",
    "decode_batch",
    "encode_batch",
    "encode_groups",
    "encode_rows",
    "encode_runs",
    "peek_header",
    "readings_of",
    "rows_of_runs",
    "scan_batch",
]
