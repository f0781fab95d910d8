"""`DeadlineWheel`: the idle deadlines of a window family, bucketed by time.

Every series with an open window has one idle deadline (see `edge.windows.windower`), and
it moves with almost every reading and every close.  A binary heap of 10,000+ entries costs
a few µs per push and per pop, twice per window close; here setting a deadline is an append
to its bucket's list and a superseded entry is skipped with one comparison when its bucket
comes up.

Buckets are `GRANULARITY_MS` wide; a deadline is filed in the bucket ending at or after it,
so a series is handed out at most that much after its deadline — never before.  A deadline
moving earlier within its bucket keeps the filed entry (arrival jitter would otherwise
re-file most series on most readings).  Series come out bucket by bucket in time order,
and within a bucket in the order they were filed.

Who calls what: only `Windower`.  An entry is live while its series' `bucket` still names
its bucket; `set` re-files, `pop_due` clears it.
"""

from __future__ import annotations

import heapq
from typing import Generic, Protocol, TypeVar

#: bucket width: idle closes come at most this late
GRANULARITY_MS = 10


class Timed(Protocol):
    #: the bucket the series' live entry is in (None: no deadline)
    bucket: int | None


T = TypeVar("T", bound=Timed)


class DeadlineWheel(Generic[T]):
    def __init__(self) -> None:
        self._buckets: dict[int, list[T]] = {}
        #: bucket ids present, a min-heap (a few thousand at most: deadlines lie within
        #: one window length plus the idle timeout)
        self._ids: list[int] = []
        #: (bucket, position of its next entry to look at) for the earliest bucket; another
        #: bucket becoming the earliest (a past deadline filed) restarts at 0 — entries
        #: already handed out are dead by then and skipped
        self._at = (0, 0)

    def __len__(self) -> int:
        """Entries filed, superseded ones included."""
        return sum(len(b) for b in self._buckets.values())

    @staticmethod
    def bucket_of(deadline_ms: int) -> int:
        return -(-deadline_ms // GRANULARITY_MS)

    def set(self, item: T, deadline_ms: int) -> int:
        """File `item` under `deadline_ms` (its previous entry, if any, becomes dead).
        Returns when it will be handed out (its bucket's end)."""
        b = -(-deadline_ms // GRANULARITY_MS)
        item.bucket = b
        entries = self._buckets.get(b)
        if entries is None:
            self._buckets[b] = [item]
            heapq.heappush(self._ids, b)
        else:
            entries.append(item)
        return b * GRANULARITY_MS

    def earliest_ms(self) -> int | None:
        """When the earliest live entry is due (its bucket's end), or None."""
        while self._ids:
            b = self._ids[0]
            entries = self._buckets[b]
            pos = self._at[1] if self._at[0] == b else 0
            while pos < len(entries) and entries[pos].bucket != b:
                pos += 1
            self._at = (b, pos)
            if pos < len(entries):
                return b * GRANULARITY_MS
            self._drop_first()
        return None

    def pop_due(self, now_ms: int) -> T | None:
        """The next live entry due at `now_ms` (its deadline cleared), or None."""
        ids = self._ids
        while ids and ids[0] * GRANULARITY_MS <= now_ms:
            b = ids[0]
            entries = self._buckets[b]
            pos = self._at[1] if self._at[0] == b else 0
            while pos < len(entries):
                item = entries[pos]
                pos += 1
                if item.bucket == b:
                    self._at = (b, pos)
                    item.bucket = None
                    return item
            self._drop_first()
        return None

    def _drop_first(self) -> None:
        del self._buckets[heapq.heappop(self._ids)]
        self._at = (0, 0)
