"""Subscription tree, retained store and per-client sessions (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.mqtt.broker import Counters
from gateway.mqtt.router import Message, RetainedStore, TopicTree
from gateway.mqtt.session import Session


def test_tree_matches_with_wildcards_and_max_qos() -> None:
    tree = TopicTree()
    tree.add("factory/#", "a", 0)
    tree.add("factory/+/+/d1", "a", 1)
    tree.add("factory/+/line1/+", "b", 1)
    tree.add("#", "c", 0)
    tree.add("$SYS/#", "d", 0)
    assert tree.match("factory/p/line1/d1") == {"a": 1, "b": 1, "c": 0}
    assert tree.match("factory/p/line2/d2") == {"a": 0, "c": 0}
    assert tree.match("factory") == {"a": 0, "c": 0}  # `factory/#` matches its parent
    assert tree.match("$SYS/x") == {"d": 0}  # `#` does not see $ topics
    assert tree.count == 5


def test_tree_replace_remove_and_cache_invalidation() -> None:
    tree = TopicTree()
    assert tree.add("a/b", "s", 0) is True
    assert tree.match("a/b") == {"s": 0}
    assert tree.add("a/b", "s", 1) is False  # replaced, QoS updated
    assert tree.match("a/b") == {"s": 1}
    assert tree.remove("a/b", "s") is True
    assert tree.remove("a/b", "s") is False
    assert tree.match("a/b") == {}
    assert tree.count == 0
    assert not tree._root.children  # empty branches pruned


def test_retained_store() -> None:
    store = RetainedStore()
    store.set(Message("a/1", b"x", 1, True))
    store.set(Message("a/2", b"y", 0, True))
    store.set(Message("b", b"z", 0, True))
    assert sorted(m.topic for m in store.matching("a/+")) == ["a/1", "a/2"]
    assert [m.payload for m in store.matching("b")] == [b"z"]
    store.set(Message("a/1", b"", 0, True))  # empty retained payload deletes
    assert [m.topic for m in store.matching("a/#")] == ["a/2"]
    copy = RetainedStore()
    assert copy.load(store.dump()) == 2
    assert copy.get("b") is not None and copy.get("b").payload == b"z"  # type: ignore[union-attr]


def test_message_packet_encoding_is_cached_per_flags() -> None:
    msg = Message("t", b"p", 1)
    assert msg.packet(0, False) == b"\x30\x04\x00\x01tp"
    assert msg.packet(1, True, 9) == b"\x33\x06\x00\x01t\x00\x09p"
    assert msg.packet(1, False, 10, dup=True) == b"\x3a\x06\x00\x01t\x00\x0ap"


@dataclass
class FakeConn:
    write_paused: bool = False
    sent: list[bytes] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def _session(**kw: int) -> tuple[Session, Counters, FakeConn]:
    counters = Counters()
    session = Session("c", clean=False, counters=counters, **kw)
    conn = FakeConn()
    session.resume(conn)
    return session, counters, conn


def test_session_qos1_window_queue_and_ack() -> None:
    session, counters, conn = _session(max_inflight=2, max_queued=3)
    for i in range(4):
        session.deliver(Message("t", bytes([i]), 1), 1)
    assert len(conn.sent) == 2 and len(session.queue) == 2
    session.acked(1)
    assert len(conn.sent) == 3
    assert session.acked(99) is False
    assert counters.messages_out == 3


def test_session_queue_bound_drops_oldest() -> None:
    session, counters, conn = _session(max_inflight=1, max_queued=2)
    for i in range(5):
        session.deliver(Message("t", bytes([i]), 1), 1)
    assert [m.payload for m, _ in session.queue] == [b"\x03", b"\x04"]
    assert counters.dropped_queue_full == 2


def test_session_slow_consumer_drops_qos0_queues_qos1() -> None:
    session, counters, conn = _session()
    conn.write_paused = True
    session.deliver(Message("t", b"0", 0), 0)
    session.deliver(Message("t", b"1", 1), 1)
    assert conn.sent == [] and counters.dropped_slow == 1 and len(session.queue) == 1
    conn.write_paused = False
    session.drain()
    assert len(conn.sent) == 1


def test_session_redelivers_unacked_with_dup_in_order_on_reconnect() -> None:
    session, _, conn = _session(max_inflight=10)
    session.deliver(Message("t", b"a", 1), 1)
    session.deliver(Message("t", b"b", 1), 1)
    session.acked(1)
    session.conn = None  # client went away
    session.deliver(Message("t", b"c", 1), 1)  # queued while offline
    session.deliver(Message("t", b"q0", 0), 0)  # QoS 0 is not queued for offline clients
    fresh = FakeConn()
    session.resume(fresh)
    assert fresh.sent[0] == Message("t", b"b", 1).packet(1, False, 2, dup=True)
    assert fresh.sent[1] == Message("t", b"c", 1).packet(1, False, 3)
    assert len(fresh.sent) == 2
