"""Change events in the Debezium envelope — pure, no I/O.

Value of a change record (JSON, Debezium's PostgreSQL connector with
`value.converter.schemas.enable=false`)::

    {"before": {...} | null, "after": {...} | null,
     "source": {"version": "fieldlink-0.1.0", "connector": "postgresql", "name": <server>,
                "ts_ms": <commit time>, "snapshot": "true" | "last" | "false",
                "db": <database>, "sequence": "[\"<last commit lsn>\",\"<lsn>\"]",
                "schema": "public", "table": "orders", "txId": 771, "lsn": 24023128,
                "xmin": null},
     "op": "c" | "u" | "d" | "r" | "t", "ts_ms": <when the connector made the event>}

Key: the primary key as a JSON object in key-column order, `{"id": 1}` (Debezium's key
struct without schema).  Truncate events ("t") carry `{"__partition": n}` instead: one is
sent to every partition of the table's topic, so that each partition's stream is complete in
itself (see `cloud.cdc.connector`).

Column values (Debezium's defaults, except numeric): integers and booleans as JSON numbers
and booleans; real/double as numbers ("NaN", "Infinity" as strings); numeric as a string
(`decimal.handling.mode=string`: exact); date as days since 1970-01-01
(io.debezium.time.Date); timestamp as microseconds since the epoch (MicroTimestamp);
timestamptz as an ISO-8601 UTC string (ZonedTimestamp); time as microseconds since midnight
(MicroTime); bytea as base64; json/jsonb, uuid, text and every other type as the text
PostgreSQL prints.  An unchanged TOASTed value the server did not send is
`"__debezium_unavailable_value"`, as Debezium writes it.

`before`: with REPLICA IDENTITY FULL, the whole old row on update and delete.  With DEFAULT
(the primary key), deletes carry the key columns (other columns null) and updates carry no
`before` — unless the key changed, which becomes a delete of the old key and a create of the
new one (Debezium does the same).

Record headers: `fieldlink.columns` — JSON `[[name, type_oid, typmod, is_key], ...]` of the
table when the event was made, so a consumer can create and evolve its tables without reading
the schema-change topic first.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from cloud.cdc.pgoutput import UNCHANGED, Column, Tuple

__all__ = ["COLUMNS_HEADER", "UNAVAILABLE", "VERSION", "TableSchema", "change_value",
           "columns_header", "convert", "key_bytes", "row_dict", "schema_change_value",
           "source_block"]

VERSION = "fieldlink-0.1.0"
UNAVAILABLE = "__debezium_unavailable_value"
COLUMNS_HEADER = "fieldlink.columns"

BOOL, BYTEA, INT8, INT2, INT4, OID = 16, 17, 20, 21, 23, 26
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
DATE, TIME, TIMESTAMP, TIMESTAMPTZ = 1082, 1083, 1114, 1184

_EPOCH = date(1970, 1, 1)
_TZ_SUFFIX = re.compile(r"([+-]\d{2})(?::?(\d{2}))?(?::?(\d{2}))?$")


@dataclass(frozen=True, slots=True)
class TableSchema:
    """What the connector knows of a captured table: its columns and primary key."""

    schema: str
    table: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def signature(self) -> list[list[Any]]:
        """Columns as compared for schema changes: name, type, typmod, in order."""
        return [[c.name, c.type_oid, c.typmod] for c in self.columns]


def _timestamp(text: str) -> datetime:
    # PostgreSQL's ISO output: "2024-01-15 10:30:45.123456", "+00" / "+05:30" offsets
    t = text.replace(" ", "T", 1)
    m = _TZ_SUFFIX.search(t) if "T" in t and ("+" in t[10:] or "-" in t[10:]) else None
    if m is not None:
        t = t[:m.start()] + f"{m[1]}:{m[2] or '00'}" + (f":{m[3]}" if m[3] else "")
    return datetime.fromisoformat(t)


def convert(text: str | None, type_oid: int) -> Any:
    """A column's text representation as its JSON value (see the module docstring)."""
    if text is None:
        return None
    if type_oid in (INT2, INT4, INT8, OID):
        return int(text)
    if type_oid == BOOL:
        return text == "t"
    if type_oid in (FLOAT4, FLOAT8):
        value = float(text)
        return value if value == value and abs(value) != float("inf") else text
    if type_oid == DATE:
        if text in ("infinity", "-infinity"):
            return text
        return (date.fromisoformat(text) - _EPOCH).days
    if type_oid == TIMESTAMP:
        if text in ("infinity", "-infinity"):
            return text
        dt = datetime.fromisoformat(text.replace(" ", "T", 1)).replace(tzinfo=UTC)
        return _micros(dt)
    if type_oid == TIMESTAMPTZ:
        if text in ("infinity", "-infinity"):
            return text
        if text.endswith("+00") and len(text) >= 22:
            # the connection runs in UTC: "2024-01-15 10:30:45[.123456]+00", no parsing needed
            body = text[:-3]
            if "." in body:
                body = body.rstrip("0").rstrip(".")
            return body.replace(" ", "T", 1) + "Z"
        dt = _timestamp(text).astimezone(UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{dt.microsecond:06d}".rstrip("0")
                                                   .rstrip(".")) + "Z"
    if type_oid == TIME:
        t = time.fromisoformat(text)
        return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    if type_oid == BYTEA:
        raw = bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()
        return base64.b64encode(raw).decode()
    return text


