"""What ingest checks in a decoded batch beyond what the codec guarantees (pure).

The codec guarantees types (strings, ints, floats) and structure; ingest refuses, per item:

    reading  timestamp_out_of_range  ts_ms outside 2000-01-01 .. 2100-01-01 (edge.model)
             non_finite              value or battery_voltage NaN or infinite
             invalid_device_id       not a device id by `edge.payload.decode` rules
             invalid_quality         quality not one of good / uncertain / bad
             out_of_range            received_ms / sensor_ts_ms beyond +-2**62 ms, or seq /
                                     flags beyond int64: what `edge.codec.encode_batch`
                                     refuses, so a record could not carry the reading (only
                                     a hand-made frame decodes to one)
    event    unknown_event_kind      kind not "aggregate", "alert" or "gateway_status"
             timestamp_out_of_range, invalid_device_id as above
             invalid_key             idempotency key empty or longer than 64 bytes

A gateway validates readings before it buffers them, so a refusal means a gateway bug or a
tampered gateway: the refused items are dead-lettered, the others are accepted.  The common
case (nothing to refuse) is checked column-wise, a few C-level passes per batch:
`columns_pass(cols)` on `edge.codec.scan_batch` columns says whether every reading passes
(then no `Reading` object is needed); when it says no, `check_readings` on the decoded
readings finds which ones fail and why.  Both apply the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from edge.codec import Columns
from edge.model import MAX_TS_MS, MIN_TS_MS, Event, Quality, Reading
from edge.payload.decode import is_valid_device_id

__all__ = ["EVENT_KINDS", "check_events", "check_readings", "columns_pass"]

EVENT_KINDS = frozenset({"aggregate", "alert", "gateway_status"})
_QUALITIES = frozenset(q.value for q in Quality)
_isfinite = math.isfinite
#: what format v1 carries (edge.codec): times within +-2**62 ms, other integers int64
_TIME_LIMIT = 2**62
_INT_LIMIT = 2**63


def _within(values: Sequence[int], limit: int) -> bool:
    return not values or (-limit <= min(values) and max(values) < limit)


def _ints_carried(r: Reading) -> bool:
    return (-_TIME_LIMIT <= r.received_ms < _TIME_LIMIT
            and (r.sensor_ts_ms is None or -_TIME_LIMIT <= r.sensor_ts_ms < _TIME_LIMIT)
            and (r.seq is None or -_INT_LIMIT <= r.seq < _INT_LIMIT)
            and -_INT_LIMIT <= r.flags < _INT_LIMIT)


#: device ids known to be valid: a gateway's devices come back in every batch, and the
#: check is a regular expression per id; bounded, cleared when full
_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 200_000


def _valid_ids(ids: set[str]) -> bool:
    unknown = ids - _VALID_IDS
    if not unknown:
        return True
    if not all(map(is_valid_device_id, unknown)):
        return False
    if len(_VALID_IDS) + len(unknown) > _VALID_IDS_MAX:
        _VALID_IDS.clear()
    _VALID_IDS.update(unknown)
    return True


def columns_pass(cols: Columns) -> bool:
    """Whether every reading of `cols` passes `check_readings` (no Reading built)."""
    if not cols.n:
        return True
    ts = cols.ts
    sensor_ts = [s for s in cols.sensor_ts() if s is not None] if cols.sts_presence else []
    return (MIN_TS_MS <= min(ts) and max(ts) <= MAX_TS_MS and cols.all_finite()
            and _valid_ids(set(cols.run_device))
            and {c[5] for c in cols.contexts} <= _QUALITIES
            and _within(cols.received, _TIME_LIMIT) and _within(sensor_ts, _TIME_LIMIT)
            and _within(cols.seq, _INT_LIMIT)
            and (not any(cols.flags) or _within(cols.flags, _INT_LIMIT)))


def _reading_problem(r: Reading, bad_devices: set[str]) -> str | None:
    if not MIN_TS_MS <= r.ts_ms <= MAX_TS_MS:
        return "timestamp_out_of_range"
    if not _isfinite(r.value) or (r.battery_voltage is not None
                                  and not _isfinite(r.battery_voltage)):
        return "non_finite"
    if r.device_id in bad_devices:
        return "invalid_device_id"
    if r.quality not in _QUALITIES:
        return "invalid_quality"
    if not _ints_carried(r):
        return "out_of_range"
    return None


def check_readings(readings: Sequence[Reading]
                   ) -> tuple[list[Reading], list[Reading], list[str]]:
    """(accepted, refused, one reason per refused reading), both in batch order."""
    if not readings:
        return [], [], []
    ts = [r.ts_ms for r in readings]
    tags = {(r.device_id, r.quality) for r in readings}
    bad_devices = {d for d in {d for d, _ in tags} if not is_valid_device_id(d)}
    batteries = [r.battery_voltage for r in readings if r.battery_voltage is not None]
    # a sum is finite only if every term is (NaN and inf propagate); a finite sum that
    # overflowed merely takes the per-reading path below, which decides exactly
    if (MIN_TS_MS <= min(ts) and max(ts) <= MAX_TS_MS
            and _isfinite(sum([r.value for r in readings])) and _isfinite(sum(batteries))
            and not bad_devices and {q for _, q in tags} <= _QUALITIES
            and _within([r.received_ms for r in readings], _TIME_LIMIT)
            and _within([r.flags for r in readings], _INT_LIMIT)
            and _within([r.seq for r in readings if r.seq is not None], _INT_LIMIT)
            and _within([r.sensor_ts_ms for r in readings if r.sensor_ts_ms is not None],
                        _TIME_LIMIT)):
        return list(readings), [], []
    accepted: list[Reading] = []
    refused: list[Reading] = []
    reasons: list[str] = []
    for r in readings:
        problem = _reading_problem(r, bad_devices)
        if problem is None:
            accepted.append(r)
        else:
            refused.append(r)
            reasons.append(problem)
    return accepted, refused, reasons


def _event_problem(e: Event) -> str | None:
    if e.kind not in EVENT_KINDS:
        return "unknown_event_kind"
    if not MIN_TS_MS <= e.ts_ms <= MAX_TS_MS:
        return "timestamp_out_of_range"
    if not is_valid_device_id(e.device_id):
        return "invalid_device_id"
    if not 0 < len(e.key) <= 64:
        return "invalid_key"
    return None


def check_events(events: Sequence[Event]) -> tuple[list[Event], list[Event], list[str]]:
    """(accepted, refused, one reason per refused event), both in batch order."""
    accepted: list[Event] = []
    refused: list[Event] = []
    reasons: list[str] = []
    for e in events:
        problem = _event_problem(e)
        if problem is None:
            accepted.append(e)
        else:
            refused.append(e)
            reasons.append(problem)
    return accepted, refused, reasons
