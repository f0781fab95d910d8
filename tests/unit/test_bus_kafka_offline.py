"""KafkaBus with no broker listening, and which bus `open_bus` picks."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from cloud.bus import bus_path, open_bus, topic_specs
from cloud.bus.embedded import EmbeddedBus
from cloud.bus.kafka import KafkaBus
from cloud.errors import BrokerUnavailable
from edge.backoff import Backoff
from edge.config.cloud import CloudConfig


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_without_a_broker_sends_fail_fast_and_health_says_why() -> None:
    server = f"127.0.0.1:{_closed_port()}"
    async with KafkaBus([server], request_timeout_ms=2000,
                        backoff=Backoff(base=0.05, cap=0.2)) as bus:
        assert not await bus.wait_connected(0.5)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            await bus.producer().send_batch("t", [(b"k", b"v", [])])
        assert time.monotonic() - started < 0.5
        assert "reconnecting" in str(info.value)
        ok, detail = await bus.healthy()
        assert not ok and server in detail
        with pytest.raises(BrokerUnavailable):
            await bus.ensure_topics(topic_specs(CloudConfig().kafka))
        assert bus.stats["connect_failures"] >= 1
    assert not bus.connected


def test_unknown_compression_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        KafkaBus(["127.0.0.1:1"], compression="brotli")


def test_open_bus_picks_embedded_without_servers(tmp_path: Path) -> None:
    cfg = CloudConfig.model_validate({"cloud": {"data_dir": str(tmp_path)}})
    bus = open_bus(cfg)
    assert isinstance(bus, EmbeddedBus) and bus.path == bus_path(cfg) == tmp_path / "bus.sqlite3"
    cfg = CloudConfig.model_validate({"kafka": {"bootstrap_servers": "10.1.1.1:9092",
                                                "compression": "gzip"}})
    bus = open_bus(cfg)
    assert isinstance(bus, KafkaBus)
    assert bus.bootstrap_servers == ["10.1.1.1:9092"] and bus.compression == "gzip"


def test_topic_specs_follow_the_config() -> None:
    cfg = CloudConfig.model_validate({"kafka": {"replication_factor": 3, "topics": {
        "readings": {"name": "r", "partitions": 12}}}})
    specs = topic_specs(cfg.kafka)
    assert [(s.name, s.partitions, s.replication_factor) for s in specs] == [
        ("r", 12, 3), ("fieldlink.aggregates", 3, 3), ("fieldlink.alerts", 3, 3),
        ("fieldlink.deadletter", 1, 3)]
