"""The pgoutput logical replication protocol, version 1 — parsing only, pure.

PostgreSQL's built-in output plugin sends one message per `XLogData` payload
(https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html):

    B  Begin      final LSN of the transaction, commit time, xid
    C  Commit     flags, commit LSN, end LSN, commit time
    O  Origin     origin LSN, origin name (replicated-from-elsewhere transactions)
    R  Relation   oid, namespace, name, replica identity, columns (key flag, name, type, typmod)
    Y  Type       oid, namespace, name (only for non-built-in types)
    I  Insert     oid, 'N' + tuple
    U  Update     oid, optional 'K' (old key) or 'O' (old row) tuple, 'N' + new tuple
    D  Delete     oid, 'K' or 'O' + tuple
    T  Truncate   relation count, options (1 cascade, 2 restart identity), oids
    M  Message    logical decoding message (only with `messages 'true'`; parsed and ignored)

Protocol version 1 sends a transaction only once it committed, whole, in commit order; the
server spills big transactions to disk, so the client sees a stream it can process without
holding a transaction in memory.  A tuple column is `None` (SQL NULL), `UNCHANGED` (an
unmodified TOASTed value the server did not send) or its text representation (the type's
output function, with the walsender's DateStyle/TimeZone).

`parse(payload)` returns one of the dataclasses below; unknown message types raise
`ProtocolError` (a newer server/protocol: the connector must not guess).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["UNCHANGED", "Begin", "Column", "Commit", "Delete", "Insert", "Message", "Origin",
           "ProtocolError", "Relation", "Truncate", "Tuple", "TypeInfo", "Update",
           "format_lsn", "parse", "parse_lsn", "pg_time_to_unix_us"]


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


#: an unchanged TOAST value ('u'): the server did not send it
UNCHANGED: Final = _Unchanged()

#: a decoded tuple: per column None, UNCHANGED or the text value
Tuple = tuple[str | _Unchanged | None, ...]

#: microseconds from the Unix epoch to PostgreSQL's (2000-01-01)
PG_EPOCH_US = 946_684_800_000_000


class ProtocolError(ValueError):
    """A payload that is not a pgoutput v1 message."""


def pg_time_to_unix_us(pg_us: int) -> int:
    return pg_us + PG_EPOCH_US


def format_lsn(lsn: int) -> str:
    """`0/16B3748` for 23803720."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    if not lo:
        raise ValueError(f"{text!r} is not an LSN (like 0/16B3748)")
    return (int(hi, 16) << 32) | int(lo, 16)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    #: part of the replica identity (the primary key with REPLICA IDENTITY DEFAULT)
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    #: 'd' default, 'n' nothing, 'f' full, 'i' index
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    oid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    oid: int
    new: Tuple
    #: 'K' (key columns only), 'O' (the whole old row) or None (not sent)
    old_kind: str | None = None
    old: Tuple | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    oid: int
    old_kind: str
    old: Tuple


@dataclass(frozen=True, slots=True)
class Truncate:
    oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Parsed = Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | \
    Message


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 1  # past the message type byte

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError(f"message truncated: needed {n} bytes at offset {self.pos}")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def i64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"unterminated string at offset {self.pos}")
        out = self.buf[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return out

    def tuple(self) -> Tuple:
        n = self.i16()
        out: list[str | _Unchanged | None] = []
        for _ in range(n):
            kind = chr(self.u8())
            if kind == "n":
                out.append(None)
            elif kind == "u":
                out.append(UNCHANGED)
            elif kind == "t":
                out.append(self.take(self.i32()).decode("utf-8"))
            elif kind == "b":
                raise ProtocolError("binary tuple data: the connector asks for text")
            else:
                raise ProtocolError(f"unknown tuple column kind {kind!r}")
        return tuple(out)

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError(f"{len(self.buf) - self.pos} trailing bytes")


def parse(payload: bytes) -> Parsed:
    """One pgoutput v1 message."""
    if not payload:
        raise ProtocolError("empty message")
    r = _Reader(bytes(payload))
    kind = chr(payload[0])
    out: Parsed
    if kind == "B":
        out = Begin(r.u64(), r.i64(), r.u32())
    elif kind == "C":
        out = Commit(r.u8(), r.u64(), r.u64(), r.i64())
    elif kind == "O":
        out = Origin(r.u64(), r.string())
    elif kind == "R":
        oid, namespace, name, ident = r.u32(), r.string(), r.string(), chr(r.u8())
        columns = []
        for _ in range(r.i16()):
            flags = r.u8()
            columns.append(Column(r.string(), r.u32(), r.i32(), bool(flags & 1)))
        out = Relation(oid, namespace, name, ident, tuple(columns))
    elif kind == "Y":
        out = TypeInfo(r.u32(), r.string(), r.string())
    elif kind == "I":
        oid = r.u32()
        if chr(r.u8()) != "N":
            raise ProtocolError("insert without a new tuple")
        out = Insert(oid, r.tuple())
    elif kind == "U":
        oid = r.u32()
        tag = chr(r.u8())
        old_kind = old = None
        if tag in ("K", "O"):
            old_kind, old = tag, r.tuple()
            tag = chr(r.u8())
        if tag != "N":
            raise ProtocolError(f"update: expected a new tuple, got {tag!r}")
        out = Update(oid, r.tuple(), old_kind, old)
    elif kind == "D":
        oid = r.u32()
        tag = chr(r.u8())
        if tag not in ("K", "O"):
            raise ProtocolError(f"delete: expected a key or old tuple, got {tag!r}")
        out = Delete(oid, tag, r.tuple())
    elif kind == "T":
        n = r.u32()
        options = r.u8()
        out = Truncate(tuple(r.u32() for _ in range(n)), bool(options & 1), bool(options & 2))
    elif kind == "M":
        transactional = bool(r.u8())
        lsn, prefix = r.u64(), r.string()
        out = Message(transactional, lsn, prefix, r.take(r.u32()))
    else:
        raise ProtocolError(f"unknown pgoutput message type {kind!r}")
    r.done()
    return out
