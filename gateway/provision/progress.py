"""Progress bars for long provisioning steps: tqdm when installed, else a stderr percentage.

`progress(total, desc)` is a context manager yielding an `update(n)` callable.  Output goes
to stderr only, so stdout stays for results; with `enabled=False` (``--quiet``) nothing is
shown.  The fallback prints at most once per whole percent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]


@contextmanager
def progress(total: int | None, desc: str, *, enabled: bool = True
             ) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None  # type: ignore[assignment]
    if tqdm is not None:
        bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                   file=sys.stderr, leave=True, dynamic_ncols=True)
        try:
            yield bar.update
        finally:
            bar.close()
        return
    done = 0
    shown = -1

    def update(n: int) -> None:
        nonlocal done, shown
        done += n
        if total:
            pct = min(100, done * 100 // total)
            if pct != shown:
                shown = pct
                print(f"\r{desc}: {pct:3d}%", end="", file=sys.stderr, flush=True)

    try:
        yield update
    finally:
        if total:
            print(f"\r{desc}: done", file=sys.stderr, flush=True)
