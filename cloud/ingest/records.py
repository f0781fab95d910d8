"""How an accepted batch becomes bus records (pure; docs/cloud-ingest.md, "Record format").

Readings are grouped by partition key, and each group becomes ONE record whose value is an
`edge.codec` frame holding that group's readings in their batch order, so the sinks decode
records with `edge.codec.decode_batch` like any frame and the codec stays the only place
bytes become readings.  Events are grouped the same way, keyed by their device id, into
their own topics: window aggregates and gateway status records (`gateway_status`, keyed by
the gateway id) to the aggregates topic, alerts to the alerts topic.

Partition keys (`kafka.key`):

* `facility_line` — `b"<facility>/<line>"` (`-` for a missing part); a reading with neither
  facility nor line is keyed by its device id, so untagged devices do not all pile into one
  partition.
* `device` — the device id.
* `gateway` — the gateway id: a batch is never split (a device talks to one gateway, so its
  readings still share a key); one gateway's load lands on one partition.

A device's readings therefore always share a key as long as its tags do, and one key's
records go to one partition in send order: per-device order holds end to end.

Two planners: `plan_columns` works on `edge.codec.scan_batch` columns (the ingest hot path:
a key per run, each key's readings re-encoded from the columns with `edge.codec.encode_rows`,
no `Reading` object built), `plan_records` on decoded readings (when some readings were
refused or dropped; also for tests and tools).  Their records hold the same readings under
the same keys and headers; the value bytes differ (`encode_rows` does not search the
smallest encoding), each planner being deterministic on its own.

Record frames carry the batch's own gateway id, sequence and created_ms (deterministic: a
retried batch yields byte-identical records); the Kafka headers tell the records of a batch
apart.  When the whole batch is one key's readings and nothing was dropped, the gateway's frame
itself is the record (no re-encoding).  A group whose frame would exceed `max_record_bytes` is
split into consecutive records of the same key.

Headers of every record (values are ASCII bytes):

    fl-format   codec format version of the value ("1")
    fl-gateway  gateway id
    fl-batch    batch id, "<gateway>:<sequence>"
    fl-part     "<i>/<n>": this record's place among the batch's records on the topic
    fl-count    readings (or events) in the value

Dead letters (topic `kafka.topics.deadletter`) add `fl-reason`, `fl-detail`, `fl-stage`
("frame": the value is the request body as received, possibly cut to `max_record_bytes` with
`fl-truncated` = its original length; "reading"/"event": the value is a frame of the
refused items and `fl-reasons` a JSON list of one reason per item) and `fl-source: ingest`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloud.bus.base import OutRecord
from edge.codec import (
    FORMAT_VERSION,
    Batch,
    Columns,
    Header,
    encode_batch,
    encode_groups,
    encode_rows,
    rows_of_runs,
)
from edge.model import Event, Reading

__all__ = ["KEY_MODES", "RecordPlan", "deadletter_frame", "deadletter_items",
           "key_function", "plan_columns", "plan_records"]

KEY_MODES = ("facility_line", "device", "gateway")
_FORMAT = str(FORMAT_VERSION).encode()


def _facility_line(r: Reading) -> bytes:
    if r.facility is None and r.line is None:
        return r.device_id.encode()
    return f"{r.facility or '-'}/{r.line or '-'}".encode()


def _device(r: Reading) -> bytes:
    return r.device_id.encode()


def key_function(mode: str) -> Callable[[Reading], bytes]:
    """The key of a reading (modes facility_line and device; gateway keys need the header)."""
    if mode == "facility_line":
        return _facility_line
    if mode == "device":
        return _device
    raise ValueError(f"unknown key mode {mode!r}; use one of {KEY_MODES}")


@dataclass(slots=True)
class RecordPlan:
    """The records of one batch, per destination."""

    readings: list[OutRecord] = field(default_factory=list)
    aggregates: list[OutRecord] = field(default_factory=list)
    alerts: list[OutRecord] = field(default_factory=list)
    #: whether the readings record is the gateway's frame as received
    passthrough: bool = False

    @property
    def record_count(self) -> int:
        return len(self.readings) + len(self.aggregates) + len(self.alerts)


def _group(items: Sequence[Reading] | Sequence[Event],
           key: Callable[..., bytes]) -> dict[bytes, list]:  # type: ignore[type-arg]
    groups: dict[bytes, list] = {}  # type: ignore[type-arg]
    for item in items:
        k = key(item)
        g = groups.get(k)
        if g is None:
            groups[k] = [item]
        else:
            g.append(item)
    return groups


def _frames(header: Header, readings: list[Reading], events: list[Event], compression: str,
            max_bytes: int) -> list[tuple[bytes, int]]:
    """(frame, item count) of these items, split in halves until each fits `max_bytes`."""
    frame = encode_batch(Batch(header.gateway_id, header.sequence, header.created_ms,
                               readings, events), compression)
    n = len(readings) + len(events)
    if len(frame) <= max_bytes or n <= 1:
        return [(frame, n)]
    # halves of readings-then-events: both non-empty, so the recursion ends
    h = n // 2
    e = max(0, h - len(readings))
    return (_frames(header, readings[:h], events[:e], compression, max_bytes)
            + _frames(header, readings[h:], events[e:], compression, max_bytes))


def _with_headers(header: Header, parts: list[tuple[bytes, bytes, int]]) -> list[OutRecord]:
    gw = header.gateway_id.encode()
    bid = header.batch_id.encode()
    n = len(parts)
    return [(key, value, [("fl-format", _FORMAT), ("fl-gateway", gw), ("fl-batch", bid),
                          ("fl-part", b"%d/%d" % (i, n)), ("fl-count", b"%d" % count)])
            for i, (key, value, count) in enumerate(parts, 1)]


def _group_readings(readings: list[Reading], key_mode: str,
                    gateway_id: str) -> dict[bytes, list[Reading]]:
    """Readings by partition key, each group in batch order."""
    if not readings:
        return {}
    if key_mode == "gateway":
        return {gateway_id.encode(): list(readings)}
    # the common case, a batch of one line (or one device), costs one set pass, no calls
    if key_mode == "facility_line":
        tags = {(r.facility, r.line) for r in readings}
        if len(tags) == 1 and tags != {(None, None)}:
            return {_facility_line(readings[0]): list(readings)}
    elif len({r.device_id for r in readings}) == 1:
        return {_device(readings[0]): list(readings)}
    return _group(readings, key_function(key_mode))


def plan_records(header: Header, frame: bytes, readings: list[Reading], events: list[Event],
                 *, key_mode: str = "facility_line", compression: str = "none",
                 max_record_bytes: int = 512 * 1024, unchanged: bool = False) -> RecordPlan:
    """The records for the accepted `readings` and `events` of the batch `header`/`frame`.

    `unchanged`: the readings and events are exactly those of `frame` (nothing dropped or
    refused), so a frame of readings of a single key may be forwarded as it is.
    """
    plan = RecordPlan()
    groups = _group_readings(readings, key_mode, header.gateway_id)
    if (unchanged and not events and len(groups) == 1 and len(frame) <= max_record_bytes):
        (key,) = groups
        plan.readings = _with_headers(header, [(key, frame, len(readings))])
        plan.passthrough = True
    elif groups:
        parts = [(key, value, count) for key, group in groups.items()
                 for value, count in _frames(header, group, [], compression, max_record_bytes)]
        plan.readings = _with_headers(header, parts)
    _plan_events(plan, header, events, compression, max_record_bytes)
    return plan


def _plan_events(plan: RecordPlan, header: Header, events: list[Event], compression: str,
                 max_record_bytes: int) -> None:
    for kinds, target in ((("aggregate", "gateway_status"), plan.aggregates),
                          (("alert",), plan.alerts)):
        chosen = [e for e in events if e.kind in kinds]
        if not chosen:
            continue
        by_device = _group(chosen, lambda e: e.device_id.encode())
        parts = [(key, value, count) for key, group in by_device.items()
                 for value, count in _frames(header, [], group, compression, max_record_bytes)]
        target.extend(_with_headers(header, parts))


def _run_groups(cols: Columns, key_mode: str) -> dict[bytes, list[int]]:
    """Runs by partition key (a run is one series: one device, one set of tags)."""
    header = cols.header
    assert header is not None
    if key_mode == "gateway":
        return {header.gateway_id.encode(): list(range(cols.n_runs))}
    if key_mode == "device":
        keys = [d.encode() for d in cols.run_device]
    elif key_mode == "facility_line":
        tags = [None if c[2] is None and c[3] is None else f"{c[2] or '-'}/{c[3] or '-'}"
                for c in cols.contexts]
        keys = [(device if tag is None else tag).encode()
                for device, tag in zip(cols.run_device, map(tags.__getitem__, cols.run_context))]
    else:
        raise ValueError(f"unknown key mode {key_mode!r}; use one of {KEY_MODES}")
    groups: dict[bytes, list[int]] = {}
    for run, key in enumerate(keys):
        groups.setdefault(key, []).append(run)
    return groups


def _row_frames(cols: Columns, rows: list[int], compression: str,
                max_bytes: int) -> list[tuple[bytes, int]]:
    """(frame, reading count) of these rows, split in halves (batch order) until each fits."""
    frame = encode_rows(cols, rows, compression)
    if len(frame) <= max_bytes or len(rows) <= 1:
        return [(frame, len(rows))]
    in_batch_order = sorted(rows, key=cols.batch_positions().__getitem__)
    h = len(rows) // 2
    return (_row_frames(cols, sorted(in_batch_order[:h]), compression, max_bytes)
            + _row_frames(cols, sorted(in_batch_order[h:]), compression, max_bytes))


def plan_columns(cols: Columns, frame: bytes, events: list[Event], *,
                 key_mode: str = "facility_line", compression: str = "none",
                 max_record_bytes: int = 512 * 1024, unchanged: bool = False) -> RecordPlan:
    """The records for every reading of `cols` (the columns of `frame`) and `events`.

    `unchanged`: `events` are all of the frame's events (none refused), so a frame of
    readings of a single key may be forwarded as it is.  Raises `edge.errors.Oversize` for
    a reading format v1 cannot carry (`cloud.ingest.validate.columns_pass` refuses those).
    """
    header = cols.header
    if header is None:
        raise ValueError("columns without a header: use edge.codec.scan_batch")
    plan = RecordPlan()
    groups = _run_groups(cols, key_mode) if cols.n else {}
    if (unchanged and not events and len(groups) == 1 and len(frame) <= max_record_bytes):
        (key,) = groups
        plan.readings = _with_headers(header, [(key, frame, cols.n)])
        plan.passthrough = True
    elif groups:
        parts: list[tuple[bytes, bytes, int]] = []
        frames = encode_groups(cols, list(groups.values()), compression)
        for (key, runs), value in zip(groups.items(), frames):
            if len(value) <= max_record_bytes:
                parts.append((key, value, sum(map(cols.lengths.__getitem__, runs))))
            else:
                parts += [(key, v, count) for v, count in _row_frames(
                    cols, rows_of_runs(cols, runs), compression, max_record_bytes)]
        plan.readings = _with_headers(header, parts)
    _plan_events(plan, header, events, compression, max_record_bytes)
    return plan


def deadletter_frame(body: bytes, *, reason: str, detail: str, gateway_id: str,
                     batch_id: str | None, max_record_bytes: int) -> OutRecord:
    """A dead letter holding the request body as received (cut to `max_record_bytes`)."""
    headers = [("fl-source", b"ingest"), ("fl-stage", b"frame"),
               ("fl-reason", reason.encode()), ("fl-detail", detail[:1000].encode()),
               ("fl-gateway", gateway_id.encode())]
    if batch_id is not None:
        headers.append(("fl-batch", batch_id.encode()))
    value = body
    if len(body) > max_record_bytes:
        value = body[:max_record_bytes]
        headers.append(("fl-truncated", str(len(body)).encode()))
    return (gateway_id.encode(), value, headers)


def deadletter_items(header: Header, body: bytes, readings: list[Reading],
                     events: list[Event], reasons: list[str], *, detail: str,
                     compression: str, max_record_bytes: int) -> list[OutRecord]:
    """Dead letters holding refused readings/events as frames, with one reason per item.

    If they cannot be encoded (the reason they were refused may be a value the codec cannot
    carry), the whole request body is dead-lettered instead, so nothing is lost.
    """
    stage = b"reading" if readings else b"event"
    try:
        frames = _frames(header, readings, events, compression, max_record_bytes)
    except Exception:  # noqa: BLE001 - fall back to the body as received
        return [deadletter_frame(body, reason=reasons[0] if reasons else "invalid",
                                 detail=detail, gateway_id=header.gateway_id,
                                 batch_id=header.batch_id, max_record_bytes=max_record_bytes)]
    out: list[OutRecord] = []
    start = 0
    summary = ",".join(sorted(set(reasons)))
    for value, count in frames:
        out.append((header.gateway_id.encode(), value, [
            ("fl-source", b"ingest"), ("fl-stage", stage), ("fl-reason", summary.encode()),
            ("fl-detail", detail[:1000].encode()), ("fl-format", _FORMAT),
            ("fl-gateway", header.gateway_id.encode()),
            ("fl-batch", header.batch_id.encode()), ("fl-count", b"%d" % count),
            ("fl-reasons", json.dumps(reasons[start:start + count]).encode())]))
        start += count
    return out
