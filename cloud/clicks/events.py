"""Click events: validation and normalisation of what browsers send — pure, no I/O.

Accepted event (the fields of the web event schema; anything else at the top level is
dropped)::

    {"event_id": "5b0b6f1e-...",          1-128 printable ASCII characters; the dedup key
     "user_id": "12345",                  string (or integer) 1-256 characters: the Kafka key
     "session_id": "sess_abc123",         optional, 1-256 characters
     "event_type": "click",               [A-Za-z0-9_.:-], 1-64 characters: the window key
     "timestamp": "2024-01-15T10:30:45Z", ISO 8601 with a zone (Z or +hh:mm), or epoch ms
     "properties": {...},                 optional JSON object
     "context": {"ip": ..., "user_agent": ..., "locale": ...}}   optional JSON object

`normalize(raw, now_ms=..., ...)` returns a `WebEvent` or raises `Rejected(reason, detail)`.
What is stored is already free of personal data (`cloud.clicks.pii`): PII-named keys dropped,
emails and phone numbers in values replaced, `context.ip` truncated to its network; a
`user_id`/`session_id` that is itself an email address or a phone number is replaced by an
HMAC pseudonym (or the event is rejected when no hash key is configured).

Stored record value (`WebEvent.to_json()`), key = user_id::

    {"event_id", "user_id", "session_id", "event_type", "timestamp" (ISO, UTC, ms),
     "ts_ms", "properties", "context", "source", "received_ms"}

Rejection reasons (metrics label and dead-letter header): see `REASONS`.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud.clicks.pii import (
    PiiCounts,
    TooDeep,
    hash_identifier,
    looks_like_pii,
    scrub,
    truncate_ip,
)

__all__ = ["REASONS", "Rejected", "WebEvent", "format_ts", "normalize", "parse_batch",
           "parse_timestamp", "scrubbed_copy"]

#: every reason an event or a request is refused
REASONS = ("not_an_object", "bad_event_id", "bad_user_id", "bad_session_id", "bad_event_type",
           "bad_timestamp", "timestamp_in_future", "bad_properties", "bad_context",
           "too_large", "too_deep", "pii_identifier", "bad_json", "bad_batch", "too_many_events")

_EVENT_ID = re.compile(r"[\x21-\x7e]{1,128}")
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_DEPTH = 12
_EARLIEST_MS = 946_684_800_000  # 2000-01-01: anything before is a broken clock


class Rejected(Exception):  # noqa: N818 - a verdict, not a crash
    """An event (or request) that is refused, with a reason from `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class WebEvent:
    event_id: str
    user_id: str
    session_id: str | None
    event_type: str
    ts_ms: int
    properties: dict[str, Any]
    context: dict[str, Any]
    source: str
    received_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "user_id": self.user_id,
                "session_id": self.session_id, "event_type": self.event_type,
                "timestamp": format_ts(self.ts_ms), "ts_ms": self.ts_ms,
                "properties": self.properties, "context": self.context,
                "source": self.source, "received_ms": self.received_ms}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()


def format_ts(ts_ms: int) -> str:
    """`2024-01-15T10:30:45.000Z`."""
    t = time.gmtime(ts_ms // 1000)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{ts_ms % 1000:03d}Z")


def parse_timestamp(value: Any) -> int:
    """Epoch milliseconds of an ISO 8601 string with a zone, or of an epoch-ms number."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return int(value)
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("expected an ISO 8601 string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError("the timestamp has no zone (add Z or an offset)")
    return int(round(dt.timestamp() * 1000))


def _keep_context(key: str) -> bool:
    return key in ("ip", "user_agent")


def _identifier(raw: dict[str, Any], name: str, reason: str, *, required: bool,
                hash_key: bytes | None, counts: PiiCounts) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise Rejected(reason, f"{name} is missing")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or not value.strip():
        raise Rejected(reason, f"{name} must be a non-empty string of at most 256 characters")
    if looks_like_pii(value):
        if hash_key is None:
            raise Rejected("pii_identifier", f"{name} is an email address or phone number")
        counts.keys += 1
        return hash_identifier(value, hash_key)
    return value


def normalize(raw: Any, *, source: str, now_ms: int, max_future_ms: int = 600_000,
              hash_key: bytes | None = None, counts: PiiCounts | None = None) -> WebEvent:
    """The stored form of one event, or `Rejected`.  See the module docstring."""
    counts = counts if counts is not None else PiiCounts()
    if not isinstance(raw, dict):
        raise Rejected("not_an_object", f"an event must be a JSON object, got "
                                        f"{type(raw).__name__}")
    event_id = raw.get("event_id")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise Rejected("bad_event_id", "event_id must be 1-128 printable ASCII characters")
    user_id = _identifier(raw, "user_id", "bad_user_id", required=True, hash_key=hash_key,
                          counts=counts)
    session_id = _identifier(raw, "session_id", "bad_session_id", required=False,
                             hash_key=hash_key, counts=counts)
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        raise Rejected("bad_event_type", "event_type must be 1-64 of letters, digits, _.:-")
    try:
        ts_ms = parse_timestamp(raw.get("timestamp"))
    except (ValueError, OverflowError, OSError) as e:
        raise Rejected("bad_timestamp", f"timestamp {str(raw.get('timestamp'))[:40]!r}: "
                                        f"{e}") from None
    if ts_ms < _EARLIEST_MS:
        raise Rejected("bad_timestamp", "timestamp is before 2000-01-01")
    if ts_ms > now_ms + max_future_ms:
        raise Rejected("timestamp_in_future", f"timestamp is {(ts_ms - now_ms) // 1000} s "
                                              "ahead of the collector's clock")
    properties = raw.get("properties", {})
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise Rejected("bad_properties", "properties must be a JSON object")
    context = raw.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise Rejected("bad_context", "context must be a JSON object")
    try:
        properties = scrub(properties, counts, max_depth=_MAX_DEPTH)
        context = scrub(context, counts, keep=_keep_context, max_depth=_MAX_DEPTH)
    except TooDeep:
        raise Rejected("too_deep", f"properties and context nest at most {_MAX_DEPTH} "
                                   "levels") from None
    ip = context.get("ip")
    if ip is not None:
        network = truncate_ip(ip) if isinstance(ip, str) else None
        if network is None:
            # an unparsable address could be anything: never store it
            del context["ip"]
            counts.keys += 1
        else:
            context["ip"] = network
    return WebEvent(event_id=event_id, user_id=user_id or "", session_id=session_id,
                    event_type=event_type, ts_ms=ts_ms, properties=properties,
                    context=context, source=source, received_ms=now_ms)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_batch(body: bytes, *, max_events: int) -> tuple[list[Any], str | None]:
    """The events of a `POST /v1/batch` body and its `writeKey`, or `Rejected`.

    The body is Segment's batch shape: `{"batch": [event, ...], "writeKey": "...",
    "sentAt": "..."}`; a bare JSON array of events is accepted too.
    """
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise Rejected("bad_json", f"the body is not JSON: {e}") from None
    write_key = None
    if isinstance(doc, dict):
        key = doc.get("writeKey")
        write_key = key if isinstance(key, str) else None
        doc = doc.get("batch")
    if not isinstance(doc, list):
        raise Rejected("bad_batch", 'expected {"batch": [events...]} or a JSON array')
    if len(doc) > max_events:
        raise Rejected("too_many_events", f"{len(doc)} events; at most {max_events} per batch")
    return doc, write_key


def scrubbed_copy(raw: Any) -> bytes:
    """A rejected event as JSON for the dead-letter topic, personal data removed."""
    clean = scrub(raw, keep=lambda k: k == "user_agent")
    if isinstance(clean, dict):
        ctx = clean.get("context")
        if isinstance(ctx, dict) and "ip" in ctx:
            ip = ctx["ip"]
            ctx["ip"] = truncate_ip(ip) if isinstance(ip, str) else None
    return json.dumps(clean, separators=(",", ":"), ensure_ascii=False, default=str).encode()
