"""The fixed header of a batch frame (format v1) and its checksum.

    offset size  field
    0      4     magic            b"FLNK"
    4      1     version          1
    5      1     flags            bits 0-1 compression (0 none, 1 zstd, 2 gzip); bits 2-7 zero
    6      1     gateway_id_len   1..255, bytes of UTF-8
    7      1     reserved         zero
    8      8     sequence         u64, the gateway's batch sequence number
    16     8     created_ms       u64, when the gateway built the batch (ms since epoch, UTC)
    24     4     reading_count    u32
    28     4     event_count      u32
    32     4     body_len         u32, bytes of the (compressed) body that follows
    36     4     raw_len          u32, bytes of the body once decompressed
    40     4     checksum         u32, CRC-32 (zlib) of bytes 0..39 + gateway id + body
    44     n     gateway id
    44+n   m     body

All integers are big-endian.  The checksum covers every byte of the frame but itself, so a
corrupted header field is caught as surely as a corrupted body.  `magic` and `version` keep
their place in every future version, so any decoder can tell a frame it cannot read
(`UnsupportedVersion`) from bytes that are not a frame at all (`MalformedFrame`).

`unpack_header` checks in this order: magic, version, completeness (`Truncated`), checksum
(`ChecksumMismatch`), then field values (`MalformedFrame`) — so a bit flip anywhere but the
first five bytes is reported as a checksum mismatch.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from edge.errors import ChecksumMismatch, MalformedFrame, Truncated, UnsupportedVersion

MAGIC = b"FLNK"
VERSION = 1
HEADER_SIZE = 44
_FIELDS = struct.Struct(">4sBBBBQQIIIII")
_CRC_OFFSET = 40

COMPRESSIONS = ("none", "zstd", "gzip")
MAX_GATEWAY_ID_BYTES = 255
U32 = 2**32 - 1
U64 = 2**64 - 1


def batch_id(gateway_id: str, sequence: int) -> str:
    """The batch's identity across retries: `"{gateway_id}:{sequence}"`."""
    return f"{gateway_id}:{sequence}"


@dataclass(frozen=True, slots=True)
class Header:
    """What a frame says about itself, readable without decompressing the body."""

    version: int
    compression: str
    gateway_id: str
    sequence: int
    created_ms: int
    reading_count: int
    event_count: int
    body_len: int
    raw_len: int
    checksum: int

    @property
    def batch_id(self) -> str:
        return batch_id(self.gateway_id, self.sequence)

    @property
    def frame_len(self) -> int:
        return HEADER_SIZE + len(self.gateway_id.encode()) + self.body_len


def pack_header(*, compression: str, gateway_id: str, sequence: int, created_ms: int,
                reading_count: int, event_count: int, body: bytes, raw_len: int) -> bytes:
    """Header + gateway id with the checksum over them and `body` (the body is not included).

    Arguments are trusted to be in range: `edge.codec.batch` validates them first.
    """
    gw = gateway_id.encode()
    fixed = _FIELDS.pack(MAGIC, VERSION, COMPRESSIONS.index(compression), len(gw), 0,
                         sequence, created_ms, reading_count, event_count, len(body), raw_len, 0)
    crc = zlib.crc32(body, zlib.crc32(gw, zlib.crc32(fixed[:_CRC_OFFSET])))
    return fixed[:_CRC_OFFSET] + crc.to_bytes(4, "big") + gw


def unpack_header(frame: bytes, *, verify: bool = True) -> Header:
    """Parse and check the header of a whole frame.  Raises DecodeError subclasses only.

    `verify=False` skips the checksum (for diagnostics of a frame known to be damaged).
    """
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise MalformedFrame(f"a frame is bytes, not {type(frame).__name__}")
    frame = bytes(frame)
    if len(frame) < len(MAGIC):
        if MAGIC.startswith(frame):
            raise Truncated(f"frame of {len(frame)} bytes ends inside the magic")
        raise MalformedFrame("not a fieldlink batch frame (bad magic)")
    if frame[:4] != MAGIC:
        raise MalformedFrame("not a fieldlink batch frame (bad magic)")
    if len(frame) < 5:
        raise Truncated("frame ends before its version byte")
    if frame[4] != VERSION:
        raise UnsupportedVersion(f"batch format version {frame[4]} is not supported "
                                 f"(this decoder reads version {VERSION})")
    if len(frame) < HEADER_SIZE:
        raise Truncated(f"frame of {len(frame)} bytes is shorter than the "
                        f"{HEADER_SIZE}-byte header")
    (_, version, flags, gw_len, reserved, sequence, created_ms, reading_count, event_count,
     body_len, raw_len, checksum) = _FIELDS.unpack_from(frame)
    total = HEADER_SIZE + gw_len + body_len
    if len(frame) < total:
        raise Truncated(f"frame of {len(frame)} bytes is shorter than the {total} its "
                        f"header announces")
    if len(frame) > total:
        raise MalformedFrame(f"{len(frame) - total} trailing bytes after the frame")
    if verify:
        crc = zlib.crc32(frame[HEADER_SIZE:], zlib.crc32(frame[:_CRC_OFFSET]))
        if crc != checksum:
            raise ChecksumMismatch(f"checksum {crc:08x} does not match header {checksum:08x}")
    if flags & ~0x03 or (flags & 0x03) >= len(COMPRESSIONS) or reserved:
        raise MalformedFrame(f"unknown header flags {flags:#04x} / reserved byte {reserved}")
    if gw_len == 0:
        raise MalformedFrame("empty gateway id")
    try:
        gateway_id = frame[HEADER_SIZE:HEADER_SIZE + gw_len].decode()
    except UnicodeDecodeError as e:
        raise MalformedFrame("gateway id is not UTF-8") from e
    return Header(version=version, compression=COMPRESSIONS[flags & 0x03],
                  gateway_id=gateway_id, sequence=sequence, created_ms=created_ms,
                  reading_count=reading_count, event_count=event_count, body_len=body_len,
                  raw_len=raw_len, checksum=checksum)
