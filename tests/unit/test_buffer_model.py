"""Model-based test: random sequences of appends (with duplicates), events, claims, acks,
releases, restarts and cap-forcing bursts, run against the real buffer core on a real file and
against an in-memory reference model.  The buffer's invariants are checked after every step.

The store is driven through `writer.execute_group`, the function the writer thread runs for
each group commit, so several callers' appends share one transaction as in production.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from edge.model import Event, Priority, Reading
from edge.testing import FakeClock
from gateway.buffer import BufferSettings, Eviction, Store, claims
from gateway.buffer.results import AppendResult, Claim
from gateway.buffer.writer import AppendOp, CallOp, Op, execute_group

T0 = 1_705_322_445_000
MAX_BYTES = 256 * 1024
CLASS = {Priority.RAW: "raw", Priority.AGGREGATE: "aggregate", Priority.ALERT: "alert"}


def reading(i: int, rx: int) -> Reading:
    return Reading(device_id=f"sensor_{i % 7}", ts_ms=T0 + i, value=float(i % 13), seq=i,
                   unit="celsius", facility="factory_a", line=str(i % 3), zone="assembly",
                   received_ms=rx)


def make_event(i: int, kind: str) -> Event:
    return Event(kind=kind, key=f"{kind}-{i}".encode().ljust(16, b"."), ts_ms=T0 + i,
                 device_id=f"sensor_{i % 7}", body={"i": i, "pad": "p" * 30})


@dataclass
class Row:
    cls: Priority
    order: int  # insertion order, which is the store's id order
    claim: int | None = None


@dataclass
class Model:
    rows: dict[bytes, Row] = field(default_factory=dict)
    claims: dict[int, set[bytes]] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    order: int = 0
    last_seq: int = 0
    appended: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS.values(), 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS.values(), 0))
    acked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS.values(), 0))
    evicted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS.values(), 0))

    def unclaimed(self, cls: Priority) -> list[bytes]:
        return sorted((k for k, r in self.rows.items() if r.cls == cls and r.claim is None),
                      key=lambda k: self.rows[k].order)


class BufferMachine(RuleBasedStateMachine):
    claims_bundle = Bundle("claims")
    eviction = Eviction.OLDEST_FIRST

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock(wall_ms=T0)
        self.settings = BufferSettings(
            path=os.path.join(self.dir.name, "b.db"), max_bytes=MAX_BYTES,
            eviction=self.eviction, dedup_horizon_s=1e9, dedup_max_keys=10**9,
            check_at_open=False)
        self.store = Store.open(self.settings, self.clock)
        self.model = Model()
        self.fresh = 100_000
        self.seen_pruned = False

    def teardown(self) -> None:
        self.store.close(checkpoint=False)
        self.dir.cleanup()

    # -- helpers -------------------------------------------------------------------------------
    def run_ops(self, ops: list[Op]) -> None:
        assert execute_group(self.store, ops, self.clock.now_ms())
        for op in ops:
            assert op.error is None, op.error

    def present(self) -> dict[bytes, Priority]:
        conn = self.store.conn
        out = {bytes(dk[6:]): Priority.RAW for (dk,) in conn.execute("SELECT dk FROM readings")}
        out.update({bytes(dk[6:]): Priority(p) for dk, p in
                    conn.execute("SELECT dk, prio FROM events")})
        return out

    def settle(self, pre_unclaimed_raw: set[bytes], cls: Priority, *,
               raw_step: bool) -> set[bytes]:
        """Take the rows this step stored into the model (in id order); rows the store no
        longer has were evicted: check the policy allowed it.  Returns the new keys."""
        m = self.model
        present = self.present()
        new = {k for k in present if k not in m.rows}
        for k in new:
            assert present[k] == cls
            assert k not in m.seen or self.seen_pruned, "an already-sent key was stored again"
        table = "readings" if cls == Priority.RAW else "events"
        for k in sorted(new, key=lambda k: self._row_id(table, k)):
            m.rows[k] = Row(cls, m.order)
            m.order += 1
        gone = [k for k in m.rows if k not in present]
        for k in gone:
            row = m.rows[k]
            assert row.claim is None, "a claimed row was evicted"
            assert row.cls != Priority.ALERT, "an alert was evicted"
        evicted_raw = [k for k in gone if m.rows[k].cls == Priority.RAW]
        evicted_agg = [k for k in gone if m.rows[k].cls == Priority.AGGREGATE]
        survivors = pre_unclaimed_raw - set(gone)
        if evicted_raw and survivors:
            if self.settings.eviction == Eviction.OLDEST_FIRST:
                newest_gone = max(m.rows[k].order for k in evicted_raw)
                oldest_left = min(m.rows[k].order for k in survivors)
                assert newest_gone < oldest_left, "raw readings were not evicted oldest first"
            else:
                oldest_gone = min(m.rows[k].order for k in evicted_raw)
                newest_left = max(m.rows[k].order for k in survivors)
                assert oldest_gone > newest_left, "raw readings were not evicted newest first"
        if evicted_agg:
            assert not raw_step, "a raw reading pushed out an aggregate"
            assert not survivors, "an aggregate was evicted while raw readings were left"
        for k in gone:
            event(f"evicted {CLASS[m.rows[k].cls]}")
            m.evicted[CLASS[m.rows[k].cls]] += 1
            del m.rows[k]
        return new

    def _row_id(self, table: str, key: bytes) -> int:
        row = self.store.conn.execute(f"SELECT id FROM {table} WHERE substr(dk, 7) = ?",
                                      (key,)).fetchone()
        return int(row[0])

    def check_results(self, ops: list[Op], keys_per_op: list[list[bytes]], new: set[bytes],
                      cls: Priority) -> None:
        """Each caller's answer: the first delivery of a new key is stored, the rest are
        duplicates; a refused caller got nothing stored."""
        m = self.model
        unattributed = set(new)
        for op, keys in zip(ops, keys_per_op):
            res: AppendResult = op.result
            if res.refused:
                event(f"refused {CLASS[cls]}")
                assert res.refused_reason == "buffer_full"
                assert (res.refused, res.stored, res.duplicates) == (len(keys), 0, 0)
                continue
            stored = 0
            for k in keys:
                if k in unattributed:
                    unattributed.discard(k)
                    stored += 1
            assert (res.stored, res.duplicates) == (stored, len(keys) - stored), (res, stored)
            m.appended[CLASS[cls]] += res.stored
            m.duplicates[CLASS[cls]] += res.duplicates
        assert not unattributed

    # -- rules -----------------------------------------------------------------------------------
    @rule(batches=st.lists(st.lists(st.integers(0, 400), min_size=1, max_size=12),
                           min_size=1, max_size=4))
    def append(self, batches: list[list[int]]) -> None:
        self._append_raw([[reading(i, self.clock.now_ms()) for i in b] for b in batches])

    @rule(n=st.integers(300, 900))
    def burst(self, n: int) -> None:
        """Fresh readings, enough to push the buffer against its cap."""
        batch = [reading(self.fresh + k, self.clock.now_ms()) for k in range(n)]
        self.fresh += n
        self._append_raw([batch])

    def _append_raw(self, batches: list[list[Reading]]) -> None:
        pre = set(self.model.unclaimed(Priority.RAW))
        ops = [AppendOp(n=len(b), readings=b) for b in batches]
        self.run_ops(list(ops))
        new = self.settle(pre, Priority.RAW, raw_step=True)
        self.check_results(list(ops), [[r.idempotency_key() for r in b] for b in batches],
                           new, Priority.RAW)

    @rule(kind=st.sampled_from(["aggregate", "alert"]),
          idx=st.lists(st.integers(0, 60), min_size=1, max_size=6))
    def append_events(self, kind: str, idx: list[int]) -> None:
        self._append_events([make_event(i, kind) for i in idx], kind)

    @rule(kind=st.sampled_from(["aggregate", "aggregate", "alert"]), n=st.integers(50, 400))
    def event_burst(self, kind: str, n: int) -> None:
        """Fresh aggregates or alerts, enough to crowd out raw readings (and each other)."""
        self._append_events([make_event(self.fresh + k, kind) for k in range(n)], kind)
        self.fresh += n

    def _append_events(self, events: list[Event], kind: str) -> None:
        pre = set(self.model.unclaimed(Priority.RAW))
        op = CallOp(fn=lambda s, now: s.insert_events(events, now))
        self.run_ops([op])
        cls = Priority.ALERT if kind == "alert" else Priority.AGGREGATE
        new = self.settle(pre, cls, raw_step=False)
        self.check_results([op], [[e.key for e in events]], new, cls)

    @rule(target=claims_bundle, max_records=st.integers(1, 300),
          live_share=st.sampled_from([0.0, 0.3, 1.0]))
    def claim(self, max_records: int, live_share: float) -> int:
        m = self.model
        unclaimed = {c: m.unclaimed(c) for c in Priority}
        op = CallOp(fsync=True,
                    fn=lambda s, now: claims.make_claim(s, max_records, live_share, now))
        self.run_ops([op])
        c: Claim | None = op.result
        if c is not None:  # what the uplink gets is what a restart would re-offer
            with self.store.transaction():
                assert claims.load_claim(self.store, c.seq) == c
        if c is None:
            assert not any(unclaimed.values())
            return 0
        assert c.seq > m.last_seq
        m.last_seq = c.seq
        n_alert = min(max_records, len(unclaimed[Priority.ALERT]))
        n_agg = min(max_records - n_alert, len(unclaimed[Priority.AGGREGATE]))
        n_raw = min(max_records - n_alert - n_agg, len(unclaimed[Priority.RAW]))
        prios = [r.priority for r in c.rows]
        assert prios == [Priority.ALERT] * n_alert + [Priority.AGGREGATE] * n_agg + \
            [Priority.RAW] * n_raw
        # alerts and aggregates oldest first; raw rows in id order
        assert [r.key for r in c.rows[:n_alert]] == unclaimed[Priority.ALERT][:n_alert]
        assert [r.key for r in c.rows[n_alert:n_alert + n_agg]] == \
            unclaimed[Priority.AGGREGATE][:n_agg]
        raw_ids = [r.id for r in c.rows if r.priority == Priority.RAW]
        assert raw_ids == sorted(raw_ids)
        keys = {r.key for r in c.rows}
        for k in keys:
            assert m.rows[k].claim is None, "a row was put in a second claim"
            m.rows[k].claim = c.seq
        m.claims[c.seq] = keys
        return c.seq

    @rule(seq=consumes(claims_bundle))
    def ack(self, seq: int) -> None:
        op = CallOp(fn=lambda s, now: claims.ack(s, seq, now))
        self.run_ops([op])
        m = self.model
        keys = m.claims.pop(seq, set())
        assert op.result == len(keys)
        for k in keys:
            m.acked[CLASS[m.rows[k].cls]] += 1
            del m.rows[k]
            m.seen.add(k)

    @rule(seq=consumes(claims_bundle))
    def release(self, seq: int) -> None:
        op = CallOp(fn=lambda s, now: claims.release(s, seq))
        self.run_ops([op])
        keys = self.model.claims.pop(seq, set())
        assert op.result == len(keys)
        for k in keys:
            self.model.rows[k].claim = None

    @rule(seconds=st.sampled_from([0.5, 3.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def restart(self) -> None:
        before = self.store.state.counters
        with self.store.transaction():
            pending = claims.pending_claims(self.store)
        self.store.close()
        self.store = Store.open(self.settings, self.clock)
        assert self.store.state.counters == before
        with self.store.transaction():
            again = claims.pending_claims(self.store)
        assert again == pending, "a claim changed across a restart"

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def matches_the_model(self) -> None:
        m = self.model
        st_ = self.store.snapshot(self.clock.now_ms())
        present = self.present()
        assert set(present) == set(m.rows)
        for cls, name in CLASS.items():
            assert st_.rows[name] == sum(1 for r in m.rows.values() if r.cls == cls)
        assert st_.appended == m.appended
        assert st_.duplicates == m.duplicates
        assert st_.acked == m.acked
        assert {c: n for c, n in st_.dropped.get("evicted", {}).items() if n} == \
            {c: n for c, n in m.evicted.items() if n}
        assert st_.claimed_rows == sum(len(k) for k in m.claims.values())
        assert st_.claims_in_flight == len(m.claims)
        self.seen_pruned = st_.counters.get("dedup_pruned.space", 0) > 0

    @invariant()
    def within_the_byte_cap(self) -> None:
        path = self.settings.path
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        assert os.path.getsize(path) <= self.settings.max_bytes - self.settings.wal_limit
        assert os.path.getsize(path) + wal <= self.settings.max_bytes + self.settings.page_size

    @invariant()
    def file_is_consistent(self) -> None:
        conn = sqlite3.connect(self.settings.path)
        try:
            assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            conn.close()


class NewestFirstMachine(BufferMachine):
    eviction = Eviction.NEWEST_FIRST


_SETTINGS = settings(max_examples=30, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BufferMachine.TestCase.settings = _SETTINGS
NewestFirstMachine.TestCase.settings = settings(_SETTINGS, max_examples=15)
test_buffer_model = BufferMachine.TestCase
test_buffer_model_newest_first = NewestFirstMachine.TestCase
