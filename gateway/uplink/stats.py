"""`UplinkStats`: the uplink's snapshot for /metrics (`gateway.http.metrics.UPLINK_FIELDS`),
status pages and the alert engine's gateway rule `uplink_down`.

Counters are since the process started.  Field names are the ones the metrics table maps:
`batches_sent`, `batches_failed`, `batches_rejected`, `readings_sent`, `bytes_sent`,
`retries`, `latency_ms_last`, `latency_ms_avg`, `backlog_age_ms`, `circuit_open`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["UplinkStats"]


@dataclass(frozen=True)
class UplinkStats:
    #: batches the cloud acknowledged with 200 (duplicates included)
    batches_sent: int = 0
    #: ... of which the cloud already had (`"duplicate": true`: a resend after a lost answer)
    batches_duplicate: int = 0
    #: attempts that got no usable answer or a retriable / held status (each one counted)
    batches_failed: int = 0
    #: batches the cloud refused for good (400, or 413 for a single row): dead-lettered
    #: locally and removed from the buffer
    batches_rejected: int = 0
    #: batches released after a 413 to go out again in smaller batches
    batches_split: int = 0
    #: HTTP status -> answers that were not 200 (rejections and held/retried statuses)
    rejected_by_status: dict[str, int] = field(default_factory=dict)
    #: failure reason ("timeout", "connect", "broker_unavailable", "bad_signature", ...) ->
    #: attempts
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    readings_sent: int = 0
    events_sent: int = 0
    #: readings in batches the cloud rejected (kept in the local dead letters)
    readings_rejected: int = 0
    #: rows the codec refused (dead-lettered locally, never sent)
    unencodable: int = 0
    #: bytes of every attempt (body + headers), retries included
    bytes_sent: int = 0
    #: bytes of acknowledged attempts per reading they carried (None before the first)
    bytes_per_reading: float | None = None
    #: attempts beyond a batch's first
    retries: int = 0
    #: claims found pending at start and resent (identically)
    resent_at_start: int = 0
    latency_ms_last: float | None = None
    #: exponentially weighted (alpha 0.1) over answered attempts
    latency_ms_avg: float | None = None
    #: the buffer's oldest row not yet acknowledged by the cloud, ms (None: empty)
    backlog_age_ms: int | None = None
    circuit_state: str = "closed"
    circuit_open: bool = False
    circuit_opened: int = 0
    #: seconds spent waiting on the bandwidth cap, in ms
    throttled_ms: float = 0.0
    #: wall-clock ms of the first failed attempt since the last success; None while up
    uplink_down_since_ms: int | None = None
    in_flight: int = 0
    #: rows per claim now (lowered after a 413)
    batch_max_records: int = 0
    last_status: int | None = None
    last_error: str | None = None
    #: unexpected exceptions (bugs), logged with their traceback
    internal_errors: int = 0
