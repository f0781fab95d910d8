"""The cold store for the chart: `cloud.archive.query.query_range` (DuckDB over the Parquet
archive), off the event loop.

    archive = ArchiveReader(cfg.archive_path)
    points = await archive.aggregate("sensor-7", "temperature", start_ms, end_ms, 3_600_000)

DuckDB is synchronous, so each query runs in a worker thread; one connection is kept (queries
take turns on it) and rebuilt every `refresh_s` seconds, and whenever the archive was empty
when it was built (its view is then a placeholder that would never see new files).  A query
that fails because a file vanished under it (compaction replaced a directory's files) is
retried once on a fresh connection; any other failure is `SinkUnavailable` ("archive ...").
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from cloud.errors import SinkUnavailable

__all__ = ["ArchiveReader"]


class ArchiveReader:
    def __init__(self, root: str, *, refresh_s: float = 300.0) -> None:
        self.root = root
        self.refresh_s = refresh_s
        self._con: Any = None
        self._built = 0.0
        self._empty = True
        self._lock = threading.Lock()
        self.queries = 0
        self.failures = 0

    def _connection(self, fresh: bool = False) -> Any:
        from cloud.archive.query import connect
        from cloud.archive.store import ArchiveStore

        stale = time.monotonic() - self._built > self.refresh_s
        if fresh or self._con is None or stale or self._empty:
            if self._con is not None:
                self._con.close()
            store = ArchiveStore(self.root)
            self._con = connect(store)
            self._empty = not any(name.endswith(".parquet") for _, name, _ in store.files())
            self._built = time.monotonic()
        return self._con

    def _aggregate(self, device_id: str, measurement: str, start_ms: int, end_ms: int,
                   bucket_ms: int) -> list[list[Any]]:
        import duckdb

        from cloud.archive.query import query_range

        with self._lock:
            for attempt in (0, 1):
                try:
                    rows = query_range(self.root, device_id, start_ms, end_ms, bucket_ms,
                                       measurement=measurement,
                                       con=self._connection(fresh=attempt > 0))
                    break
                except duckdb.IOException:
                    if attempt:
                        raise
        return [[r.bucket_start_ms, r.min, r.max, r.avg, r.p95, r.count] for r in rows]

    async def aggregate(self, device_id: str, measurement: str, start_ms: int, end_ms: int,
                        bucket_ms: int) -> list[list[Any]]:
        self.queries += 1
        try:
            return await asyncio.to_thread(self._aggregate, device_id, measurement, start_ms,
                                           end_ms, bucket_ms)
        except Exception as exc:  # noqa: BLE001 - duckdb, fsspec and OS errors alike
            self.failures += 1
            raise SinkUnavailable(f"archive query failed: {type(exc).__name__}: {exc}") \
                from exc

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
