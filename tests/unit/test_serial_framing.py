"""The serial line framer: ordering, chunking invariance, bounded memory, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serialport.framing import Frame, FrameKind, LineFramer


def frames_of(stream: bytes, cuts: list[int], max_line: int) -> tuple[list[Frame], LineFramer]:
    framer = LineFramer(max_line)
    out: list[Frame] = []
    last = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        out += framer.feed(stream[last:cut])
        last = cut
    rest = framer.flush()
    if rest is not None:
        out.append(rest)
    return out, framer


def test_lines_in_order_crlf_and_blank_lines() -> None:
    framer = LineFramer(100)
    frames = framer.feed(b'{"a":1}\r\n\n  \r\nx,1,2\n')
    assert frames == [Frame(b'{"a":1}'), Frame(b"x,1,2")]
    assert framer.blank_lines == 2


def test_a_line_split_across_reads_is_joined() -> None:
    framer = LineFramer(100)
    assert framer.feed(b'{"device_id":') == []
    assert framer.feed(b'"s1"') == []
    assert framer.feed(b',"value":1}\nnext') == [Frame(b'{"device_id":"s1","value":1}')]
    assert framer.flush() == Frame(b"next", FrameKind.PARTIAL)
    assert framer.flush() is None


def test_garbage_is_framed_as_is_for_the_pipeline_to_judge() -> None:
    framer = LineFramer(100)
    assert framer.feed(b"\xff\xfe\x00\x01noise\n") == [Frame(b"\xff\xfe\x00\x01noise")]


def test_overlong_line_is_cut_one_byte_over_and_the_rest_discarded() -> None:
    framer = LineFramer(8)
    frames = framer.feed(b"0123456789abcdef")
    assert frames == [Frame(b"012345678", FrameKind.OVERLONG)]
    assert framer.feed(b"more of the same line") == []
    assert framer.feed(b"...\nok\n") == [Frame(b"ok")]
    assert framer.overlong_lines == 1
    assert framer.discarded_bytes == len(b"9abcdef") + len(b"more of the same line...")


def test_a_line_of_exactly_the_limit_passes_with_lf_and_crlf() -> None:
    framer = LineFramer(4)
    assert framer.feed(b"abcd\n") == [Frame(b"abcd")]
    assert framer.feed(b"abcd\r") == []
    assert framer.feed(b"\n") == [Frame(b"abcd")]
    assert framer.feed(b"abcde\n") == [Frame(b"abcde", FrameKind.OVERLONG)]


def test_memory_stays_bounded_on_endless_noise() -> None:
    framer = LineFramer(1024)
    for _ in range(1000):
        framer.feed(b"\xaa" * 4096)
    assert len(framer._pending) <= 1024 + 1
    assert framer.overlong_lines == 1


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineFramer(0)


@settings(max_examples=300, deadline=None)
@given(stream=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b"\xff", b"  ",
                                        b"0123456789"]), max_size=60).map(b"".join),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
       max_line=st.integers(min_value=1, max_value=24))
def test_chunking_never_changes_the_frames(stream: bytes, cuts: list[int],
                                           max_line: int) -> None:
    whole, framer_whole = frames_of(stream, [], max_line)
    chunked, framer_chunked = frames_of(stream, cuts, max_line)
    assert chunked == whole
    assert framer_chunked.discarded_bytes == framer_whole.discarded_bytes
    assert framer_chunked.blank_lines == framer_whole.blank_lines
    for frame in whole:
        assert len(frame.data) <= max_line + 1
        assert b"\n" not in frame.data
