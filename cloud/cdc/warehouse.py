"""Warehouse targets of the CDC sink: DuckDB (default) and PostgreSQL.  Blocking; the sink
calls them from one worker thread.

    target = DuckDBTarget(path)            # or PostgresTarget(dsn, schema="warehouse")
    target.ensure_table(ref, columns)      # create / add columns
    target.apply(plan)                     # one transaction: truncates, deletes, upserts
    target.rows(ref)                       # for checks and tests

Table naming: source `public.orders` -> `<schema>.orders`; other source schemas ->
`<schema>.<source schema>__<table>` (`<schema>` is "warehouse" by default; DuckDB uses it as
a schema inside its file).

Columns: the source columns with types mapped from PostgreSQL (`sql_type`), the source
primary key as the table's primary key, plus two bookkeeping columns: `__cdc_partition` (the
Kafka partition the row's key lives on: a truncate event of partition p deletes exactly
those rows) and `__cdc_lsn` (the LSN of the transaction that wrote the row; NULL for snapshot
rows).  Columns dropped at the source stay (NULL in new rows); new columns are added.

Apply is MERGE by primary key: `INSERT ... ON CONFLICT (key) DO UPDATE` for "c", "u", "r",
`DELETE` by key for "d" — idempotent, so replaying events after a crash leaves the same
table.  A column whose value was not sent (an unchanged TOASTed value) is left as it is.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from cloud.cdc import envelope as env

__all__ = ["Column", "DuckDBTarget", "Plan", "PostgresTarget", "TableRef", "Target",
           "sql_type", "to_python"]

log = logging.getLogger("fieldlink.cloud.cdc")

META = ("__cdc_partition", "__cdc_lsn")


@dataclass(frozen=True, slots=True)
class TableRef:
    schema: str
    table: str

    def name(self) -> str:
        return self.table if self.schema == "public" else f"{self.schema}__{self.table}"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool


@dataclass
class Plan:
    """What one batch does to one table, in this order."""

    ref: TableRef
    columns: list[Column]
    #: partitions whose rows are all deleted (truncate events)
    truncate: set[int] = field(default_factory=set)
    #: key dicts to delete
    deletes: list[dict[str, Any]] = field(default_factory=list)
    #: (row dict incl. META, without unavailable columns)
    upserts: list[dict[str, Any]] = field(default_factory=list)


def _numeric(typmod: int) -> tuple[int, int] | None:
    if typmod < 4:
        return None
    return ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF


def sql_type(col: Column, dialect: str) -> str:
    """The warehouse column type of a PostgreSQL column ("duckdb" or "postgres")."""
    oid = col.type_oid
    pg = dialect == "postgres"
    simple = {env.BOOL: "BOOLEAN", env.INT2: "SMALLINT", env.INT4: "INTEGER",
              env.INT8: "BIGINT", env.OID: "BIGINT", env.FLOAT4: "REAL",
              env.FLOAT8: "DOUBLE PRECISION" if pg else "DOUBLE", env.DATE: "DATE",
              env.TIME: "TIME", env.TIMESTAMP: "TIMESTAMP",
              env.TIMESTAMPTZ: "TIMESTAMPTZ" if not pg else "TIMESTAMP WITH TIME ZONE",
              env.BYTEA: "BYTEA" if pg else "BLOB", 2950: "UUID",
              114: "JSON" if pg else "VARCHAR", 3802: "JSONB" if pg else "VARCHAR"}
    if oid in simple:
        return simple[oid]
    if oid == env.NUMERIC:
        ps = _numeric(col.typmod)
        if ps is not None and (pg or ps[0] <= 38):
            return f"NUMERIC({ps[0]},{ps[1]})" if pg else f"DECIMAL({ps[0]},{ps[1]})"
        return "NUMERIC" if pg else "VARCHAR"
    return "TEXT" if pg else "VARCHAR"


_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)


def to_python(value: Any, col: Column, dialect: str) -> Any:
    """An envelope JSON value as the Python value the target's driver stores."""
    if value is None:
        return None
    oid = col.type_oid
    if oid in (env.FLOAT4, env.FLOAT8) and isinstance(value, str):
        return float(value)
    if oid == env.NUMERIC:
        ps = _numeric(col.typmod)
        if dialect == "duckdb" and (ps is None or ps[0] > 38):
            return str(value)  # stored as VARCHAR: exact
        d = Decimal(value)
        # NaN fits PostgreSQL's numeric, not DuckDB's DECIMAL
        return d if d.is_finite() or dialect == "postgres" else None
    if oid == env.DATE:
        return _EPOCH_DATE + timedelta(days=value) if isinstance(value, int) else value
    if oid == env.TIMESTAMP:
        return _EPOCH + timedelta(microseconds=value) if isinstance(value, int) else value
    if oid == env.TIMESTAMPTZ:
        if value in ("infinity", "-infinity"):
            return value
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    if oid == env.TIME and isinstance(value, int):
        secs, us = divmod(value, 1_000_000)
        return time(secs // 3600 % 24, secs // 60 % 60, secs % 60, us)
    if oid == env.BYTEA:
        return base64.b64decode(value)
    return value


class Target(Protocol):
    dialect: str
    #: driver exceptions that blame the data of one row (dead-letter it), as opposed to the
    #: target being down or misconfigured
    data_errors: tuple[type[BaseException], ...]

    def ensure_table(self, ref: TableRef, columns: Sequence[Column]) -> None: ...

    def apply(self, plans: Sequence[Plan]) -> None: ...

    def rows(self, ref: TableRef, columns: Sequence[str]) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SqlTarget:
    """Shared SQL generation; subclasses supply the connection and placeholder style."""

    dialect = "duckdb"
    mark = "?"
    data_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, schema: str) -> None:
        self.schema = schema
        #: table name -> (column names as created, key columns)
        self._tables: dict[str, tuple[list[str], list[str]]] = {}

    #: the database (catalog) part of qualified names, when the target needs one
    catalog: str | None = None

    def _fq(self, ref: TableRef) -> str:
        prefix = f"{_q(self.catalog)}." if self.catalog else ""
        return f"{prefix}{_q(self.schema)}.{_q(ref.name())}"

    def _fq_schema(self) -> str:
        prefix = f"{_q(self.catalog)}." if self.catalog else ""
        return f"{prefix}{_q(self.schema)}"

    # -- implemented by subclasses -----------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _existing_columns(self, ref: TableRef) -> list[str] | None:
        raise NotImplementedError

    def _begin(self) -> None:
        self._execute("BEGIN")

    def _commit(self) -> None:
        self._execute("COMMIT")

    def _rollback(self) -> None:
        self._execute("ROLLBACK")

    # -- the Target protocol ------------------------------------------------------------------

    def ensure_table(self, ref: TableRef, columns: Sequence[Column]) -> None:
        name = ref.name()
        known = self._tables.get(name)
        if known is None:
            existing = self._existing_columns(ref)
            if existing is None:
                keys = [c.name for c in columns if c.key]
                defs = [f"{_q(c.name)} {sql_type(c, self.dialect)}" for c in columns]
                defs += [f"{_q(META[0])} INTEGER", f"{_q(META[1])} BIGINT"]
                defs.append(f"PRIMARY KEY ({', '.join(_q(k) for k in keys)})")
                self._execute(f"CREATE SCHEMA IF NOT EXISTS {self._fq_schema()}")
                self._execute(f"CREATE TABLE IF NOT EXISTS {self._fq(ref)} ({', '.join(defs)})")
                log.info("warehouse table created", extra={"fields": {
                    "table": f"{self.schema}.{name}", "key": keys}})
                existing = [c.name for c in columns] + list(META)
            known = (existing, [c.name for c in columns if c.key])
            self._tables[name] = known
        have = set(known[0])
        for c in columns:
            if c.name not in have:
                self._execute(f"ALTER TABLE {self._fq(ref)} ADD COLUMN {_q(c.name)} "
                              f"{sql_type(c, self.dialect)}")
                known[0].append(c.name)
                have.add(c.name)
                log.info("warehouse column added", extra={"fields": {
                    "table": f"{self.schema}.{name}", "column": c.name}})

    def apply(self, plans: Sequence[Plan]) -> None:
        self._begin()
        try:
            for plan in plans:
                self._apply(plan)
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def _apply(self, plan: Plan) -> None:
        fq = self._fq(plan.ref)
        keys = [c.name for c in plan.columns if c.key]
        for p in sorted(plan.truncate):
            self._execute(f"DELETE FROM {fq} WHERE {_q(META[0])} = {self.mark}", (p,))
        if plan.deletes:
            self._delete_rows(fq, keys, [[d[k] for k in keys] for d in plan.deletes])
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in plan.upserts:
            groups.setdefault(tuple(row), []).append(row)
        for cols, rows in groups.items():
            updates = [c for c in cols if c not in keys]
            action = (f"ON CONFLICT ({', '.join(_q(k) for k in keys)}) " +
                      ("DO UPDATE SET " + ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}"
                                                    for c in updates) if updates
                       else "DO NOTHING"))
            self._upsert_rows(fq, list(cols), action, [[r[c] for c in cols] for r in rows])

    def _delete_rows(self, fq: str, keys: list[str], rows: list[list[Any]]) -> None:
        where = " AND ".join(f"{_q(k)} = {self.mark}" for k in keys)
        self._executemany(f"DELETE FROM {fq} WHERE {where}", list(rows))

    def _upsert_rows(self, fq: str, cols: list[str], action: str,
                     rows: list[list[Any]]) -> None:
        names = ", ".join(_q(c) for c in cols)
        marks = ", ".join([self.mark] * len(cols))
        self._executemany(f"INSERT INTO {fq} ({names}) VALUES ({marks}) {action}", list(rows))

    def rows(self, ref: TableRef, columns: Sequence[str]) -> list[tuple[Any, ...]]:
        cols = ", ".join(_q(c) for c in columns)
        cur = self._execute(f"SELECT {cols} FROM {self._fq(ref)} ORDER BY 1")
        return [tuple(r) for r in cur.fetchall()]


