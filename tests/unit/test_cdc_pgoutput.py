"""pgoutput v1 parsing and the text -> JSON conversions of the Debezium envelope (pure)."""

from __future__ import annotations

import struct

import pytest

from cloud.cdc import pgoutput as pg
from cloud.cdc.envelope import convert

# -- building protocol messages like the server does ------------------------------------------


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*cols: str | None | object) -> bytes:
    out = struct.pack(">h", len(cols))
    for c in cols:
        if c is None:
            out += b"n"
        elif c is pg.UNCHANGED:
            out += b"u"
        else:
            data = str(c).encode()
            out += b"t" + struct.pack(">i", len(data)) + data
    return out


def begin(final_lsn: int, commit_us: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, commit_us, xid)


def commit(commit_lsn: int, end_lsn: int, commit_us: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, commit_us)


def relation(oid: int, ns: str, name: str, cols: list[tuple[str, int, bool]],
             ident: str = "d") -> bytes:
    out = b"R" + struct.pack(">I", oid) + s(ns) + s(name) + ident.encode() + \
        struct.pack(">h", len(cols))
    for cname, type_oid, key in cols:
        out += struct.pack(">B", int(key)) + s(cname) + struct.pack(">Ii", type_oid, -1)
    return out


def insert(oid: int, *cols: str | None) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tuple_data(*cols)


def update(oid: int, new: tuple[object, ...], old: tuple[object, ...] | None = None,
           kind: str = "O") -> bytes:
    out = b"U" + struct.pack(">I", oid)
    if old is not None:
        out += kind.encode() + tuple_data(*old)
    return out + b"N" + tuple_data(*new)


def delete(oid: int, kind: str, *cols: str | None) -> bytes:
    return b"D" + struct.pack(">I", oid) + kind.encode() + tuple_data(*cols)


def truncate(*oids: int, options: int = 0) -> bytes:
    return b"T" + struct.pack(">IB", len(oids), options) + b"".join(
        struct.pack(">I", o) for o in oids)


# -- tests ---------------------------------------------------------------------------------------


def test_begin_commit_and_lsns() -> None:
    b = pg.parse(begin(0x1944B58, 817_000_000_000, 771))
    assert b == pg.Begin(0x1944B58, 817_000_000_000, 771)
    c = pg.parse(commit(0x1944B58, 0x1944B88, 817_000_000_000))
    assert isinstance(c, pg.Commit) and c.end_lsn == 0x1944B88
    assert pg.format_lsn(0x1_0000_0010) == "1/10"
    assert pg.parse_lsn("0/1944B58") == 0x1944B58
    assert pg.pg_time_to_unix_us(0) == 946_684_800_000_000


def test_relation_and_row_messages() -> None:
    r = pg.parse(relation(16421, "public", "orders", [("id", 23, True), ("name", 25, False)]))
    assert isinstance(r, pg.Relation)
    assert r.qualified == "public.orders" and r.replica_identity == "d"
    assert r.columns == (pg.Column("id", 23, -1, True), pg.Column("name", 25, -1, False))
    assert pg.parse(insert(16421, "1", None)) == pg.Insert(16421, ("1", None))
    u = pg.parse(update(16421, ("2", pg.UNCHANGED), ("1", None), kind="K"))
    assert u == pg.Update(16421, ("2", pg.UNCHANGED), "K", ("1", None))
    assert pg.parse(update(16421, ("1", "x"))) == pg.Update(16421, ("1", "x"))
    assert pg.parse(delete(16421, "O", "1", "x")) == pg.Delete(16421, "O", ("1", "x"))
    t = pg.parse(truncate(1, 2, options=3))
    assert t == pg.Truncate((1, 2), cascade=True, restart_identity=True)
    assert pg.parse(b"O" + struct.pack(">Q", 5) + s("elsewhere")) == pg.Origin(5, "elsewhere")
    assert pg.parse(b"Y" + struct.pack(">I", 9) + s("public") + s("mood")) == \
        pg.TypeInfo(9, "public", "mood")


@pytest.mark.parametrize("payload", [
    b"", b"Z", b"B\x00", b"I" + struct.pack(">I", 1) + b"X",
    insert(1, "a") + b"junk", b"R" + struct.pack(">I", 1) + b"unterminated",
    b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"q",
    b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 10),
])
def test_malformed_messages_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(pg.ProtocolError):
        pg.parse(payload)


@pytest.mark.parametrize(("text", "oid", "value"), [
    ("42", 23, 42), ("-9223372036854775808", 20, -9223372036854775808), ("t", 16, True),
    ("f", 16, False), ("1.5", 701, 1.5), ("NaN", 701, "NaN"), ("Infinity", 700, "Infinity"),
    ("12345678901234567890.123", 1700, "12345678901234567890.123"),
    ("2024-01-15", 1082, 19737), ("infinity", 1082, "infinity"),
    ("2024-01-15 10:30:45.5", 1114, 1_705_314_645_500_000),
    ("2024-01-15 10:30:45.5+00", 1184, "2024-01-15T10:30:45.5Z"),
    ("2024-01-15 12:30:45+02", 1184, "2024-01-15T10:30:45Z"),
    ("2024-01-15 16:00:45.25+05:30", 1184, "2024-01-15T10:30:45.25Z"),
    ("10:30:45.000001", 1083, 37_845_000_001), ("\\x0102ff", 17, "AQL/"),
    ('{"a": 1}', 3802, '{"a": 1}'), ("hello", 25, "hello"), (None, 23, None),
    ("5b0b6f1e-4a7e-4bb9-9a51-2c8f1f7e9d10", 2950, "5b0b6f1e-4a7e-4bb9-9a51-2c8f1f7e9d10"),
])
def test_column_conversions(text: str | None, oid: int, value: object) -> None:
    assert convert(text, oid) == value
