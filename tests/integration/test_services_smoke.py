"""The project's client libraries talk to the real local services.

One test per service, each doing a full round trip with the same client library fieldlink
uses in production (aiokafka, influxdb-client, psycopg, paho-mqtt), so a broken service set-up
shows up here with a plain message rather than deep inside a feature test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import services
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def test_kafka_produce_and_consume(kafka: services.Kafka) -> None:
    topic = _unique("smoke")
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        # Auto-created on first produce, with the broker's default of 3 partitions.
        sent = await producer.send_and_wait(topic, b"reading-1", key=b"dev-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=_unique("smoke-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"dev-1", b"reading-1")
    assert (record.partition, record.offset) == (sent.partition, sent.offset)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 3


def _influxql(influxdb: services.InfluxDB, q: str, db: str | None = None) -> dict[str, Any]:
    """The v1 /query endpoint (InfluxQL), as the 1.x CLI and Grafana's InfluxQL source use it."""
    params = {"q": q} | ({"db": db} if db else {})
    req = urllib.request.Request(
        f"{influxdb.url}/query?{urllib.parse.urlencode(params)}", method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body: dict[str, Any] = json.load(resp)
    assert "error" not in body["results"][0], body
    return body


def test_influxdb_v2_write_flux_and_influxql_read(influxdb: services.InfluxDB) -> None:
    db = _unique("smoke")
    with InfluxDBClient(url=influxdb.url, token=influxdb.token, org=influxdb.org) as client:
        print(f"influxd version {client.version()} at {influxdb.url}")
        assert client.ping()
        # InfluxDB 1.x: databases are made with InfluxQL on the v1 endpoint; the v2 API then
        # addresses them as bucket "database/retention_policy".
        _influxql(influxdb, f'CREATE DATABASE "{db}"')
        try:
            now_ns = time.time_ns()
            points = [
                Point("temperature")
                .tag("device", "dev-1")
                .field("value", 20.0 + i)
                .time(now_ns - (3 - i) * 1_000_000_000)
                for i in range(3)
            ]
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=f"{db}/autogen", org=influxdb.org, record=points
            )

            tables = client.query_api().query(
                f'from(bucket: "{db}/autogen") |> range(start: -1h) '
                '|> filter(fn: (r) => r._measurement == "temperature")',
                org=influxdb.org,
            )
            assert sorted(r.get_value() for t in tables for r in t.records) == [20.0, 21.0, 22.0]

            body = _influxql(influxdb, 'SELECT count("value") FROM "temperature"', db=db)
            assert body["results"][0]["series"][0]["values"][0][1] == 3
        finally:
            _influxql(influxdb, f'DROP DATABASE "{db}"')


def test_postgres_logical_wal_and_replication_connection(postgres: services.Postgres) -> None:
    with psycopg.connect(postgres.dsn, connect_timeout=10) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        slots = conn.execute("SHOW max_replication_slots").fetchone()
        assert slots is not None and int(slots[0]) >= 10
        table = _unique("smoke")
        conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'x')")
        assert conn.execute(f"SELECT v FROM {table}").fetchone() == ("x",)

    # pg_hba allows replication from 127.0.0.1: a walsender connection answers
    # IDENTIFY_SYSTEM (simple-query protocol only, hence the raw libpq call).
    with psycopg.connect(postgres.dsn, replication="database", autocommit=True) as repl:
        res = repl.pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
        assert res.ntuples == 1


def test_mosquitto_paho_and_mosquitto_sub(mosquitto: services.Mosquitto) -> None:
    topic = f"fieldlink/smoke/{uuid.uuid4().hex}"
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=_unique("smoke-sub"))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        received.set()

    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port, keepalive=10)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=_unique("smoke-pub"))
    try:
        assert subscribed.wait(10), "paho subscriber got no SUBACK"
        pub.connect(mosquitto.host, mosquitto.port, keepalive=10)
        pub.loop_start()
        pub.publish(topic, b"live-1", qos=1).wait_for_publish(10)
        assert received.wait(10), "paho subscriber received nothing"
        assert got == [b"live-1"]

        # The Debian command-line client, which operators use against the real broker. A retained
        # message lets it receive without racing its subscription.
        mosquitto_sub = shutil.which("mosquitto_sub")
        if mosquitto_sub is None:
            pytest.fail(
                "mosquitto_sub not found (apt package mosquitto-clients; deploy/local/setup.sh)"
            )
        pub.publish(topic + "/retained", b"retained-1", qos=1, retain=True).wait_for_publish(10)
        out = subprocess.run(
            [
                mosquitto_sub,
                "-h",
                mosquitto.host,
                "-p",
                str(mosquitto.port),
                "-t",
                topic + "/retained",
                "-C",
                "1",
                "-W",
                "10",
            ],
            capture_output=True,
            timeout=20,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout.strip() == b"retained-1"
        pub.publish(topic + "/retained", b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
