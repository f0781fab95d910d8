"""CDC details against real PostgreSQL and Kafka: the Debezium envelope, schema changes,
truncates, unchanged TOAST values and big transactions produced in chunks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cdc_postgres import (
    DUCK_CUSTOMERS,
    DUCK_ORDERS,
    Cdc,
    converge,
    duck_rows,
    read_topic,
    seed,
)

from cloud.bus.kafka import KafkaBus
from cloud.cdc.connector import CdcConnector, ConnectorSettings
from cloud.cdc.sink import CdcSink, SinkSettings
from cloud.cdc.warehouse import DuckDBTarget


@pytest.fixture
def cdc(tmp_path: Path, postgres: Any, kafka: Any) -> Iterator[Cdc]:
    c = Cdc(tmp_path, postgres, kafka, chunk_rows=100)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
async def pipeline(cdc: Cdc) -> AsyncIterator[tuple[CdcConnector, CdcSink]]:
    """Connector and DuckDB sink in-process (their metrics are inspected)."""
    settings = ConnectorSettings(
        dsn=cdc.pg.conninfo, tables=(f"public.{cdc.orders}", f"public.{cdc.customers}"),
        state_path=cdc.tmp / "state.sqlite3", server=cdc.server, slot=cdc.slot,
        publication=cdc.slot, partitions=3, chunk_rows=100, http_port=None)
    sink_settings = SinkSettings(topics=tuple(cdc.topics), group=f"sink-{cdc.id}",
                                 deadletter_topic=f"cdc.{cdc.server}.deadletter", poll_ms=200,
                                 http_port=None)
    async with KafkaBus([cdc.kafka.bootstrap_servers], compression=None) as bus:
        assert await bus.wait_connected(30)
        async with CdcConnector(settings, bus) as connector, \
                CdcSink(sink_settings, bus, lambda: DuckDBTarget(cdc.duckdb)) as sink:
            async with asyncio.timeout(60):
                await connector.streaming.wait()
            yield connector, sink


def events(records: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    return [(json.loads(r.key) if r.key else None, json.loads(r.value)) for r in records]


async def wait_for(cond: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.3)


async def warehouse_of(cdc: Cdc, sink: CdcSink) -> Any:
    async def read() -> tuple[Any, Any]:
        return (await duck_rows(sink, DUCK_ORDERS.format(t=cdc.orders)),
                await duck_rows(sink, DUCK_CUSTOMERS.format(t=cdc.customers)))
    return read


async def test_debezium_envelope_of_insert_update_delete(cdc: Cdc, pipeline: Any) -> None:
    connector, _ = pipeline
    cdc.sql(f"INSERT INTO {cdc.orders} (id, name, price, qty, tags, flag) VALUES "
            "(1, 'Add to Cart', 29.99, 2, '{\"sku\": \"prod_999\"}', true)")
    cdc.sql(f"UPDATE {cdc.orders} SET qty = 3 WHERE id = 1")
    cdc.sql(f"UPDATE {cdc.orders} SET id = 2 WHERE id = 1")  # a primary key change
    cdc.sql(f"DELETE FROM {cdc.orders} WHERE id = 2")
    cdc.sql(f"INSERT INTO {cdc.customers} VALUES (7, 'n', '2024-01-15', "
            "'2024-01-15 10:30:45.5', '\\x0102')")
    cdc.sql(f"UPDATE {cdc.customers} SET note = 'm' WHERE cid = 7")
    cdc.sql(f"DELETE FROM {cdc.customers} WHERE cid = 7")

    async def produced() -> bool:
        return connector.metrics.events.labels("d")._value.get() >= 3
    await wait_for(produced)
    orders = [e for e in events(await read_topic(cdc.kafka.bootstrap_servers, cdc.topics[0]))
              if e[1]["op"] != "t"]
    assert [(k, e["op"]) for k, e in orders] == [
        ({"id": 1}, "c"), ({"id": 1}, "u"), ({"id": 1}, "d"), ({"id": 2}, "c"),
        ({"id": 2}, "d")]
    key, c = orders[0]
    assert c["before"] is None
    assert c["after"] == {"id": 1, "name": "Add to Cart", "price": "29.99", "qty": 2,
                          "updated_at": c["after"]["updated_at"], "tags": '{"sku": "prod_999"}',
                          "flag": True}
    assert c["after"]["updated_at"].endswith("Z")
    src = c["source"]
    assert {k: src[k] for k in ("connector", "name", "db", "schema", "table", "snapshot")} == {
        "connector": "postgresql", "name": cdc.server, "db": cdc.pg.database,
        "schema": "public", "table": cdc.orders, "snapshot": "false"}
    assert isinstance(src["txId"], int) and isinstance(src["lsn"], int)
    assert isinstance(src["ts_ms"], int) and isinstance(c["ts_ms"], int)
    assert orders[1][1]["before"] is None  # REPLICA IDENTITY DEFAULT: no old row on update
    assert orders[1][1]["after"]["qty"] == 3
    # DEFAULT identity: a delete carries the key columns only
    assert orders[4][1]["before"]["id"] == 2 and orders[4][1]["before"]["name"] is None
    assert orders[4][1]["after"] is None
    # transaction order: each event's LSN is not before the previous one's
    lsns = [e["source"]["lsn"] for _, e in orders]
    assert lsns == sorted(lsns)
    customers = [e for e in events(await read_topic(cdc.kafka.bootstrap_servers,
                                                    cdc.topics[1])) if e[1]["op"] != "t"]
    assert [(k, e["op"]) for k, e in customers] == [({"cid": 7}, "c"), ({"cid": 7}, "u"),
                                                     ({"cid": 7}, "d")]
    after = customers[0][1]["after"]
    assert after == {"cid": 7, "note": "n", "born": 19737, "seen": 1705314645500000,
                     "avatar": "AQI="}
    # REPLICA IDENTITY FULL: the whole old row on update and delete
    assert customers[1][1]["before"] == after
    assert customers[2][1]["before"]["note"] == "m"


async def test_schema_changes_truncate_and_toast(cdc: Cdc, pipeline: Any) -> None:
    connector, sink = pipeline
    seed(cdc, 300, 20)
    warehouse = await warehouse_of(cdc, sink)
    await converge(cdc, warehouse, within_s=60)
    # an unchanged TOASTed value is not sent on update: the warehouse keeps its copy
    cdc.sql(f"UPDATE {cdc.orders} SET name = (SELECT string_agg(md5(random()::text), '') "
            "FROM generate_series(1, 300)) WHERE id <= 5")
    cdc.sql(f"UPDATE {cdc.orders} SET qty = qty + 100 WHERE id <= 5")
    await converge(cdc, warehouse, within_s=60)
    # ALTER TABLE: a schema-change event, then rows with the new column
    # (no DEFAULT: PostgreSQL fills a default into existing rows without writing them to the
    # WAL, so no change event could carry it — docs/secondary-pipelines.md)
    cdc.sql(f"ALTER TABLE {cdc.orders} ADD COLUMN discount numeric(5,2)")
    cdc.sql(f"UPDATE {cdc.orders} SET discount = 1.25 WHERE id % 3 = 0")
    cdc.sql(f"INSERT INTO {cdc.orders} (name, discount) VALUES ('new', 2.50)")

    async def discount_synced() -> bool:
        got = await duck_rows(sink, f"SELECT id, CAST(discount AS VARCHAR) FROM "
                                    f"warehouse.warehouse.{cdc.orders} ORDER BY id")
        want = cdc.sql(f"SELECT id, discount::text FROM {cdc.orders} ORDER BY id")
        return got == want
    await wait_for(discount_synced, 60)
    changes = events(await read_topic(cdc.kafka.bootstrap_servers,
                                      f"cdc.{cdc.server}.schema_changes"))
    altered = [e for k, e in changes if k == {"schema": "public", "table": cdc.orders} and
               e["tableChanges"][0]["type"] == "ALTER"]
    assert len(altered) == 1
    columns = [c["name"] for c in altered[0]["tableChanges"][0]["table"]["columns"]]
    assert columns[-1] == "discount" and "discount" not in str(
        altered[0]["tableChanges"][0]["previousColumns"])
    assert connector.metrics.schema_changes._value.get() >= 1
    # TRUNCATE: every partition's rows go, later rows stay
    cdc.sql(f"TRUNCATE {cdc.orders}")
    cdc.sql(f"INSERT INTO {cdc.orders} (name, price) VALUES ('after', 1.00), ('after', 2.00)")
    n = await converge(cdc, warehouse, within_s=60)
    assert n == 2


async def test_big_transaction_is_produced_in_chunks_in_order(cdc: Cdc, pipeline: Any) -> None:
    connector, sink = pipeline
    chunks_before = connector.metrics.chunks._value.get()
    cdc.sql(f"INSERT INTO {cdc.orders} (name, price, qty) SELECT 'bulk', g / 100.0, g "
            "FROM generate_series(1, 20000) g")

    async def produced() -> bool:
        return connector.metrics.events.labels("c")._value.get() >= 20000
    await wait_for(produced, 120)
    # chunk_rows is 100: the transaction went out in many chunks, not as one
    assert connector.metrics.chunks._value.get() - chunks_before >= 200
    records = await read_topic(cdc.kafka.bootstrap_servers, cdc.topics[0])
    per_partition: dict[int, list[int]] = {}
    for r in records:
        if json.loads(r.value)["op"] == "c":
            per_partition.setdefault(r.partition, []).append(json.loads(r.key)["id"])
    assert sum(len(v) for v in per_partition.values()) == 20000
    for ids in per_partition.values():
        assert ids == sorted(ids)  # commit (= insertion) order within every partition
    warehouse = await warehouse_of(cdc, sink)
    assert await converge(cdc, warehouse, within_s=120) == 20000
