"""Readings and events <-> table rows.

A reading row binds ten values: the de-duplication key `dk`, receive time, an interned series
id (device, measurement, unit, facility, line, zone), event time, value, quality code,
battery, sequence number, the sensor's claimed time, flags.  Strings are interned because
they are most of a reading's bytes (~120 B/reading on disk instead of ~200).  Decoding gives
back an equal `Reading` (a `received_ms` of 0 is stamped by `Buffer.append` before the key is
computed, so the stored key always matches the returned reading).
"""

from __future__ import annotations

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

INSERT_READING = (
    "INSERT OR IGNORE INTO readings(dk, rx_ms, series, ts_ms, value, quality, battery, seq,"
    " sensor_ts_ms, flags) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10"
    " WHERE NOT EXISTS (SELECT 1 FROM seen WHERE dk = ?1)")
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


def reading_rows(conn: sqlite3.Connection, series: Series, readings: list[Reading]
                 ) -> list[tuple[Any, ...]]:
    """Rows for INSERT_READING.  The hot path: one key hash and one dict lookup per reading."""
    ids = series.ids
    out: list[tuple[Any, ...]] = []
    append = out.append
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
        q = r.quality
        append(((t & _MASK48).to_bytes(6, "big") + r.idempotency_key(), r.received_ms, sid,
                r.ts_ms, r.value, qcodes.get(q, q), r.battery_voltage, r.seq, sts, r.flags))
    return out


def event_row(conn: sqlite3.Connection, series: Series, e: Event, rx_ms: int
              ) -> tuple[Any, ...]:
    skey: SeriesKey = (e.device_id, e.kind, "", None, None, None)
    sid = series.ids.get(skey)
    if sid is None:
        sid = series.add(conn, skey)
    body = msgpack.packb(e.body, use_bin_type=True)
    return (time_prefix(e.ts_ms) + bytes(e.key), int(e.priority), rx_ms, sid, e.ts_ms, body)


def decode_reading(series: Series, row: tuple[Any, ...]) -> Reading:
    """A row selected with READING_COLS -> Reading."""
    _id, _dk, rx_ms, sid, ts_ms, value, quality, battery, seq, sensor_ts, flags = row
    device, measurement, unit, facility, line, zone = series.keys[sid]
    return Reading(device_id=device, ts_ms=ts_ms, value=value, measurement=measurement,
                   unit=unit, facility=facility, line=line, zone=zone,
                   quality=QUALITY_NAMES.get(quality, str(quality)) if isinstance(quality, int)
                   else quality, battery_voltage=battery, seq=seq, received_ms=rx_ms,
                   sensor_ts_ms=sensor_ts, flags=flags)


def decode_event(series: Series, row: tuple[Any, ...]) -> Event:
    """A row selected with EVENT_COLS -> Event."""
    _id, dk, _prio, _rx, sid, ts_ms, body, _claim = row
    device, kind = series.keys[sid][:2]
    return Event(kind=kind, key=bytes(dk[6:]), ts_ms=ts_ms, device_id=device,
                 body=msgpack.unpackb(body, raw=False))
