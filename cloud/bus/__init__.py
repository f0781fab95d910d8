"""The cloud tier's message bus: Kafka, or an embedded SQLite log on a single machine.

    from cloud.bus import open_bus, topic_specs

    async with open_bus(cfg) as bus:                  # cfg: edge.config.cloud.CloudConfig
        await bus.ensure_topics(topic_specs(cfg.kafka))
        await bus.producer().send_batch("fieldlink.readings", [(key, value, headers)])
        async with bus.consumer("influx-sink", ["fieldlink.readings"]) as consumer:
            records = await consumer.getmany(timeout_ms=1000, max_records=500)
            ...                                       # process, then
            await consumer.commit()                   # explicit commits only

Which bus: `kafka.bootstrap_servers` set → `KafkaBus` (aiokafka); empty → `EmbeddedBus`, an
append-only log in `<cloud.data_dir>/bus.sqlite3` that several processes of one machine share.
Interface and guarantees: `cloud.bus.base`.  Record formats: docs/cloud-ingest.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.bus.base import (
    Bus,
    Consumer,
    Headers,
    OutRecord,
    Producer,
    Record,
    TopicSpec,
    offsets_after,
    partition_for,
)

if TYPE_CHECKING:
    from edge.config.cloud import CloudConfig, KafkaSection

__all__ = ["Bus", "Consumer", "Headers", "OutRecord", "Producer", "Record", "TopicSpec",
           "bus_path", "offsets_after", "open_bus", "partition_for", "topic_specs"]

EMBEDDED_FILE = "bus.sqlite3"


def topic_specs(kafka: KafkaSection) -> list[TopicSpec]:
    """The four topics of the configuration: readings, aggregates, alerts, dead letters."""
    return [TopicSpec(t.name, t.partitions, kafka.replication_factor)
            for t in (kafka.topics.readings, kafka.topics.aggregates, kafka.topics.alerts,
                      kafka.topics.deadletter)]


def bus_path(cfg: CloudConfig) -> Path:
    """Where the embedded bus of `cfg` lives."""
    return Path(cfg.cloud.data_dir) / EMBEDDED_FILE


def open_bus(cfg: CloudConfig, **options: Any) -> Any:
    """The bus `cfg` asks for, as an async context manager (KafkaBus or EmbeddedBus).

    `options` go to the implementation's constructor (timeouts, clock, ...).
    """
    kafka = cfg.kafka
    if kafka.bootstrap_servers:
        from cloud.bus.kafka import KafkaBus

        return KafkaBus(list(kafka.bootstrap_servers), client_id=kafka.client_id,
                        compression=kafka.compression,
                        replication_factor=kafka.replication_factor, **options)
    from cloud.bus.embedded import EmbeddedBus

    return EmbeddedBus(bus_path(cfg), **options)
