"""What the uplink does with each answer of cloud ingest — pure (the failure table of
docs/uplink.md is this module).

    status / event            action   the batch                     the link (breaker)
    200                       ACK      rows deleted (`duplicate`:    up
                                       the cloud already had it)
    400                       REJECT   the cloud dead-lettered it:   up
                                       a local dead-letter copy,
                                       then its rows are deleted
    413                       SPLIT    released; its rows go out     up
                                       again in smaller batches
    408, 429, 5xx             RETRY    resent identically after      failure
                                       backoff / Retry-After
    timeout, connection       RETRY    resent identically            failure
    error, TLS error, a 200
    that is not ingest's JSON
    401, 403, 404, 405, 415,  HOLD     kept and resent identically   failure
    other 4xx, other 2xx, 3xx          after backoff: a gateway or
                                       cloud misconfiguration (wrong
                                       secret, clock, URL) must not
                                       cost data; counted by status
                                       and logged as an error

Never is a batch deleted without either the cloud's 200 or the cloud's statement that it
kept the batch itself (400: ingest dead-letters the frame before it answers).
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Action", "Verdict", "from_error", "from_response", "parse_retry_after"]


class Action(StrEnum):
    ACK = "ack"
    REJECT = "reject"
    SPLIT = "split"
    RETRY = "retry"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    #: the HTTP status (None: no answer arrived)
    status: int | None
    #: a short label: "ok", "duplicate", the error field of ingest's answer, "timeout", ...
    reason: str
    #: seconds the cloud asked the gateway to wait (Retry-After), if it did
    retry_after_s: float | None = None
    #: the cloud answered sensibly: the link works (the breaker counts a success)
    link_ok: bool = False
    #: ingest's answer had `"duplicate": true` (the batch had been produced before)
    duplicate: bool = False
    detail: str = ""


REJECT_STATUSES = frozenset({400})
RETRY_STATUSES = frozenset({408, 429})


def parse_retry_after(value: str | None, now_ms: int) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (relative to `now_ms`).
    None when absent or unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_ms / 1000)


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, Mapping) else None


def from_response(status: int, headers: Mapping[str, str], body: Any, now_ms: int
                  ) -> Verdict:
    """The verdict on an HTTP answer; `body` is the decoded JSON answer (None if not JSON)."""
    error = _field(body, "error")
    detail = str(_field(body, "detail") or "")
    reason = str(error) if error else f"http_{status}"
    retry_after = parse_retry_after(headers.get("Retry-After"), now_ms)
    if status == 200:
        duplicate = _field(body, "duplicate") is True
        return Verdict(Action.ACK, status, "duplicate" if duplicate else "ok",
                       link_ok=True, duplicate=duplicate)
    if status in REJECT_STATUSES:
        return Verdict(Action.REJECT, status, reason, link_ok=True, detail=detail)
    if status == 413:
        return Verdict(Action.SPLIT, status, reason, link_ok=True, detail=detail)
    if status in RETRY_STATUSES or status >= 500:
        return Verdict(Action.RETRY, status, reason, retry_after_s=retry_after, detail=detail)
    return Verdict(Action.HOLD, status, reason, retry_after_s=retry_after, detail=detail)


def from_error(reason: str, detail: str = "") -> Verdict:
    """The verdict when no answer arrived (timeout, refused connection, TLS failure)."""
    return Verdict(Action.RETRY, None, reason, detail=detail)
