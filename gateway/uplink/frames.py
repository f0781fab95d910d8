"""A buffer claim <-> the frame that carries it — pure (no I/O).

The resend-identical rule: a claim is encoded once; the frame is stored with the claim
(`Buffer.set_claim_meta`) before it is first posted, and every later attempt — after a
timeout, a 503, a crash and restart — posts those same bytes under the same sequence number.
`frame_for_claim` returns the stored frame when it is one of this claim; only a claim whose
frame never reached the buffer (a crash between claim and `set_claim_meta`, so it was never
posted either) or whose stored frame is unusable is encoded again, from the same rows and the
claim's `created_ms`, which the codec turns into the same bytes.

A row the codec cannot carry (it raises `ValidationError`; the buffer validated every row
on the way in, so this means a bug, not bad sensor input) is left out of the frame and
reported in `Encoded.unencodable`, so the caller dead-letters it and the rest still goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from edge.codec import Batch, encode_batch, peek_header
from edge.errors import DecodeError, ValidationError
from edge.model import Event, Reading
from gateway.buffer import Claim

__all__ = ["Encoded", "encode_claim", "frame_for_claim", "record_bytes"]


@dataclass(frozen=True, slots=True)
class Encoded:
    frame: bytes
    readings: int
    events: int
    #: rows left out of the frame, with the codec's complaint
    unencodable: list[tuple[Reading | Event, ValidationError]] = field(default_factory=list)
    #: the frame came from the claim's stored meta (a resend), not from encoding now
    stored: bool = False


def encode_claim(claim: Claim, gateway_id: str, compression: str) -> Encoded:
    """The frame of `claim`: alerts, aggregates then readings in claim order."""
    readings, events = claim.readings, claim.events
    try:
        frame = encode_batch(Batch(gateway_id, claim.seq, claim.created_ms, readings, events),
                             compression)
        return Encoded(frame, len(readings), len(events))
    except ValidationError:
        pass
    bad: list[tuple[Reading | Event, ValidationError]] = []
    good_r: list[Reading] = []
    good_e: list[Event] = []
    for r in readings:
        err = _problem(gateway_id, claim, [r], [])
        if err is None:
            good_r.append(r)
        else:
            bad.append((r, err))
    for e in events:
        err = _problem(gateway_id, claim, [], [e])
        if err is None:
            good_e.append(e)
        else:
            bad.append((e, err))
    frame = encode_batch(Batch(gateway_id, claim.seq, claim.created_ms, good_r, good_e),
                         compression)
    return Encoded(frame, len(good_r), len(good_e), bad)


def _problem(gateway_id: str, claim: Claim, readings: list[Reading], events: list[Event]
             ) -> ValidationError | None:
    try:
        encode_batch(Batch(gateway_id, claim.seq, claim.created_ms, readings, events), "none")
    except ValidationError as e:
        return e
    return None


def frame_for_claim(claim: Claim, gateway_id: str, compression: str) -> Encoded:
    """The claim's stored frame when it is usable (same gateway, same sequence, checksum
    intact), else a fresh encoding (see the module docstring)."""
    meta = claim.meta
    if meta:
        try:
            header = peek_header(meta)
        except DecodeError:
            header = None
        if (header is not None and header.sequence == claim.seq
                and header.gateway_id == gateway_id
                and header.reading_count + header.event_count <= len(claim)):
            return Encoded(meta, header.reading_count, header.event_count, stored=True)
    return encode_claim(claim, gateway_id, compression)


def record_bytes(record: Reading | Event) -> bytes:
    """A dead-letter body for a row the codec refused: its fields as msgpack (best effort)."""
    if isinstance(record, Reading):
        fields = {name: getattr(record, name) for name in Reading.__slots__}
    else:
        fields = {"kind": record.kind, "key": record.key, "ts_ms": record.ts_ms,
                  "device_id": record.device_id, "body": record.body}
    try:
        return bytes(msgpack.packb(fields, use_bin_type=True, default=repr))
    except (TypeError, ValueError, OverflowError):
        return repr(fields).encode("utf-8", "replace")
