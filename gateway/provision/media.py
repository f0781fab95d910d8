"""The image being written: a copy of the operator's Raspberry Pi OS image per gateway.

`prepare_image(source, dest)` makes `dest` from `source`:

* ``*.img.xz`` — decompressed with the stdlib `lzma` module, streaming (constant memory),
  progress by compressed bytes read;
* ``*.img`` — copied in 4 MiB blocks; all-zero blocks are skipped with a seek, so the copy
  stays as sparse as the free space inside the image allows.

The result is written to `<dest>.partial` and renamed only when complete, so an interrupted
run never leaves an image that looks finished.  Raises `ProvisionError` (unreadable input,
corrupt xz data, disk full).
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path
from typing import BinaryIO

from gateway.errors import ProvisionError
from gateway.provision.progress import progress

__all__ = ["is_xz", "prepare_image"]

BLOCK = 4 * 1024 * 1024
_ZERO = bytes(BLOCK)


def is_xz(path: Path) -> bool:
    return path.suffix.lower() == ".xz"


def _write_sparse(out: BinaryIO, block: bytes) -> None:
    if block == _ZERO[: len(block)]:
        out.seek(len(block), os.SEEK_CUR)
    else:
        out.write(block)


def prepare_image(source: Path, dest: Path, *, show_progress: bool = True) -> None:
    """Write the image `source` (.img or .img.xz) to `dest` (see module docstring)."""
    partial = dest.with_name(dest.name + ".partial")
    try:
        total = source.stat().st_size
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as raw, open(partial, "wb") as out:
            if is_xz(source):
                decomp = lzma.LZMADecompressor()
                with progress(total, f"decompressing {source.name}",
                              enabled=show_progress) as update:
                    # bounded output per call: a run of zeros inflates a thousandfold
                    while not decomp.eof:
                        chunk = b""
                        if decomp.needs_input:
                            chunk = raw.read(1024 * 1024)
                            if not chunk:
                                break
                            update(len(chunk))
                        _write_sparse(out, decomp.decompress(chunk, BLOCK))
                if not decomp.eof:
                    raise ProvisionError(f"{source}: the xz data ends early (truncated "
                                         "download?)")
            else:
                with progress(total, f"copying {source.name}",
                              enabled=show_progress) as update:
                    while block := raw.read(BLOCK):
                        _write_sparse(out, block)
                        update(len(block))
            out.truncate()  # a trailing skipped block must still count in the size
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dest)
    except lzma.LZMAError as exc:
        partial.unlink(missing_ok=True)
        raise ProvisionError(f"{source}: not valid xz data: {exc}") from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ProvisionError(f"cannot write {dest} from {source}: "
                             f"{exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
