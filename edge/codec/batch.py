"""Batches of readings and events <-> frames of batch format v1.

Who calls what: the gateway uplink calls `encode_batch` on rows drained from its buffer; cloud
ingest calls `peek_header` (dedup by `batch_id` without decompressing) and then `scan_batch`
(the same decoder, columns instead of `Reading` objects); the sinks call `decode_batch`.  All
are pure functions, safe to call from any thread.

Guarantees
----------
* Lossless: `decode_batch(encode_batch(b)) == b`: readings and events in their original
  order, floats bit-for-bit (-0.0 stays -0.0, 0.1 + 0.2 stays 0.30000000000000004).  An int
  given for `value` / `battery_voltage` comes back as the equal float; event bodies come back
  as msgpack gives them (tuples as lists).
* Deterministic: the same batch and compression give the same bytes with the same libzstd /
  zlib (golden fixtures pin them).
* `decode_batch` and `scan_batch` raise `edge.errors.DecodeError` subclasses and nothing
  else, whatever the input, and accept exactly the same frames; sizes are checked against
  limits before anything large is allocated.
* `encode_batch` raises `edge.errors.ValidationError` subclasses for values the format
  cannot carry (wrong types, integers outside int64, a gateway id over 255 bytes, ...).

The frame is a fixed header (`edge.codec.header`) and a compressed body (`edge.codec.body`,
`edge.codec.compression`); docs/wire-format.md has the byte layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.codec.body import decode_body, encode_body
from edge.codec.columnar import Columns, decode_columns
from edge.codec.compression import compress, decompress
from edge.codec.header import (
    COMPRESSIONS,
    HEADER_SIZE,
    MAX_GATEWAY_ID_BYTES,
    U32,
    U64,
    Header,
    batch_id,
    pack_header,
    unpack_header,
)
from edge.errors import DecodeError, MalformedFrame, Oversize, ValidationError, WrongType
from edge.model import Event, Reading

# Decode limits.  Columns can describe many readings in few bytes (a steady sensor costs
# almost nothing), so no bytes-per-reading ratio can tell a bomb from a good batch: the
# reading count itself is capped, and with it the memory a frame can claim (a decoded
# Reading is ~200 bytes, so 100k readings ~ 20 MB).  Gateways keep batches below it.
DEFAULT_MAX_FRAME_BYTES = 16 * 2**20
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
DEFAULT_MAX_READINGS = 100_000
DEFAULT_MAX_EVENTS = 100_000


@dataclass(frozen=True, slots=True)
class Batch:
    """One uplink unit: readings and events of one gateway under one sequence number.

    `header` is set by `decode_batch` (compression used, format version, sizes) and ignored
    by equality.
    """

    gateway_id: str
    sequence: int
    created_ms: int
    readings: list[Reading] = field(default_factory=list, hash=False)
    events: list[Event] = field(default_factory=list, hash=False)
    header: Header | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def batch_id(self) -> str:
        return batch_id(self.gateway_id, self.sequence)


def encode_batch(batch: Batch, compression: str = "zstd") -> bytes:
    """The frame of `batch`.  `compression` is "zstd" (default), "gzip" or "none"."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use one of {COMPRESSIONS}")
    gw = batch.gateway_id
    if type(gw) is not str or not gw:
        raise WrongType("gateway_id must be a non-empty string", field="gateway_id")
    try:
        gw_bytes = gw.encode()
    except UnicodeEncodeError as e:
        raise WrongType(f"gateway_id is not valid unicode: {e.reason}",
                        field="gateway_id") from e
    if len(gw_bytes) > MAX_GATEWAY_ID_BYTES:
        raise Oversize(f"gateway_id longer than {MAX_GATEWAY_ID_BYTES} bytes",
                       field="gateway_id")
    for name, value in (("sequence", batch.sequence), ("created_ms", batch.created_ms)):
        if type(value) is not int or not 0 <= value <= U64:
            raise ValidationError(f"{name} must be an int in 0..2**64-1", field=name,
                                  reason="out_of_range", value=value)
    if len(batch.readings) > U32 or len(batch.events) > U32:
        raise Oversize("more than 2**32-1 readings or events", field="readings")
    chunks = encode_body(batch.readings, batch.events)
    raw_len = sum(map(len, chunks))
    if raw_len > U32:
        raise Oversize("batch body larger than 4 GiB", field="readings")
    data = compress(chunks, compression)
    head = pack_header(compression=compression, gateway_id=gw, sequence=batch.sequence,
                       created_ms=batch.created_ms, reading_count=len(batch.readings),
                       event_count=len(batch.events), body=data, raw_len=raw_len)
    return head + data


# --------------------------------------------------------------------------- decode


def peek_header(frame: bytes, *, verify: bool = True) -> Header:
    """The header of `frame`, checksum verified, without decompressing the body.

    Raises DecodeError subclasses only.
    """
    try:
        return unpack_header(frame, verify=verify)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile input must never escape untyped
        raise MalformedFrame(f"unreadable header: {e!r}") from e


def _body_of(frame: bytes, max_frame_bytes: int, max_body_bytes: int, max_readings: int,
             max_events: int) -> tuple[Header, bytes]:
    """The checked header and the decompressed body of `frame` (limits checked first)."""
    if len(frame) > max_frame_bytes:
        raise MalformedFrame(f"frame of {len(frame)} bytes exceeds {max_frame_bytes}",
                             reason="oversize")
    header = unpack_header(frame)
    if (header.reading_count > max_readings or header.event_count > max_events
            or header.raw_len > max_body_bytes):
        raise MalformedFrame(
            f"frame announces {header.reading_count} readings, {header.event_count} "
            f"events, {header.raw_len} body bytes: over the limits", reason="oversize")
    start = HEADER_SIZE + len(header.gateway_id.encode())
    return header, decompress(bytes(frame[start:]), header.compression, header.raw_len)


def decode_batch(frame: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_readings: int = DEFAULT_MAX_READINGS,
                 max_events: int = DEFAULT_MAX_EVENTS) -> Batch:
    """The batch in `frame`; `batch.header` tells the compression and version it came in.

    Raises DecodeError subclasses only: UnsupportedVersion, ChecksumMismatch, Truncated,
    MalformedFrame (reason "oversize" when a limit is exceeded).
    """
    try:
        header, body = _body_of(frame, max_frame_bytes, max_body_bytes, max_readings,
                                max_events)
        readings, events = decode_body(body, header.reading_count, header.event_count)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile input must never escape untyped
        raise MalformedFrame(f"undecodable batch body: {e!r}") from e
    return Batch(gateway_id=header.gateway_id, sequence=header.sequence,
                 created_ms=header.created_ms, readings=readings, events=events, header=header)


def scan_batch(frame: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_readings: int = DEFAULT_MAX_READINGS,
               max_events: int = DEFAULT_MAX_EVENTS) -> Columns:
    """The batch in `frame` as columns (`edge.codec.columnar.Columns`, `.header` set).

    Accepts exactly the frames `decode_batch` accepts (same checks, same limits, same
    DecodeError subclasses), without building a `Reading` per reading: for a reader that
    needs counts, tags, times and identities rather than objects (cloud ingest).
    `readings_of(columns)` gives what `decode_batch(frame).readings` gives.
    """
    try:
        header, body = _body_of(frame, max_frame_bytes, max_body_bytes, max_readings,
                                max_events)
        cols = decode_columns(body, header.reading_count, header.event_count)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile input must never escape untyped
        raise MalformedFrame(f"undecodable batch body: {e!r}") from e
    cols.header = header
    return cols
