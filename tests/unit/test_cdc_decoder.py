"""The change decoder (pgoutput -> Debezium records) and the sink's planning and MERGE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cdc_pgoutput import begin, commit, delete, insert, relation, truncate, update

from cloud.bus import Record, partition_for
from cloud.cdc import pgoutput as pg
from cloud.cdc.decoder import ChangeDecoder, TopicRecord, partition_key, snapshot_records
from cloud.cdc.envelope import UNAVAILABLE, TableSchema
from cloud.cdc.sink import plan_batch
from cloud.cdc.state import ConnectorState, StateMismatch
from cloud.cdc.warehouse import DuckDBTarget, TableRef

OID = 16421
COLS = [("id", 23, True), ("name", 25, False), ("qty", 23, False)]
ORDERS = TableSchema("public", "orders", tuple(pg.Column(n, t, -1, k) for n, t, k in COLS),
                     ("id",))
NOW = 1_705_314_645_000


def decoder(**kw: Any) -> ChangeDecoder:
    args: dict[str, Any] = {"server": "mydb", "database": "shop",
                            "tables": {"public.orders": ORDERS},
                            "known": {"public.orders": ORDERS.signature()}, "partitions": 3}
    args.update(kw)
    return ChangeDecoder(**args)


def feed(d: ChangeDecoder, *payloads: bytes) -> list[TopicRecord]:
    out: list[TopicRecord] = []
    for p in payloads:
        out += d.feed(pg.parse(p), NOW)
    return out


def value(rec: TopicRecord) -> dict[str, Any]:
    return dict(json.loads(rec[1][1]))


def tx(lsn: int, *changes: bytes) -> list[bytes]:
    return [begin(lsn, 0, lsn), *changes, commit(lsn, lsn + 8, 0)]


def test_insert_update_delete_become_debezium_events() -> None:
    d = decoder()
    out = feed(d, relation(OID, "public", "orders", COLS),
               *tx(100, insert(OID, "1", "a", "2"), update(OID, ("1", "b", "3")),
                   delete(OID, "K", "1", None, None)))
    assert [r[0] for r in out] == ["cdc.mydb.public.orders"] * 3
    assert [r[1][0] for r in out] == [b'{"id":1}'] * 3
    c, u, dl = (value(r) for r in out)
    assert (c["op"], c["before"], c["after"]) == ("c", None, {"id": 1, "name": "a", "qty": 2})
    assert (u["op"], u["before"], u["after"]["name"]) == ("u", None, "b")
    assert (dl["op"], dl["before"], dl["after"]) == ("d", {"id": 1, "name": None, "qty": None},
                                                     None)
    assert c["source"]["txId"] == 100 and c["source"]["lsn"] == 100
    assert c["source"]["snapshot"] == "false" and c["ts_ms"] == NOW
    assert d.last_commit_end == 108
    assert (d.counters["c"], d.counters["u"], d.counters["d"]) == (1, 1, 1)
    headers = dict(out[0][1][2])
    assert json.loads(headers["fieldlink.columns"]) == [["id", 23, -1, True],
                                                        ["name", 25, -1, False],
                                                        ["qty", 23, -1, False]]


def test_key_change_is_a_delete_and_a_create() -> None:
    d = decoder()
    out = feed(d, relation(OID, "public", "orders", COLS),
               *tx(100, update(OID, ("2", "a", "1"), ("1", None, None), kind="K")))
    assert [(r[1][0], value(r)["op"]) for r in out] == [(b'{"id":1}', "d"), (b'{"id":2}', "c")]


def test_full_identity_fills_unchanged_toast_and_keeps_before() -> None:
    d = decoder()
    out = feed(d, relation(OID, "public", "orders", COLS, ident="f"),
               *tx(100, update(OID, ("1", pg.UNCHANGED, "5"), ("1", "big", "4"))))
    u = value(out[0])
    assert u["before"] == {"id": 1, "name": "big", "qty": 4}
    assert u["after"] == {"id": 1, "name": "big", "qty": 5}
    d = decoder()
    out = feed(d, relation(OID, "public", "orders", COLS),
               *tx(100, update(OID, ("1", pg.UNCHANGED, "5"))))
    assert value(out[0])["after"]["name"] == UNAVAILABLE


def test_transactions_before_the_state_are_skipped() -> None:
    d = decoder(skip_before=200)
    out = feed(d, relation(OID, "public", "orders", COLS), *tx(150, insert(OID, "1", "a", "1")),
               *tx(200, insert(OID, "2", "b", "1")))
    assert [r[1][0] for r in out] == [b'{"id":2}']
    assert d.counters["skipped_transactions"] == 1 and d.last_commit_end == 208


def test_schema_change_precedes_the_rows_that_use_it() -> None:
    d = decoder()
    assert feed(d, relation(OID, "public", "orders", COLS)) == []  # as known: no event
    cols = [*COLS, ("discount", 1700, False)]
    out = feed(d, *tx(300, relation(OID, "public", "orders", cols),
                      insert(OID, "9", "x", "1", "1.25")))
    assert [r[0] for r in out] == ["cdc.mydb.schema_changes", "cdc.mydb.public.orders"]
    change = value(out[0])["tableChanges"][0]
    assert change["type"] == "ALTER"
    assert [c["name"] for c in change["table"]["columns"]] == ["id", "name", "qty", "discount"]
    assert change["previousColumns"] == [["id", 23, -1], ["name", 25, -1], ["qty", 23, -1]]
    assert value(out[1])["after"]["discount"] == "1.25"
    assert d.known["public.orders"][-1] == ["discount", 1700, -1]


def test_truncate_reaches_every_partition_and_other_tables_are_ignored() -> None:
    d = decoder()
    out = feed(d, relation(OID, "public", "orders", COLS),
               relation(99, "public", "other", [("id", 23, True)]),
               *tx(400, insert(99, "1"), truncate(OID, 99)))
    assert len(out) == 3 and all(value(r)["op"] == "t" for r in out)
    assert sorted(partition_for(r[1][0] or b"", 3) for r in out) == [0, 1, 2]
    assert d.counters["ignored"] == 2
    for p in range(5):
        assert partition_for(partition_key(p, 5), 5) == p


def test_changes_outside_a_transaction_are_a_protocol_error() -> None:
    d = decoder()
    feed(d, relation(OID, "public", "orders", COLS))
    with pytest.raises(pg.ProtocolError):
        feed(d, insert(OID, "1", "a", "1"))
    with pytest.raises(pg.ProtocolError):
        feed(decoder(), *tx(1, insert(OID, "1", "a", "1")))  # no Relation yet


# -- the sink's side -----------------------------------------------------------------------------


def records(items: list[TopicRecord], partition_of: Any = None) -> list[Record]:
    out = []
    for i, (topic, (key, val, headers)) in enumerate(items):
        p = partition_of(key) if partition_of else (partition_for(key, 3) if key else 0)
        out.append(Record(topic, p, i, key, val, tuple(headers), NOW))
    return out


def test_plan_collapses_per_key_and_truncate_drops_earlier_events() -> None:
    d = decoder()
    items = feed(d, relation(OID, "public", "orders", COLS),
                 *tx(100, insert(OID, "1", "a", "1"), update(OID, ("1", "b", "2")),
                     insert(OID, "2", "c", "1"), delete(OID, "K", "2", None, None),
                     insert(OID, "3", "d", "1")))
    items += feed(d, *tx(200, update(OID, ("3", pg.UNCHANGED, "9"))))
    plans, bad = plan_batch(records(items), "duckdb")
    assert bad == []
    (plan,) = plans
    assert plan.ref == TableRef("public", "orders")
    ups = sorted((r["id"], r["name"], r["qty"]) for r in plan.upserts)
    # the unchanged TOAST value of id 3 comes from the earlier event of the poll
    assert ups == [(1, "b", 2), (3, "d", 9)]
    assert plan.deletes == [{"id": 2}]
    # a truncate of partition p discards p's earlier events
    trunc = feed(d, *tx(300, truncate(OID)))
    later = feed(d, *tx(400, insert(OID, "7", "z", "1")))
    plans, _ = plan_batch(records(items + trunc + later, lambda k: 0), "duckdb")
    assert plans[0].truncate == {0}
    assert [r["id"] for r in plans[0].upserts] == [7] and plans[0].deletes == []


def test_bad_records_are_reported_not_raised() -> None:
    good = feed(decoder(), relation(OID, "public", "orders", COLS),
                *tx(1, insert(OID, "1", "a", "1")))[0]
    no_header: TopicRecord = ("t", (good[1][0], good[1][1], []))
    not_json = ("t", (b'{"id":2}', b"nope", good[1][2]))
    # "name" announced as numeric(10,2): its value "a" is no number
    numeric = [("fieldlink.columns", b'[["id",23,-1,true],["name",1700,655366,false],'
                                     b'["qty",23,-1,false]]')]
    bad_value = ("t", (b'{"id":3}', good[1][1], numeric))
    plans, bad = plan_batch(records([good, no_header, not_json]), "duckdb")
    assert [e.reason for _, e in bad] == ["no_columns", "not_an_event"]
    assert [r["id"] for r in plans[0].upserts] == [1]
    plans, bad = plan_batch(records([bad_value]), "duckdb")
    assert [e.reason for _, e in bad] == ["bad_value"] and plans[0].upserts == []


def test_duckdb_merge_is_idempotent_on_replay(tmp_path: Path) -> None:
    d = decoder()
    snap = snapshot_records(ORDERS, [("1", "a", "1"), ("2", "b", "2")], topic="cdc.mydb."
                            "public.orders", server="mydb", database="shop", snapshot_ms=NOW,
                            last=True, now_ms=NOW)
    assert json.loads(snap[-1][1][1])["source"]["snapshot"] == "last"
    items = snap + feed(d, relation(OID, "public", "orders", COLS),
                        *tx(100, update(OID, ("1", "a2", "5")), delete(OID, "K", "2", None,
                                                                         None),
                            insert(OID, "3", "c", "3")))
    target = DuckDBTarget(tmp_path / "warehouse.duckdb")
    ref = TableRef("public", "orders")
    for _ in range(2):  # a replay of the same events leaves the same table
        for split in (records(items[:3]), records(items[3:])):
            plans, _ = plan_batch(split, "duckdb")
            for plan in plans:
                target.ensure_table(plan.ref, plan.columns)
            target.apply(plans)
        assert target.rows(ref, ["id", "name", "qty"]) == [(1, "a2", 5), (3, "c", 3)]
    target.close()


def test_connector_state_round_trip(tmp_path: Path) -> None:
    st = ConnectorState(tmp_path / "s.sqlite3", "slot_a")
    assert (st.snapshot_done, st.last_lsn, st.tables) == (False, 0, {})
    st.save(last_lsn=123, snapshot_done=True, tables={"public.t": [["id", 23, -1]]})
    st.close()
    st = ConnectorState(tmp_path / "s.sqlite3", "slot_a")
    assert (st.snapshot_done, st.last_lsn) == (True, 123)
    assert st.tables == {"public.t": [["id", 23, -1]]}
    st.close()
    with pytest.raises(StateMismatch):
        ConnectorState(tmp_path / "s.sqlite3", "slot_b")
