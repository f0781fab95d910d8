"""Readings and events <-> table rows.

A reading row binds ten values: the de-duplication key `dk`, receive time, an interned series
id (device, measurement, unit, facility, line, zone), event time, value, quality code,
battery, sequence number, the sensor's claimed time, flags.  Strings are interned because
they are most of a reading's bytes (~120 B/reading on disk instead of ~200).  Decoding gives
back an equal `Reading` (a `received_ms` of 0 is stamped by `Buffer.append` before the key is
computed, so the stored key always matches the returned reading).
"""

from __future__ import annotations

import functools
import sqlite3
import struct
from typing import Any

import msgpack

from edge.model import FLAG_TS_MISSING, Event, Reading

_MASK48 = (1 << 48) - 1
#: what a malformed record (not the database) raises while being encoded or bound
RECORD_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError,
    TypeError, ValueError, AttributeError, struct.error)
QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAMES = {v: k for k, v in QUALITY_CODES.items()}

#: (device, measurement, unit, facility, line, zone); for events measurement is the kind
SeriesKey = tuple[str, str, str, str | None, str | None, str | None]

#: values per reading row
READING_PARAMS = 10
INSERT_EVENT = (
    "INSERT OR IGNORE INTO events(dk, prio, rx_ms, series, ts_ms, body)"
    " SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (SELECT 1 FROM seen WHERE dk = ?1)")
READING_COLS = "id, dk, rx_ms, series, ts_ms, value, quality, battery, seq, sensor_ts_ms, flags"
EVENT_COLS = "id, dk, prio, rx_ms, series, ts_ms, body, claim_id"


def time_prefix(t_ms: int) -> bytes:
    return (t_ms & _MASK48).to_bytes(6, "big")


def reading_prefix_ms(r: Reading) -> int:
    """The time stable across redeliveries of `r`: the sensor's own claim when it sent one."""
    if r.sensor_ts_ms is not None:
        return r.sensor_ts_ms
    if r.flags & FLAG_TS_MISSING:
        # no sensor time: with a sequence number the key is time-free, so the prefix must be
        # too; without one the key already contains the receive time
        return 0 if r.seq is not None else r.received_ms
    return r.ts_ms


class Series:
    """Interned string tuples.  Owned by one thread; additions are undone on rollback."""

    def __init__(self) -> None:
        self.ids: dict[SeriesKey, int] = {}
        self.keys: dict[int, SeriesKey] = {}
        self._added: list[SeriesKey] = []

    def load(self, conn: sqlite3.Connection) -> None:
        self.ids.clear()
        self.keys.clear()
        self._added.clear()
        for row in conn.execute(
                "SELECT id, device, measurement, unit, facility, line, zone FROM series"):
            key: SeriesKey = tuple(row[1:])  # type: ignore[assignment]
            self.ids.setdefault(key, row[0])
            self.keys[row[0]] = key

    def add(self, conn: sqlite3.Connection, key: SeriesKey) -> int:
        """Insert a new series inside the current transaction."""
        sid = conn.execute("INSERT INTO series(device, measurement, unit, facility, line, zone)"
                           " VALUES (?, ?, ?, ?, ?, ?)", key).lastrowid
        assert sid is not None
        self.ids[key] = sid
        self.keys[sid] = key
        self._added.append(key)
        return sid

    def committed(self) -> None:
        self._added.clear()

    def rolled_back(self) -> None:
        for key in self._added:
            sid = self.ids.pop(key, None)
            if sid is not None:
                self.keys.pop(sid, None)
        self._added.clear()


def reading_params(conn: sqlite3.Connection, series: Series, readings: list[Reading]
                   ) -> tuple[list[Any], list[bytes]]:
    """Flat parameters for `insert_reading_rows`, and the de-duplication keys in order.

    The hot path: one key hash and one dict lookup per reading.  Raises ValueError for a
    reading SQLite would store a NULL for (OR IGNORE would silently skip that row).

    Only values sqlite3 binds without its adaptation protocol are passed (int, float, str,
    bytearray): binding `bytes` or None costs it a registry lookup and two attribute probes,
    0.8–1 µs per value, more than the rest of the row.  So the key goes as a bytearray and an
    absent battery / seq / sensor time as "" (`NULLIF` in the statement turns it into NULL;
    "" can never be a real value of those numeric columns).
    """
    ids = series.ids
    params: list[Any] = []
    extend = params.extend
    dks: list[bytes] = []
    add_dk = dks.append
    qcodes = QUALITY_CODES
    for r in readings:
        skey = (r.device_id, r.measurement, r.unit, r.facility, r.line, r.zone)
        sid = ids.get(skey)
        if sid is None:
            sid = series.add(conn, skey)
        sts = r.sensor_ts_ms
        if sts is not None:
            t = sts
        elif r.flags & FLAG_TS_MISSING:
            t = 0 if r.seq is not None else r.received_ms
        else:
            t = r.ts_ms
        v = r.value
        b = r.battery_voltage
        if v != v or v is None or b != b or r.ts_ms is None or r.received_ms is None:
            # NaN would come back as NULL: refused, never silently changed
            raise ValueError(f"reading of {r.device_id!r} has no value or time, or a NaN")
        q = r.quality
        seq = r.seq
        dk = (t & _MASK48).to_bytes(6, "big") + r.idempotency_key()
        add_dk(dk)
        extend((bytearray(dk), r.received_ms, sid, r.ts_ms, v, qcodes.get(q, q),
                "" if b is None else b, "" if seq is None else seq,
                "" if sts is None else sts, r.flags))
    return params, dks