class DuckDBTarget(_SqlTarget):
    dialect = "duckdb"
    mark = "?"

    def __init__(self, path: str | os.PathLike[str], *, schema: str = "warehouse") -> None:
        import duckdb

        super().__init__(schema)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.conn = duckdb.connect(str(path))
        # the file's catalog is named after it: "warehouse.duckdb" would make the schema
        # "warehouse" ambiguous without it
        row = self.conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        self.catalog = str(row[0])
        self.data_errors = (duckdb.ConstraintException, duckdb.ConversionException,
                            duckdb.InvalidInputException, duckdb.OutOfRangeException,
                            duckdb.TypeMismatchException)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, list(params))

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(sql, [list(r) for r in rows])

    # Row-at-a-time statements cost DuckDB milliseconds each: a batch goes in as one Arrow
    # table joined by a single statement.

    def _arrow(self, cols: list[str], rows: list[list[Any]]) -> Any:
        import pyarrow as pa

        return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})

    def _delete_rows(self, fq: str, keys: list[str], rows: list[list[Any]]) -> None:
        self.conn.register("__cdc_keys", self._arrow(keys, rows))
        try:
            match = " AND ".join(f"t.{_q(k)} = k.{_q(k)}" for k in keys)
            self.conn.execute(f"DELETE FROM {fq} AS t USING __cdc_keys AS k WHERE {match}")
        finally:
            self.conn.unregister("__cdc_keys")

    def _upsert_rows(self, fq: str, cols: list[str], action: str,
                     rows: list[list[Any]]) -> None:
        self.conn.register("__cdc_rows", self._arrow(cols, rows))
        try:
            names = ", ".join(_q(c) for c in cols)
            self.conn.execute(f"INSERT INTO {fq} ({names}) SELECT {names} FROM __cdc_rows "
                              f"{action}")
        finally:
            self.conn.unregister("__cdc_rows")

    def _existing_columns(self, ref: TableRef) -> list[str] | None:
        rows = self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? AND "
            "table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [self.catalog, self.schema, ref.name()]).fetchall()
        return [r[0] for r in rows] or None

    def close(self) -> None:
        self.conn.close()


