"""The broker's topic space: messages, the subscription tree, retained messages.  Pure.

`TopicTree.match(topic)` returns every subscriber whose filter matches, each once, with the
highest QoS among its matching subscriptions (MQTT 3.1.1 §3.3.5: one copy per client, at the
maximum QoS of its overlapping subscriptions).  Results are cached per topic name and the
cache is dropped whenever a subscription changes — sensors publish on the same few thousand
topics all day, subscriptions change rarely.

`RetainedStore` keeps the last retained message of every topic (a zero-length retained
payload deletes it, §3.3.1.3); `dump()`/`load()` give the optional persistence its bytes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import msgpack

from gateway.auth.topics import matches
from gateway.mqtt.codec import publish_parts


class Message:
    """One application message.  Encodes its PUBLISH header once per (qos, retain, dup).

    `retain` is the publisher's RETAIN flag (True for a stored retained message replayed to a
    new subscription); `username` is the publishing client's account (None for the gateway's
    own `publish`, anonymous clients and retained replays) — e.g. who acknowledged an alert.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "username", "_topic_bytes", "_heads")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 topic_bytes: bytes | None = None, username: str | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.username = username
        self._topic_bytes = topic_bytes
        self._heads: dict[int, bytes] | None = None

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic!r}, payload={self.payload[:40]!r}, qos={self.qos}, "
                f"retain={self.retain})")

    def packet(self, qos: int, retain: bool, pid: int = 0, dup: bool = False) -> bytes:
        """The complete PUBLISH packet for one subscriber."""
        key = (qos << 2) | (retain << 1) | dup
        heads = self._heads
        if heads is None:
            heads = self._heads = {}
        head = heads.get(key)
        if head is None:
            if self._topic_bytes is None:
                self._topic_bytes = self.topic.encode()
            head = publish_parts(self._topic_bytes, self.payload, qos, retain, dup)[0]
            heads[key] = head
        if qos:
            return head + pid.to_bytes(2, "big") + self.payload
        return head + self.payload


class _Node:
    __slots__ = ("children", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subs: dict[Hashable, int] = {}


class TopicTree:
    """Subscriptions: filter → {subscriber: qos}."""

    CACHE_MAX = 65536

    def __init__(self) -> None:
        self._root = _Node()
        self._cache: dict[str, dict[Hashable, int]] = {}
        self.count = 0

    def add(self, flt: str, subscriber: Hashable, qos: int) -> bool:
        """Subscribe; True if new, False if it replaced the QoS of an existing one."""
        node = self._root
        for level in flt.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        new = subscriber not in node.subs
        node.subs[subscriber] = qos
        self.count += new
        self._cache.clear()
        return new

    def remove(self, flt: str, subscriber: Hashable) -> bool:
        path = [self._root]
        levels = flt.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        if path[-1].subs.pop(subscriber, None) is None:
            return False
        self.count -= 1
        self._cache.clear()
        for i in range(len(levels), 0, -1):  # prune empty branches
            node = path[i]
            if node.subs or node.children:
                break
            del path[i - 1].children[levels[i - 1]]
        return True

    def match(self, topic: str) -> dict[Hashable, int]:
        """{subscriber: max QoS} for topic name `topic`.  Do not mutate the result."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        out: dict[Hashable, int] = {}
        if self._root.children:
            self._collect(self._root, topic.split("/"), 0, out, topic.startswith("$"))
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._cache[topic] = out
        return out

    def _collect(self, node: _Node, levels: list[str], i: int, out: dict[Hashable, int],
                 dollar: bool) -> None:
        children = node.children
        if i == len(levels):
            _merge(out, node.subs)
            tail = children.get("#")  # `a/#` also matches `a`
            if tail is not None:
                _merge(out, tail.subs)
            return
        child = children.get(levels[i])
        if child is not None:
            self._collect(child, levels, i + 1, out, dollar)
        if i == 0 and dollar:
            return  # wildcards at the first level never match `$` topics
        child = children.get("+")
        if child is not None:
            self._collect(child, levels, i + 1, out, dollar)
        child = children.get("#")
        if child is not None:
            _merge(out, child.subs)


def _merge(out: dict[Hashable, int], subs: dict[Hashable, int]) -> None:
    for sub, qos in subs.items():
        if out.get(sub, -1) < qos:
            out[sub] = qos


class RetainedStore:
    """topic → last retained message.

    Entries are plain (payload, qos) tuples, not `Message` objects: every accepted reading
    replaces one, 10,000 times a second, and tuples of bytes and ints are not tracked by the
    cyclic garbage collector — `Message` objects would be, and their churn into the oldest
    generation triggered full collections of the whole heap (100+ ms pauses with 10,000
    connections)."""

    def __init__(self) -> None:
        self._by_topic: dict[str, tuple[bytes, int]] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self._by_topic)

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        if payload:
            self._by_topic[topic] = (payload, qos)
        else:
            self._by_topic.pop(topic, None)
        self.dirty = True

    def set(self, msg: Message) -> None:
        self.put(msg.topic, msg.payload, msg.qos)

    def get(self, topic: str) -> Message | None:
        entry = self._by_topic.get(topic)
        return None if entry is None else Message(topic, entry[0], entry[1], True)

    def matching(self, flt: str) -> Iterator[Message]:
        if "+" not in flt and "#" not in flt:
            msg = self.get(flt)
            if msg is not None:
                yield msg
            return
        for topic, (payload, qos) in list(self._by_topic.items()):
            if matches(flt, topic):
                yield Message(topic, payload, qos, True)

    def dump(self) -> bytes:
        return msgpack.packb({"format": 1, "retained": [
            [topic, payload, qos] for topic, (payload, qos) in self._by_topic.items()]})

    def load(self, data: bytes) -> int:
        """Replace the contents from `dump()` bytes; returns the number of messages."""
        obj: Any = msgpack.unpackb(data, raw=False)
        if not isinstance(obj, dict) or obj.get("format") != 1:
            raise ValueError("not a retained-message snapshot of format 1")
        self._by_topic = {
            str(topic): (bytes(payload), int(qos)) for topic, payload, qos in obj["retained"]
        }
        self.dirty = False
        return len(self._by_topic)
