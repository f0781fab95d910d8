"""pgoutput messages -> change records, in commit order — pure (no I/O, `now` passed in).

    d = ChangeDecoder(server="mydb", database="shop", tables={...}, known={...},
                      partitions=3, skip_before=state.last_lsn)
    records = d.feed(pgoutput.parse(payload), now_ms)     # [(topic, (key, value, headers))]
    d.last_commit_end                                     # after a Commit: its end LSN

* Begin/Commit frame a transaction; every record of it carries its xid, commit time and LSN
  in `source`.  `last_commit_end` becomes the transaction's end LSN when its Commit is fed:
  once every record returned so far is acknowledged, that LSN is safe to confirm.
* Transactions whose commit LSN is below `skip_before` (the state's last acknowledged end
  LSN) were produced before a restart and are skipped whole — the server resends from its
  own confirmed position, which may lag the state.
* Relation messages update the decoder's view of a table (columns as announced, in order).
  When the columns differ from `known` (the last announced signature, persisted by the
  connector), a schema-change event goes to `<prefix>.schema_changes` BEFORE any row event
  that uses the new shape.
* Tables not in `tables` (a shared publication) are counted in `ignored` and not produced.
* Truncate: one "t" event per partition of the table's topic, each with a key that lands on
  that partition (`partition_key`), so every partition's stream is complete on its own.

Record formats: `cloud.cdc.envelope`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloud.bus.base import OutRecord, partition_for
from cloud.cdc import pgoutput as pg
from cloud.cdc.envelope import (
    COLUMNS_HEADER,
    TableSchema,
    change_value,
    columns_header,
    key_bytes,
    row_dict,
    schema_change_value,
    source_block,
)

__all__ = ["ChangeDecoder", "TopicRecord", "partition_key", "snapshot_records",
           "truncate_records"]

TopicRecord = tuple[str, OutRecord]

_PARTITION_KEYS: dict[tuple[int, int], bytes] = {}


def partition_key(partition: int, partitions: int) -> bytes:
    """A fixed key that Kafka's partitioner places on `partition` (of `partitions`)."""
    cached = _PARTITION_KEYS.get((partition, partitions))
    if cached is not None:
        return cached
    salt = 0
    while True:
        key = json.dumps({"__partition": partition, "__salt": salt},
                         separators=(",", ":")).encode()
        if partition_for(key, partitions) == partition:
            _PARTITION_KEYS[(partition, partitions)] = key
            return key
        salt += 1


@dataclass
class _Tx:
    xid: int
    commit_ms: int
    final_lsn: int
    skip: bool


def _headers(table: TableSchema, lsn: int | None) -> list[tuple[str, bytes]]:
    out = [(COLUMNS_HEADER, columns_header(table))]
    if lsn is not None:
        out.append(("fieldlink.lsn", str(lsn).encode()))
    return out


def truncate_records(table: TableSchema, *, topic: str, partitions: int,
                     source: dict[str, Any], now_ms: int) -> list[TopicRecord]:
    value = change_value("t", None, None, source, now_ms)
    headers = _headers(table, source.get("lsn"))
    return [(topic, (partition_key(p, partitions), value, headers)) for p in range(partitions)]


def snapshot_records(table: TableSchema, rows: list[tuple[str | None, ...]], *, topic: str,
                     server: str, database: str, snapshot_ms: int, last: bool,
                     now_ms: int) -> list[TopicRecord]:
    """Read ("r") events of snapshot rows (every column as text, in table column order)."""
    out: list[TopicRecord] = []
    headers = _headers(table, None)
    for i, texts in enumerate(rows):
        after = row_dict(table.columns, texts)
        marker = "last" if last and i == len(rows) - 1 else "true"
        source = source_block(server=server, database=database, table=table,
                              commit_ms=snapshot_ms, snapshot=marker, xid=None, lsn=None,
                              last_commit_lsn=None)
        out.append((topic, (key_bytes(table, after), change_value("r", None, after, source,
                                                                   now_ms), headers)))
    return out


