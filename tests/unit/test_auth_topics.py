from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.topics import (
    covers,
    matches,
    overlaps,
    split_pattern,
    valid_topic_filter,
    valid_topic_name,
)


@pytest.mark.parametrize("topic,ok", [
    ("a/b", True), ("/a", True), ("a//b", True), ("$SYS/x", True),
    ("", False), ("a/+", False), ("a/#", False), ("a\x00b", False),
])
def test_valid_topic_name(topic: str, ok: bool) -> None:
    assert valid_topic_name(topic) is ok


@pytest.mark.parametrize("flt,ok", [
    ("#", True), ("+", True), ("a/+/b", True), ("a/#", True), ("+/+", True), ("/#", True),
    ("", False), ("a/#/b", False), ("a#", False), ("a+/b", False), ("a/b+", False),
    ("##", False),
])
def test_valid_topic_filter(flt: str, ok: bool) -> None:
    assert valid_topic_filter(flt) is ok


@pytest.mark.parametrize("flt,topic,ok", [
    ("a/b", "a/b", True), ("a/b", "a/c", False),
    ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/+", "a", False), ("a/+", "a/", True),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("a/#", "b", False),
    ("#", "a/b", True), ("+/+", "/x", True),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
    ("factory/+/+/d1", "factory/a/b/d1", True), ("factory/+/+/d1", "factory/a/b/d2", False),
])
def test_matches(flt: str, topic: str, ok: bool) -> None:
    assert matches(flt, topic) is ok


@pytest.mark.parametrize("outer,inner,ok", [
    ("devices/d1/#", "devices/d1/cmd", True),
    ("devices/d1/#", "devices/d1/#", True),
    ("devices/d1/#", "devices/d1", True),
    ("devices/d1/#", "devices/+/cmd", False),
    ("devices/d1/#", "devices/#", False),
    ("devices/d1/#", "#", False),
    ("a/+", "a/b", True), ("a/+", "a/+", True), ("a/+", "a/#", False), ("a/+", "a/b/c", False),
    ("a", "a/#", False), ("#", "$SYS/#", False),
])
def test_covers(outer: str, inner: str, ok: bool) -> None:
    assert covers(outer, inner) is ok


@pytest.mark.parametrize("a,b,ok", [
    ("alerts/#", "#", True), ("alerts/#", "+/ack", True), ("alerts/#", "alerts", True),
    ("alerts/#", "factory/#", False), ("alerts/#", "+", True), ("a/+/c", "a/b/+", True),
    ("a/b", "a/b/c", False), ("alerts/#", "$SYS/#", False), ("#", "$SYS/x", False),
])
def test_overlaps(a: str, b: str, ok: bool) -> None:
    assert overlaps(a, b) is ok
    assert overlaps(b, a) is ok


def test_split_pattern() -> None:
    assert split_pattern("factory/+/+/{username}", "{username}") == ("factory/+/+/+", 3)
    assert split_pattern("devices/{username}/#", "{username}") == ("devices/+/#", 1)
    assert split_pattern("alerts/#", "{username}") == ("alerts/#", None)


_level = st.sampled_from(["a", "b", "", "$x"])
_topic = st.lists(_level, min_size=1, max_size=4).map("/".join).filter(valid_topic_name)
_flevel = st.sampled_from(["a", "b", "", "+"])
_filter = st.builds(
    lambda levels, tail: "/".join(levels + (["#"] if tail else [])),
    st.lists(_flevel, min_size=0, max_size=3), st.booleans(),
).filter(valid_topic_filter)


@given(_filter, _filter, _topic)
def test_covers_and_overlaps_agree_with_matches(a: str, b: str, topic: str) -> None:
    """covers(a, b) means every topic b matches, a matches; a topic matched by both means
    they overlap.  Checked against the matcher on random topics."""
    if covers(a, b) and matches(b, topic):
        assert matches(a, topic)
    if matches(a, topic) and matches(b, topic):
        assert overlaps(a, b)
