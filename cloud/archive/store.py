"""File operations on the archive, through fsspec: a local directory, `memory://` or S3 & co.

    store = ArchiveStore("/var/lib/fieldlink/cloud/archive")   # or "s3://bucket/prefix"
    store.write_atomic("date=2024-01-15/facility=a/part-t-0-0-9.parquet", data)
    for rel_dir, names in store.partitions().items(): ...

Paths are relative to the archive root, '/'-separated.  Guarantees:

* `write_atomic(rel, data)`: readers see the old file (or none) until the new one is complete.
  Local disks: written to `<rel>.tmp`, fsynced, renamed over `rel`, the directory fsynced,
  so the file survives a power cut once the call returned.  Object stores (s3, gcs, azure):
  one PUT of the final name (atomic there; a rename would be a copy).  Other fsspec file
  systems (memory, ...): a temporary name, then `mv`.
* `rename` and `delete` are durable on return on local disks (the directory is fsynced).
* Nothing here is async: callers run it in a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cloud.archive.layout import TMP

__all__ = ["ArchiveStore"]

#: object stores: a PUT is atomic, a rename is a copy
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl"})


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArchiveStore:
    def __init__(self, url: str, **storage_options: Any) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(fs, LocalFileSystem)
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.object_store = bool(_OBJECT_STORES.intersection(protocols))

    def __repr__(self) -> str:
        return f"ArchiveStore({self.url!r})"

    def path(self, rel: str) -> str:
        """The file system path of `rel`."""
        return f"{self.root}/{rel}" if rel else self.root

    def rel(self, path: str) -> str:
        path = path.rstrip("/")
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            # some file systems return paths without the leading '/'
            stripped = prefix.lstrip("/")
            if path.startswith(stripped):
                return path[len(stripped):]
            raise ValueError(f"{path} is outside the archive root {self.root}")
        return path[len(prefix):]

    # -- reading -----------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def list_dir(self, rel_dir: str) -> list[str]:
        """Base names of the files in `rel_dir` ([] when it does not exist)."""
        try:
            entries = self.fs.ls(self.path(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e.get("type") == "file")

    def files(self) -> list[tuple[str, str, int]]:
        """Every file under the root as (relative directory, base name, size)."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            if info.get("type") != "file":
                continue
            rel = self.rel(path)
            rel_dir, _, name = rel.rpartition("/")
            out.append((rel_dir, name, int(info.get("size") or 0)))
        return sorted(out)

    def partitions(self) -> dict[str, list[str]]:
        """Relative directory -> base names of the files in it, for every directory with files."""
        out: dict[str, list[str]] = {}
        for rel_dir, name, _ in self.files():
            out.setdefault(rel_dir, []).append(name)
        return out

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def open(self, rel: str, mode: str = "rb") -> Any:
        return self.fs.open(self.path(rel), mode)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    # -- writing -----------------------------------------------------------------------------

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Publish `data` as `rel` in one step (see the module docstring)."""
        if self.object_store:
            self.fs.pipe_file(self.path(rel), data)
            return
        tmp = rel + TMP
        self.write_tmp(tmp, data)
        self.rename(tmp, rel)

    def write_tmp(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel`, durably, without any atomicity (a name readers ignore)."""
        path = self.path(rel)
        if self.local:
            directory = os.path.dirname(path)
            created = not os.path.isdir(directory)
            os.makedirs(directory, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if created:
                # the new directories' entries must survive too
                parent = directory
                while parent.startswith(self.root) and parent != self.root:
                    parent = os.path.dirname(parent)
                    _fsync_dir(parent)
            return
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        self.fs.pipe_file(path, data)

    def rename(self, src: str, dst: str) -> None:
        """Move `src` to `dst`, replacing it (atomic on local disks and memory://)."""
        a, b = self.path(src), self.path(dst)
        if self.local:
            os.replace(a, b)
            _fsync_dir(os.path.dirname(b))
            if os.path.dirname(a) != os.path.dirname(b):
                _fsync_dir(os.path.dirname(a))
            return
        self.fs.mv(a, b)

    def delete(self, rel: str, *, missing_ok: bool = True) -> None:
        path = self.path(rel)
        if self.local:
            try:
                os.unlink(path)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                return
            _fsync_dir(os.path.dirname(path))
            return
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_empty_dirs(self, rel_dir: str) -> None:
        """Remove `rel_dir` and its parents up to the root while they are empty."""
        parts = rel_dir.strip("/").split("/")
        while parts:
            path = self.path("/".join(parts))
            with contextlib.suppress(OSError, FileNotFoundError):
                if self.local:
                    os.rmdir(path)  # fails unless empty
                elif not self.fs.ls(path):
                    self.fs.rmdir(path)
            parts.pop()