class ChangeDecoder:
    def __init__(self, *, server: str, database: str, tables: dict[str, TableSchema],
                 known: dict[str, list[list[Any]]], partitions: int, skip_before: int = 0,
                 topic_prefix: str | None = None) -> None:
        self.server = server
        self.database = database
        self.captured = dict(tables)
        #: qualified name -> column signature as last announced (persisted by the caller)
        self.known = {k: list(v) for k, v in known.items()}
        self.partitions = partitions
        self.skip_before = skip_before
        self.prefix = topic_prefix or f"cdc.{server}"
        self.schema_topic = f"{self.prefix}.schema_changes"
        self._relations: dict[int, TableSchema] = {}
        #: relation oid -> (its schema, source block, headers) for the current transaction
        self._per_tx: dict[int, tuple[TableSchema, dict[str, Any],
                                      list[tuple[str, bytes]]]] = {}
        self._tx: _Tx | None = None
        self.last_commit_end = 0
        self.last_commit_lsn: int | None = None
        #: also the events made, by op ("c", "u", "d", "t")
        self.counters = {"transactions": 0, "skipped_transactions": 0, "changes": 0,
                         "schema_changes": 0, "ignored": 0, "truncates": 0,
                         "c": 0, "u": 0, "d": 0, "t": 0}

    def topic(self, table: TableSchema) -> str:
        return f"{self.prefix}.{table.schema}.{table.table}"

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def feed(self, msg: pg.Parsed, now_ms: int) -> list[TopicRecord]:
        out = self._feed(msg, now_ms)
        for topic, (_, value, _) in out:
            if topic != self.schema_topic:
                # the op is the envelope's last-but-one field: `..."op":"c","ts_ms":...}`
                op = value[value.rindex(b'"op":"') + 6:][:1].decode()
                self.counters[op] += 1
        return out

    def _feed(self, msg: pg.Parsed, now_ms: int) -> list[TopicRecord]:
        if isinstance(msg, pg.Begin):
            skip = msg.final_lsn < self.skip_before
            self._per_tx.clear()
            self._tx = _Tx(msg.xid, pg.pg_time_to_unix_us(msg.commit_us) // 1000,
                           msg.final_lsn, skip)
            return []
        if isinstance(msg, pg.Commit):
            tx, self._tx = self._tx, None
            if tx is not None and tx.skip:
                self.counters["skipped_transactions"] += 1
            else:
                self.counters["transactions"] += 1
            self.last_commit_end = max(self.last_commit_end, msg.end_lsn)
            self.last_commit_lsn = msg.commit_lsn
            return []
        if isinstance(msg, pg.Relation):
            return self._relation(msg, now_ms)
        if isinstance(msg, pg.Origin | pg.TypeInfo | pg.Message):
            return []
        tx = self._tx
        if tx is None:
            raise pg.ProtocolError(f"{type(msg).__name__} outside a transaction")
        if tx.skip:
            return []
        if isinstance(msg, pg.Truncate):
            return self._truncate(msg, tx, now_ms)
        table = self._relations.get(msg.oid)
        if table is None:
            raise pg.ProtocolError(f"change for relation {msg.oid} before its Relation message")
        if table.qualified not in self.captured:
            self.counters["ignored"] += 1
            return []
        self.counters["changes"] += 1
        # the source block and headers are the same for every row of a table in a transaction
        cached = self._per_tx.get(msg.oid)
        if cached is None or cached[0] is not table:
            cached = self._per_tx[msg.oid] = (table, self._source(table, tx),
                                              _headers(table, tx.final_lsn))
        _, source, headers = cached
        topic = self.topic(table)
        if isinstance(msg, pg.Insert):
            after = row_dict(table.columns, msg.new)
            return [(topic, (key_bytes(table, after),
                             change_value("c", None, after, source, now_ms), headers))]
        if isinstance(msg, pg.Delete):
            old = row_dict(table.columns, msg.old)
            return [(topic, (key_bytes(table, old),
                             change_value("d", old, None, source, now_ms), headers))]
        assert isinstance(msg, pg.Update)
        new = msg.new
        before: dict[str, Any] | None = None
        if msg.old is not None:
            if msg.old_kind == "O":
                # REPLICA IDENTITY FULL: the old row fills unchanged TOAST values
                new = tuple(o if n is pg.UNCHANGED else n for n, o in zip(new, msg.old))
            before = row_dict(table.columns, msg.old)
        after = row_dict(table.columns, new)
        key = key_bytes(table, after)
        if before is not None and key_bytes(table, before) != key:
            # the primary key changed: a delete of the old key, a create of the new one
            return [(topic, (key_bytes(table, before),
                             change_value("d", before, None, source, now_ms), headers)),
                    (topic, (key, change_value("c", None, after, source, now_ms), headers))]
        return [(topic, (key, change_value("u", before if msg.old_kind == "O" else None,
                                           after, source, now_ms), headers))]

    def _source(self, table: TableSchema, tx: _Tx) -> dict[str, Any]:
        return source_block(server=self.server, database=self.database, table=table,
                            commit_ms=tx.commit_ms, snapshot="false", xid=tx.xid,
                            lsn=tx.final_lsn, last_commit_lsn=self.last_commit_lsn)

    def _relation(self, msg: pg.Relation, now_ms: int) -> list[TopicRecord]:
        qualified = msg.qualified
        captured = self.captured.get(qualified)
        if captured is not None:
            names = {c.name for c in msg.columns}
            pk = tuple(k for k in captured.primary_key if k in names) or \
                tuple(c.name for c in msg.columns if c.key)
        else:
            pk = tuple(c.name for c in msg.columns if c.key)
        table = TableSchema(msg.namespace, msg.name, msg.columns, pk)
        self._relations[msg.oid] = table
        if captured is None:
            return []
        self.captured[qualified] = table
        signature = table.signature()
        previous = self.known.get(qualified)
        if previous == signature:
            return []
        self.known[qualified] = signature
        self.counters["schema_changes"] += 1
        key = json.dumps({"schema": table.schema, "table": table.table},
                         separators=(",", ":")).encode()
        lsn = self._tx.final_lsn if self._tx is not None else None
        value = schema_change_value(server=self.server, database=self.database, table=table,
                                    previous=previous, lsn=lsn, ts_ms=now_ms)
        return [(self.schema_topic, (key, value, [(COLUMNS_HEADER, columns_header(table))]))]

    def _truncate(self, msg: pg.Truncate, tx: _Tx, now_ms: int) -> list[TopicRecord]:
        out: list[TopicRecord] = []
        for oid in msg.oids:
            table = self._relations.get(oid)
            if table is None or table.qualified not in self.captured:
                self.counters["ignored"] += 1
                continue
            self.counters["truncates"] += 1
            out += truncate_records(table, topic=self.topic(table), partitions=self.partitions,
                                    source=self._source(table, tx), now_ms=now_ms)
        return out
