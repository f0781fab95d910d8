"""Change data capture from PostgreSQL: logical replication (pgoutput) -> Debezium-envelope
change events on the bus -> a warehouse merged by primary key.

* `cloud.cdc.pgoutput` — the replication protocol's messages (pure).
* `cloud.cdc.envelope`, `cloud.cdc.decoder` — change events in the Debezium envelope (pure).
* `cloud.cdc.source` — catalog, slot with exported snapshot, snapshot reader, stream thread.
* `cloud.cdc.state` — the connector's durable state (snapshot done, last LSN, schemas).
* `cloud.cdc.connector` — snapshot + streaming, in commit order, confirmed after Kafka acks.
* `cloud.cdc.warehouse`, `cloud.cdc.sink` — MERGE into DuckDB or PostgreSQL.
* `cloud.cdc.app` — `fieldlink cloud cdc connector|sink|drop-slot`.

docs/secondary-pipelines.md describes the guarantees end to end.
"""