#: rows per INSERT statement.  One statement per chunk (not one per row, as executemany
#: does) matters beyond speed: Python releases the GIL around every SQLite step, and each
#: re-acquisition can wait for the event loop thread's switch interval
CHUNK = 512
#: statements are prepared for multiples of this many rows; the rest is padding
STEP = 16
#: a padding row: an integer key, which the statement's WHERE drops (a real key is a blob)
_PAD = (0,) * READING_PARAMS


@functools.lru_cache(maxsize=CHUNK // STEP)
def insert_readings_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * rows)
    return ("INSERT OR IGNORE INTO readings(dk, rx_ms, series, ts_ms, value, quality, battery,"
            " seq, sensor_ts_ms, flags) SELECT v.column1, v.column2, v.column3, v.column4,"
            " v.column5, v.column6, nullif(v.column7, ''), nullif(v.column8, ''),"
            f" nullif(v.column9, ''), v.column10 FROM (VALUES {values}) AS v"
            " WHERE typeof(v.column1) = 'blob'"
            " AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.dk = v.column1)")


def insert_reading_rows(conn: sqlite3.Connection, params: list[Any]) -> int:
    """Insert rows (flat `params` from `reading_params`), skipping keys already stored or
    sent.  Returns rows inserted.  Statements come in multiples of `STEP` rows (padded with
    rows the WHERE drops), so a few dozen prepared statements serve every group size."""
    n = len(params) // READING_PARAMS
    stored = 0
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        size = -(-rows // STEP) * STEP
        chunk = params[start * READING_PARAMS:(start + rows) * READING_PARAMS]
        if size > rows:
            chunk.extend(_PAD * (size - rows))
        stored += conn.execute(insert_readings_sql(size), chunk).rowcount
    return stored


@functools.lru_cache(maxsize=16)
def _insert_seen_sql(rows: int) -> str:
    return "INSERT OR IGNORE INTO seen(dk, t_ms) VALUES " + ",".join(["(?, ?)"] * rows)


def insert_seen(conn: sqlite3.Connection, dks: list[bytes], t_ms: int) -> int:
    """Remember de-duplication keys of sent rows; one statement per 512 keys (padding rows
    have a NULL key, which OR IGNORE drops).  Returns keys added."""
    added = 0
    for start in range(0, len(dks), CHUNK):
        part = dks[start:start + CHUNK]
        size = 1 << (len(part) - 1).bit_length()
        args: list[Any] = []
        for dk in part:
            args += (dk, t_ms)
        args += (None, t_ms) * (size - len(part))
        added += conn.execute(_insert_seen_sql(size), args).rowcount
    return added


def event_row(conn: sqlite3.Connection, series: Series, e: Event, rx_ms: int
              ) -> tuple[Any, ...]:
    skey: SeriesKey = (e.device_id, e.kind, "", None, None, None)
    sid = series.ids.get(skey)
    if sid is None:
        sid = series.add(conn, skey)
    body = msgpack.packb(e.body, use_bin_type=True)
    return (time_prefix(e.ts_ms) + bytes(e.key), int(e.priority), rx_ms, sid, e.ts_ms, body)


def decode_readings(series: Series, rows: list[tuple[Any, ...]]) -> list[Reading]:
    """Rows selected with READING_COLS -> Readings (positional: measurably cheaper)."""
    keys = series.keys
    names = QUALITY_NAMES
    out: list[Reading] = []
    append = out.append
    for _id, _dk, rx_ms, sid, ts_ms, value, q, battery, seq, sensor_ts, flags in rows:
        device, measurement, unit, facility, line, zone = keys[sid]
        append(Reading(device, ts_ms, value, measurement, unit, facility, line, zone,
                       names.get(q, str(q)) if q.__class__ is int else q, battery, seq, rx_ms,
                       sensor_ts, flags))
    return out


def decode_reading(series: Series, row: tuple[Any, ...]) -> Reading:
    return decode_readings(series, [row])[0]


def decode_event(series: Series, row: tuple[Any, ...]) -> Event:
    """A row selected with EVENT_COLS -> Event."""
    _id, dk, _prio, _rx, sid, ts_ms, body, _claim = row
    device, kind = series.keys[sid][:2]
    return Event(kind=kind, key=bytes(dk[6:]), ts_ms=ts_ms, device_id=device,
                 body=msgpack.unpackb(body, raw=False))
