"""Hostile serial streams (hypothesis): bytes → `LineFramer` → pipeline, as
`gateway.serialport.ingress` wires them (the frame kind decides the content type).

A stream mixes valid reading lines, noise lines (random bytes, LF-terminated), over-long
lines and a cut-off last line, read in arbitrary chunks.  Properties:

* every valid reading line is stored exactly once, whatever the chunking;
* an over-long line is never stored — dead-lettered as `oversize`;
* the cut-off rest of a stream is never stored — dead-lettered;
* every frame is either stored or dead-lettered (and counted): nothing vanishes;
* the framer never holds more than `max_line_bytes + 1` bytes between reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from edge.model import Reading
from edge.payload.decode import Limits
from edge.testing import FakeClock
from gateway.buffer import AppendResult
from gateway.ingest import Origin
from gateway.pipeline import Pipeline
from gateway.serialport.framing import FrameKind, LineFramer
from gateway.serialport.ingress import CONTENT_TYPES, PARTIAL_LINE_CONTENT_TYPE

NOW = 1_705_322_445_000
MAX_LINE = 256
FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class RecordingBuffer:
    appended: list[Reading] = field(default_factory=list)
    dead: list[tuple[bytes, str]] = field(default_factory=list)

    async def append(self, readings: Sequence[Reading], *, durable: bool = True
                     ) -> AppendResult:
        self.appended += readings
        return AppendResult(stored=len(readings))

    async def dead_letter(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                          detail: str = "", durable: bool = True) -> None:
        self.dead.append((raw, reason))


def reading_line(seq: int) -> bytes:
    return json.dumps({"device_id": "serial_dev", "device_type": "temperature",
                       "timestamp": NOW - seq, "value": 20.0 + seq % 7, "seq": seq}).encode()


segment = st.one_of(
    st.integers(0, 10**6).map(lambda n: ("reading", reading_line(n) + b"\n")),
    st.binary(max_size=60).map(lambda b: ("noise", b.replace(b"\n", b"") + b"\n")),
    st.binary(min_size=MAX_LINE + 1, max_size=3 * MAX_LINE).map(
        lambda b: ("overlong", b.replace(b"\n", b"x") + b"\n")),
    st.just(("blank", b"\r\n")),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], bytes, list[int]]:
    segments = draw(st.lists(segment, max_size=10))
    tail = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=40).map(
        lambda b: b.replace(b"\n", b""))))
    data = b"".join(s for _, s in segments) + tail
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    return segments, tail, cuts


async def _run(data: bytes, cuts: list[int]) -> tuple[RecordingBuffer, Pipeline, int, int]:
    buffer = RecordingBuffer()
    pipeline = Pipeline(buffer, limits={"serial": Limits(max_payload_bytes=MAX_LINE)},
                        clock=FakeClock(NOW))
    framer = LineFramer(MAX_LINE)
    bounds = [0, *cuts, len(data)]
    frames, held = [], 0
    for a, b in zip(bounds, bounds[1:]):
        frames += framer.feed(data[a:b])
        held = max(held, len(framer._pending))
    last = framer.flush()
    if last is not None:
        frames.append(last)
    for frame in frames:
        ctype = PARTIAL_LINE_CONTENT_TYPE if frame.kind is FrameKind.PARTIAL \
            else CONTENT_TYPES["json"]
        await pipeline.ingest(frame.data, Origin("serial", "/dev/ttyFUZZ", None,
                                                 content_type=ctype))
    return buffer, pipeline, len(frames), held


@FUZZ
@given(streams())
def test_serial_streams_store_every_complete_reading_once_and_nothing_else(
        stream: tuple[list[tuple[str, bytes]], bytes, list[int]]) -> None:
    segments, tail, cuts = stream
    data = b"".join(s for _, s in segments) + tail
    note(f"data={data!r} cuts={cuts}")
    buffer, pipeline, n_frames, held = asyncio.run(_run(data, cuts))
    want = sorted(json.loads(s)["seq"] for kind, s in segments if kind == "reading")
    got = sorted(r.seq for r in buffer.appended)
    assert got == want, "complete reading lines stored exactly once, nothing else"
    overlong = sum(1 for kind, _ in segments if kind == "overlong")
    assert sum(1 for _, reason in buffer.dead if reason == "oversize") == overlong
    if tail:
        assert buffer.dead and buffer.dead[-1][0] == tail, "a cut-off line is dead-lettered"
    stored_frames = len(want)
    assert stored_frames + len(buffer.dead) == n_frames, "every frame stored or dead-lettered"
    assert sum(pipeline.stats.rejected.values()) == len(buffer.dead)
    assert held <= MAX_LINE + 1, f"the framer held {held} bytes"
