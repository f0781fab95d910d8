"""Body compression of batch frames: zstd (default), gzip (for peers without zstd), none.

Deterministic by construction, so golden fixtures can pin bytes: a fixed zstd level with the
content size written and no checksum or dictionary id (the frame has its own CRC); gzip with
mtime 0.  Identical input gives identical output for a given libzstd / zlib build.

Decompression is bounded by the `raw_len` the (already checksummed) header announces: a zstd
frame that declares any other content size, or a gzip stream that expands beyond it, is
rejected before the output is allocated.
"""

from __future__ import annotations

import gzip
import threading
import zlib

import zstandard

from edge.errors import MalformedFrame

ZSTD_LEVEL = 19
GZIP_LEVEL = 9

_local = threading.local()


def _zstd_compressor(level: int = ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    # a compressor is not safe to share between threads; one per thread and level, reused
    compressors = getattr(_local, "cctx", None)
    if compressors is None:
        compressors = _local.cctx = {}
    cctx = compressors.get(level)
    if cctx is None:
        cctx = compressors[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=False, write_dict_id=False)
    return cctx


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _zstd_blocks(groups: list[bytes], total: int, level: int) -> bytes:
    cobj = _zstd_compressor(level).compressobj(size=total)
    out = []
    for group in groups:
        out.append(cobj.compress(group))
        out.append(cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    out.append(cobj.flush())
    return b"".join(out)


def compress(chunks: list[bytes], method: str, *, zstd_level: int = ZSTD_LEVEL) -> bytes:
    """One compressed body from the concatenation of `chunks` (head, column planes, tail).

    zstd is tried two ways and the smaller kept: a block per chunk (each column plane gets
    its own entropy tables, which pays when their value distributions differ) and one block
    for all the planes (which pays when they are alike and small).  Either way the output is
    a single standard zstd frame; the choice only depends on the bytes, so it is
    deterministic.  `zstd_level`: the batch format's level by default (what the golden
    fixtures pin); `edge.codec.subframe` compresses its records at a fast level.
    """
    body = b"".join(chunks)
    if method == "zstd":
        total = len(body)
        split = _zstd_blocks(chunks, total, zstd_level)
        if len(chunks) <= 3:
            return split
        merged = _zstd_blocks([chunks[0], b"".join(chunks[1:-1]), chunks[-1]], total,
                              zstd_level)
        return merged if len(merged) < len(split) else split
    if method == "gzip":
        return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    if method == "none":
        return body
    raise ValueError(f"unknown compression {method!r}; use 'zstd', 'gzip' or 'none'")


def decompress(data: bytes, method: str, raw_len: int) -> bytes:
    """Exactly `raw_len` bytes or MalformedFrame."""
    if method == "none":
        out = data
    elif method == "zstd":
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise MalformedFrame(f"not a zstd frame: {e}") from e
        if declared != raw_len:
            raise MalformedFrame(f"zstd frame declares {declared} bytes, header says {raw_len}")
        try:
            out = _zstd_decompressor().decompress(data, max_output_size=raw_len,
                                                  allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise MalformedFrame(f"zstd body does not decompress: {e}") from e
    elif method == "gzip":
        d = zlib.decompressobj(wbits=31)
        try:
            out = d.decompress(data, raw_len + 1)
        except zlib.error as e:
            raise MalformedFrame(f"gzip body does not decompress: {e}") from e
        if not d.eof or d.unused_data or d.unconsumed_tail:
            raise MalformedFrame("gzip body is incomplete, too long or has trailing data")
    else:
        raise MalformedFrame(f"unknown compression {method!r}")
    if len(out) != raw_len:
        raise MalformedFrame(f"body is {len(out)} bytes once decompressed, header says {raw_len}")
    return out
