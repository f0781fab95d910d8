"""CDC end to end: real PostgreSQL (logical replication) -> real Kafka -> DuckDB / PostgreSQL.

Every test gets its own tables, publication, slot, server name (so its own topics) and
warehouse, and drops its slot at the end (a leftover slot retains WAL).  The connector runs as
`fieldlink cloud cdc connector` in a subprocess, so it can be SIGKILLed; the DuckDB sink runs
in-process (DuckDB allows one process per file), the PostgreSQL sink as a subprocess.

"Equal" means: the same primary keys, and for every row the same values (numeric and json as
PostgreSQL prints them, timestamps in microseconds).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from cloud.bus.kafka import KafkaBus
from cloud.cdc.sink import CdcSink, SinkSettings
from cloud.cdc.warehouse import DuckDBTarget

REPO = Path(__file__).resolve().parents[2]

ORDERS = """CREATE TABLE {t} (
    id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), qty integer,
    updated_at timestamptz NOT NULL DEFAULT now(), tags jsonb, flag boolean)"""
CUSTOMERS = """CREATE TABLE {t} (
    cid bigint PRIMARY KEY, note text, born date, seen timestamp, avatar bytea)"""

#: comparable text of every column, PostgreSQL side
SRC_ORDERS = ("SELECT id, name, price::text, qty, (extract(epoch FROM updated_at) * 1000000)"
              "::bigint, tags::text, flag FROM {t} ORDER BY id")
DUCK_ORDERS = ("SELECT id, name, CAST(price AS VARCHAR), qty, epoch_us(updated_at), tags, flag "
               "FROM warehouse.warehouse.{t} ORDER BY id")
PG_ORDERS = SRC_ORDERS.replace("FROM {t}", "FROM warehouse.{t}")
SRC_CUSTOMERS = ("SELECT cid, note, born::text, (extract(epoch FROM seen) * 1000000)::bigint, "
                 "encode(avatar, 'hex') FROM {t} ORDER BY cid")
DUCK_CUSTOMERS = ("SELECT cid, note, CAST(born AS VARCHAR), epoch_us(seen), lower(hex(avatar)) "
                  "FROM warehouse.warehouse.{t} ORDER BY cid")


class Cdc:
    """One test's source tables, connector process and configuration."""

    def __init__(self, tmp: Path, postgres: Any, kafka: Any, *, sink: str = "duckdb",
                 chunk_rows: int = 200) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.pg = postgres
        self.kafka = kafka
        self.orders = f"orders_{self.id}"
        self.customers = f"customers_{self.id}"
        self.slot = f"fl_test_{self.id}"
        self.server = f"t{self.id}"
        self.tmp = tmp
        self.duckdb = tmp / "warehouse.duckdb"
        self.log = tmp / "connector.log"
        self.sink_log = tmp / "sink.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sink_proc: subprocess.Popen[bytes] | None = None
        self.config = tmp / "secondary.yaml"
        self.config.write_text(yaml.safe_dump({
            "cloud": {"data_dir": str(tmp / "data")},
            "kafka": {"bootstrap_servers": [kafka.bootstrap_servers], "compression": "none"},
            "cdc": {"enabled": True, "host": postgres.host, "port": postgres.port,
                    "user": postgres.user, "password": postgres.password,
                    "database": postgres.database, "server": self.server, "slot": self.slot,
                    "publication": self.slot, "tables": [self.orders, self.customers],
                    "partitions": 3, "chunk_rows": chunk_rows, "sink": sink,
                    "duckdb_path": str(self.duckdb), "postgres_dsn": postgres.conninfo,
                    "sink_group": f"sink-{self.id}", "metrics_port": 0,
                    "sink_metrics_port": 0},
            "logging": {"level": "info"},
        }))
        self.conn = psycopg2.connect(postgres.conninfo)
        self.conn.autocommit = True
        self.sql(ORDERS.format(t=self.orders))
        self.sql(CUSTOMERS.format(t=self.customers))
        self.sql(f"ALTER TABLE {self.customers} REPLICA IDENTITY FULL")

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    @property
    def topics(self) -> list[str]:
        return [f"cdc.{self.server}.public.{t}" for t in (self.orders, self.customers)]

    # -- processes -----------------------------------------------------------------------------

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.cdc.app", "connector", "-c", str(self.config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def start_sink(self) -> None:
        self.sink_proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.cdc.app", "sink", "-c", str(self.config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.sink_log.open("ab"))

    def kill_sink(self) -> None:
        assert self.sink_proc is not None
        self.sink_proc.send_signal(signal.SIGKILL)
        self.sink_proc.wait(timeout=30)
        self.sink_proc = None

    def check_alive(self) -> None:
        for proc, log in ((self.proc, self.log), (self.sink_proc, self.sink_log)):
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"exited {proc.returncode}:\n{log.read_text()[-4000:]}")

    def cleanup(self) -> None:
        for proc in (self.proc, self.sink_proc):
            if proc is not None:
                proc.kill()
                proc.wait()
        self.sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                 "WHERE slot_name = %s AND active_pid IS NOT NULL", (self.slot,))
        for _ in range(50):
            rows = self.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                            (self.slot,))
            if not rows:
                break
            if not rows[0][0]:
                self.sql("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                break
            time.sleep(0.2)
        self.sql(f"DROP PUBLICATION IF EXISTS {self.slot}")
        self.sql(f"DROP TABLE IF EXISTS {self.orders}, {self.customers}")
        for t in (self.orders, self.customers):
            self.sql(f"DROP TABLE IF EXISTS warehouse.{t}")
        self.conn.close()


class Writer(threading.Thread):
    """Random inserts, updates and deletes (some multi-row transactions) until stopped."""

    def __init__(self, cdc: Cdc, seed: int) -> None:
        super().__init__(name="cdc-test-writer", daemon=True)
        self.cdc = cdc
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = psycopg2.connect(self.cdc.pg.conninfo)
        t, c = self.cdc.orders, self.cdc.customers
        try:
            while not self.stop_event.is_set():
                with conn, conn.cursor() as cur:
                    for _ in range(self.rng.choice((1, 1, 1, 5, 20))):
                        roll = self.rng.random()
                        if roll < 0.45:
                            cur.execute(f"INSERT INTO {t} (name, price, qty, tags, flag) "
                                        "VALUES (%s, %s, %s, %s, %s)",
                                        (f"n{self.rng.randrange(10**6)}",
                                         round(self.rng.uniform(0, 999), 2),
                                         self.rng.randrange(100),
                                         json.dumps({"k": self.rng.randrange(9)}),
                                         self.rng.random() < 0.5))
                        elif roll < 0.8:
                            cur.execute(f"UPDATE {t} SET price = %s, qty = qty + 1, "
                                        "updated_at = now(), name = name || 'x' WHERE id = "
                                        f"(SELECT id FROM {t} ORDER BY random() LIMIT 1)",
                                        (round(self.rng.uniform(0, 999), 2),))
                        elif roll < 0.9:
                            cur.execute(f"DELETE FROM {t} WHERE id = (SELECT id FROM {t} "
                                        "ORDER BY random() LIMIT 1)")
                        else:
                            cid = self.rng.randrange(300)
                            cur.execute(f"INSERT INTO {c} (cid, note, born, seen, avatar) "
                                        "VALUES (%s, %s, %s, now(), %s) ON CONFLICT (cid) DO "
                                        "UPDATE SET note = EXCLUDED.note, seen = now()",
                                        (cid, f"note {self.rng.random()}", "1990-05-17",
                                         bytes([self.rng.randrange(256)] * 3)))
                        self.ops += 1
                time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e
        finally:
            conn.close()

    def finish(self) -> int:
        self.stop_event.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error
        return self.ops


def seed(cdc: Cdc, orders: int, customers: int) -> None:
    cdc.sql(f"INSERT INTO {cdc.orders} (name, price, qty, tags, flag) "
            "SELECT 'seed' || g, (g %% 1000) / 7.0, g %% 50, jsonb_build_object('g', g), "
            "g %% 2 = 0 "
            "FROM generate_series(1, %s) g", (orders,))
    cdc.sql(f"INSERT INTO {cdc.customers} (cid, note, born, seen, avatar) "
            "SELECT g, 'c' || g, date '1980-01-01' + g, timestamp '2024-01-15 10:00:00' + "
            "g * interval '1 minute', decode(lpad(to_hex(g), 4, '0'), 'hex') "
            "FROM generate_series(1000, 999 + %s) g", (customers,))


@pytest.fixture
def cdc(tmp_path: Path, postgres: Any, kafka: Any) -> Iterator[Cdc]:
    c = Cdc(tmp_path, postgres, kafka)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
async def duck_sink(cdc: Cdc) -> AsyncIterator[CdcSink]:
    async with KafkaBus([cdc.kafka.bootstrap_servers], compression=None) as bus:
        assert await bus.wait_connected(30)
        settings = SinkSettings(topics=tuple(cdc.topics), group=f"sink-{cdc.id}",
                                deadletter_topic=f"cdc.{cdc.server}.deadletter", poll_ms=200,
                                http_port=None)
        async with CdcSink(settings, bus, lambda: DuckDBTarget(cdc.duckdb)) as sink:
            yield sink


async def duck_rows(sink: CdcSink, query: str) -> list[tuple[Any, ...]] | None:
    def run() -> list[tuple[Any, ...]] | None:
        target = sink.target
        if target is None:
            return None
        try:
            return [tuple(r) for r in target.conn.execute(query).fetchall()]  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the table may not exist yet
            return None

    return await sink._call(run)  # type: ignore[no-any-return]


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` so far (until a second of silence)."""
    out: list[Any] = []
    async with KafkaBus([bootstrap], compression=None) as bus:
        async with bus.consumer(f"read-{uuid.uuid4().hex}", [topic]) as c:
            empty = 0
            while empty < 2:
                got = await c.getmany(timeout_ms=500, max_records=5000)
                out += got
                empty = 0 if got else empty + 1
    return out


def assert_clean_hand_over(records: list[Any], source_ids: set[int]) -> None:
    """No row is both in the snapshot ("r") and created by the stream ("c"), and every row
    of the source has one of the two (ids come from a sequence, never reused)."""
    ops: dict[int, list[str]] = {}
    for r in records:
        event = json.loads(r.value)
        if event["op"] == "t":
            continue
        key = json.loads(r.key)["id"]
        ops.setdefault(key, []).append(event["op"])
    both = [k for k, seq in ops.items() if "r" in seq and "c" in seq]
    assert not both, f"rows in the snapshot AND created by the stream: {both[:10]}"
    twice = [k for k, seq in ops.items() if seq.count("r") > 1 or seq.count("c") > 1]
    assert not twice, f"rows produced twice: {twice[:10]}"
    born = {k for k, seq in ops.items() if "r" in seq or "c" in seq}
    assert source_ids <= born, f"rows never produced: {sorted(source_ids - born)[:10]}"


async def converge(cdc: Cdc, read_warehouse: Any, *, within_s: float = 120) -> int:
    """Wait until both warehouse tables equal the source; the number of orders rows."""
    deadline = time.monotonic() + within_s
    want_o: list[tuple[Any, ...]] = []
    want_c: list[tuple[Any, ...]] = []
    got_o: list[tuple[Any, ...]] | None = None
    got_c: list[tuple[Any, ...]] | None = None
    while time.monotonic() < deadline:
        cdc.check_alive()
        want_o = cdc.sql(SRC_ORDERS.format(t=cdc.orders))
        want_c = cdc.sql(SRC_CUSTOMERS.format(t=cdc.customers))
        got_o, got_c = await read_warehouse()
        if got_o == want_o and got_c == want_c:
            return len(want_o)
        await asyncio.sleep(0.5)
    report = []
    for name, want, got in (("orders", want_o, got_o), ("customers", want_c, got_c)):
        missing = sorted(set(want) - set(got or []))
        extra = sorted(set(got or []) - set(want))
        report.append(f"{name}: {len(missing)} rows missing or different, {len(extra)} "
                      f"extra or stale; e.g. {missing[:3]} vs {extra[:3]}")
    log = cdc.log.read_text()[-3000:] if cdc.log.exists() else ""
    pytest.fail(f"warehouse != source after {within_s} s:\n" + "\n".join(report) +
                f"\n{log}")


async def test_snapshot_during_writes_then_stream_then_sigkill_and_restart(
        cdc: Cdc, duck_sink: CdcSink) -> None:
    seed(cdc, 3000, 200)

    async def warehouse() -> tuple[Any, Any]:
        return (await duck_rows(duck_sink, DUCK_ORDERS.format(t=cdc.orders)),
                await duck_rows(duck_sink, DUCK_CUSTOMERS.format(t=cdc.customers)))

    writer = Writer(cdc, seed=1)
    writer.start()  # writes while the snapshot runs, and after
    cdc.start()
    await asyncio.sleep(4)
    assert writer.finish() > 0
    n = await converge(cdc, warehouse)
    assert n > 2500
    ids = {r[0] for r in cdc.sql(f"SELECT id FROM {cdc.orders}")}
    assert_clean_hand_over(await read_topic(cdc.kafka.bootstrap_servers, cdc.topics[0]), ids)
    # the hand-over: no row was produced by both the snapshot and the stream
    state = cdc.sql("SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots "
                    "WHERE slot_name = %s", (cdc.slot,))
    assert state == [(True,)]
    # SIGKILL the connector while writes go on, then restart it
    writer = Writer(cdc, seed=2)
    writer.start()
    await asyncio.sleep(1.5)
    cdc.kill()
    await asyncio.sleep(1.0)
    cdc.start()
    await asyncio.sleep(2.0)
    assert writer.finish() > 0
    await converge(cdc, warehouse)
    # and once more, killed during a quiet period
    cdc.kill()
    cdc.sql(f"UPDATE {cdc.orders} SET qty = -1 WHERE id % 10 = 0")
    cdc.sql(f"DELETE FROM {cdc.customers} WHERE cid % 3 = 0")
    cdc.start()
    await converge(cdc, warehouse)
    assert cdc.stop() == 0  # SIGTERM: clean exit


async def test_postgres_warehouse_survives_sink_sigkill(tmp_path: Path, postgres: Any,
                                                        kafka: Any) -> None:
    cdc = Cdc(tmp_path, postgres, kafka, sink="postgres")
    try:
        seed(cdc, 1000, 50)

        async def warehouse() -> tuple[Any, Any]:
            try:
                got_o = cdc.sql(PG_ORDERS.format(t=cdc.orders))
                got_c = cdc.sql(SRC_CUSTOMERS.replace("FROM {t}", "FROM warehouse.{t}")
                                .format(t=cdc.customers))
            except psycopg2.errors.UndefinedTable:
                return None, None
            return got_o, got_c

        cdc.start()
        cdc.start_sink()
        writer = Writer(cdc, seed=3)
        writer.start()
        await asyncio.sleep(3)
        cdc.kill_sink()
        await asyncio.sleep(1)
        cdc.start_sink()
        await asyncio.sleep(1)
        writer.finish()
        await converge(cdc, warehouse)
        assert cdc.stop() == 0
    finally:
        cdc.cleanup()