class PostgresTarget(_SqlTarget):
    dialect = "postgres"
    mark = "%s"

    def __init__(self, dsn: str, *, schema: str = "warehouse") -> None:
        import psycopg2

        super().__init__(schema)
        self.data_errors = (psycopg2.DataError, psycopg2.IntegrityError)
        self.conn = psycopg2.connect(dsn, options="-c TimeZone=UTC")
        self.conn.autocommit = True
        self._cur = self.conn.cursor()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._cur.execute(sql, tuple(params))
        return self._cur

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        from psycopg2.extras import execute_batch

        if rows:
            execute_batch(self._cur, sql, [tuple(r) for r in rows], page_size=500)

    def _upsert_rows(self, fq: str, cols: list[str], action: str,
                     rows: list[list[Any]]) -> None:
        from psycopg2.extras import execute_values

        names = ", ".join(_q(c) for c in cols)
        execute_values(self._cur, f"INSERT INTO {fq} ({names}) VALUES %s {action}",
                       [tuple(r) for r in rows], page_size=1000)

    def _existing_columns(self, ref: TableRef) -> list[str] | None:
        self._cur.execute("SELECT column_name FROM information_schema.columns WHERE "
                          "table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                          (self.schema, ref.name()))
        return [r[0] for r in self._cur.fetchall()] or None

    def close(self) -> None:
        self.conn.close()