def _micros(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def row_dict(columns: Sequence[Column], values: Tuple | Sequence[str | None]) -> dict[str, Any]:
    """A tuple as {column: JSON value}."""
    out = {}
    for col, text in zip(columns, values):
        out[col.name] = UNAVAILABLE if text is UNCHANGED else convert(
            text if isinstance(text, str) or text is None else None, col.type_oid)
    return out


def key_bytes(table: TableSchema, row: dict[str, Any]) -> bytes:
    """The record key: the primary key columns of `row` as compact JSON, in key order."""
    return json.dumps({k: row.get(k) for k in table.primary_key},
                      separators=(",", ":")).encode()


def columns_header(table: TableSchema) -> bytes:
    keys = set(table.primary_key)
    return json.dumps([[c.name, c.type_oid, c.typmod, c.name in keys] for c in table.columns],
                      separators=(",", ":")).encode()


def source_block(*, server: str, database: str, table: TableSchema, commit_ms: int,
                 snapshot: str, xid: int | None, lsn: int | None,
                 last_commit_lsn: int | None) -> dict[str, Any]:
    return {"version": VERSION, "connector": "postgresql", "name": server, "ts_ms": commit_ms,
            "snapshot": snapshot, "db": database,
            "sequence": json.dumps([None if last_commit_lsn is None else str(last_commit_lsn),
                                    None if lsn is None else str(lsn)]),
            "schema": table.schema, "table": table.table, "txId": xid, "lsn": lsn,
            "xmin": None}


def change_value(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
                 source: dict[str, Any], ts_ms: int) -> bytes:
    return json.dumps({"before": before, "after": after, "source": source, "op": op,
                       "ts_ms": ts_ms}, separators=(",", ":"), ensure_ascii=False).encode()


def schema_change_value(*, server: str, database: str, table: TableSchema,
                        previous: list[list[Any]] | None, lsn: int | None,
                        ts_ms: int) -> bytes:
    """A schema-change event (the shape of Debezium's schema history `tableChanges`)."""
    keys = set(table.primary_key)
    return json.dumps({
        "source": {"version": VERSION, "connector": "postgresql", "name": server,
                   "db": database, "schema": table.schema, "table": table.table, "lsn": lsn,
                   "ts_ms": ts_ms},
        "databaseName": database, "schemaName": table.schema, "ts_ms": ts_ms,
        "tableChanges": [{
            "type": "CREATE" if previous is None else "ALTER",
            "id": f'"{table.schema}"."{table.table}"',
            "table": {
                "primaryKeyColumnNames": list(table.primary_key),
                "columns": [{"name": c.name, "typeOid": c.type_oid, "typmod": c.typmod,
                             "position": i + 1, "key": c.name in keys}
                            for i, c in enumerate(table.columns)],
            },
            "previousColumns": previous,
        }],
    }, separators=(",", ":")).encode()
