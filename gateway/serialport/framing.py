"""Bytes from a serial port → line frames.  Pure: fed chunks, returns frames, no I/O.

Guarantees:

* Frames come out in stream order, and the same byte stream gives the same frames however
  it is chunked (a line split across reads is joined).
* A line ends at LF; one trailing CR is removed (CRLF devices).  Blank lines are skipped and
  counted (devices send them as keep-alives).  Anything else — non-UTF-8 bytes, binary
  noise — is framed as-is: judging it is the pipeline's job, which dead-letters it.
* Memory is bounded by `max_line_bytes`: a line longer than that is cut, its first
  `max_line_bytes + 1` bytes become an `overlong` frame (one byte over the limit, so a
  pipeline whose payload limit is `max_line_bytes` or less refuses it as `oversize` rather
  than decode a truncated reading), and the rest of it up to the next LF is discarded and
  counted in `discarded_bytes`.
* `flush()` returns what is left without an LF (the port went away mid-line) as a
  `partial` frame; it is incomplete by definition, so the caller must not let it be decoded
  as a reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FrameKind(StrEnum):
    LINE = "line"
    OVERLONG = "overlong"
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    kind: FrameKind = FrameKind.LINE


class LineFramer:
    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()
        #: inside an overlong line: drop bytes until the next LF
        self._skipping = False
        self.blank_lines = 0
        self.overlong_lines = 0
        self.discarded_bytes = 0

    def feed(self, chunk: bytes) -> list[Frame]:
        frames: list[Frame] = []
        start = 0
        size = len(chunk)
        while start < size:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:], frames)
                break
            piece = chunk[start:end]
            start = end + 1
            if self._skipping:
                self.discarded_bytes += len(piece)
                self._skipping = False
                continue
            if self._pending:
                self._pending += piece
                line = bytes(self._pending)
                self._pending.clear()
            else:
                line = bytes(piece)
            self._emit(line, frames)
        return frames

    def flush(self) -> Frame | None:
        """The unterminated rest of the stream (call when the port is gone), if any."""
        self._skipping = False
        if not self._pending:
            return None
        data = bytes(self._pending)
        self._pending.clear()
        return Frame(data, FrameKind.PARTIAL)

    def _keep(self, tail: bytes, frames: list[Frame]) -> None:
        if self._skipping:
            self.discarded_bytes += len(tail)
            return
        self._pending += tail
        # one byte of slack for a CR that may precede the LF still to come, so a line of
        # exactly max_line_bytes + CRLF is framed the same however it was chunked
        if len(self._pending) > self.max_line_bytes + 1:
            cut = self.max_line_bytes + 1
            frames.append(Frame(bytes(self._pending[:cut]), FrameKind.OVERLONG))
            self.overlong_lines += 1
            self.discarded_bytes += len(self._pending) - cut
            self._pending.clear()
            self._skipping = True

    def _emit(self, raw: bytes, frames: list[Frame]) -> None:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > self.max_line_bytes:
            cut = self.max_line_bytes + 1
            frames.append(Frame(line[:cut], FrameKind.OVERLONG))
            self.overlong_lines += 1
            self.discarded_bytes += len(raw) - cut
            return
        if not line.strip(b" \t\r"):
            self.blank_lines += 1
            return
        frames.append(Frame(line))
