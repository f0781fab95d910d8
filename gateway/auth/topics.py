"""MQTT 3.1.1 topic names and topic filters: validation, matching, containment, overlap.

Pure functions over `str`; the broker (`gateway.mqtt`) and the ACL (`gateway.auth.acl`) share
them so a filter means exactly the same thing to both.

Rules (MQTT 3.1.1 §4.7):

* levels are separated by `/`; empty levels are legal (`a//b`, `/a`);
* `+` matches exactly one level, `#` matches the parent level and any number of child levels
  and must be the last level; both must occupy a whole level;
* a topic *name* (what is published) contains no wildcard;
* names and filters are 1..65535 UTF-8 bytes and contain no U+0000;
* a filter starting with a wildcard does not match a topic starting with `$` (`$SYS/...`),
  so `#` never leaks broker-internal topics.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65535


def valid_topic_name(topic: str) -> bool:
    """True if `topic` may be published to (no wildcards, not empty, no NUL)."""
    return (
        0 < len(topic) <= MAX_TOPIC_BYTES
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and len(topic.encode()) <= MAX_TOPIC_BYTES
    )


def valid_topic_filter(flt: str) -> bool:
    """True if `flt` is a well-formed subscription filter."""
    if not flt or "\x00" in flt or len(flt.encode()) > MAX_TOPIC_BYTES:
        return False
    levels = flt.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def matches(flt: str, topic: str) -> bool:
    """True if topic name `topic` matches filter `flt` (both assumed valid)."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def covers(outer: str, inner: str) -> bool:
    """True if every topic matched by filter `inner` is also matched by filter `outer`.

    Used to check that a device subscribes only inside the topics it is allowed to read.
    """
    if _dollar_mismatch(outer, inner):
        return False
    o_levels = outer.split("/")
    i_levels = inner.split("/")
    for i, o in enumerate(o_levels):
        if o == "#":
            return True
        if i >= len(i_levels):
            return False
        level = i_levels[i]
        if level == "#":
            return False  # inner reaches deeper than a bounded outer
        if o == "+":
            continue
        if level == "+" or level != o:
            return False
    if len(i_levels) == len(o_levels):
        return True
    # `a/#` also matches `a`, so outer `a` does not cover it, and inner longer than outer
    # without a trailing `#` in outer is not covered either.
    return False


def overlaps(a: str, b: str) -> bool:
    """True if some topic name is matched by both filters `a` and `b`."""
    if _dollar_mismatch(a, b) or _dollar_mismatch(b, a):
        return False
    a_levels = a.split("/")
    b_levels = b.split("/")
    for i in range(max(len(a_levels), len(b_levels))):
        x = a_levels[i] if i < len(a_levels) else None
        y = b_levels[i] if i < len(b_levels) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x == "+" or y == "+" or x == y:
            continue
        return False
    return True


def _dollar_mismatch(wild: str, other: str) -> bool:
    """A filter starting with a wildcard never meets topics starting with `$`."""
    return wild[:1] in ("+", "#") and other.startswith("$")


def split_pattern(pattern: str, placeholder: str) -> tuple[str, int | None]:
    """Return (`pattern` with `placeholder` levels replaced by `+`, index of that level).

    `factory/+/+/{username}` → (`factory/+/+/+`, 3).  The index tells where a topic names
    the device; None when the pattern has no placeholder level.
    """
    levels = pattern.split("/")
    index = None
    for i, level in enumerate(levels):
        if level == placeholder:
            levels[i] = "+"
            if index is None:
                index = i
    return "/".join(levels), index
