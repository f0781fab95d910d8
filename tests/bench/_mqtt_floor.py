"""The smallest Python MQTT ingest that keeps the gateway's promise: a reference floor.

    python tests/bench/_mqtt_floor.py PORT DATABASE [COMMIT_MS]

`tests/bench/ingest.py` runs it under the same fleet as the gateway and Mosquitto, so the
figures say what any asyncio (uvloop) ingest costs on this machine before it does anything
useful: an `asyncio.Protocol` that frames packets, answers CONNECT and PINGREQ, and for every
PUBLISH stores topic, raw payload and receive time in SQLite (WAL, `synchronous=FULL`, one
group commit every COMMIT_MS on a writer thread) and sends the QoS 1 PUBACK only after that
commit.  Nothing is decoded, validated, de-duplicated, routed or windowed, and there is no
authentication, ACL, back-pressure or metrics — it is a measuring stick, not a broker, and is
not part of fieldlink.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import threading
import time
from typing import Any

import uvloop

CONNACK = b"\x20\x02\x00\x00"
PINGRESP = b"\xd0\x00"


class Floor:
    def __init__(self, path: str, commit_ms: float) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS readings(id INTEGER PRIMARY KEY,"
                        " topic BLOB, payload BLOB, rx_ms INTEGER)")
        self.commit_s = commit_ms / 1000
        self.pending: list[tuple[Conn, int, bytes, bytes]] = []
        self.cv = threading.Condition()
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, item: tuple[Conn, int, bytes, bytes]) -> None:
        with self.cv:
            self.pending.append(item)
            if len(self.pending) == 1:
                self.cv.notify()

    def writer(self) -> None:
        while True:
            with self.cv:
                while not self.pending:
                    self.cv.wait()
            time.sleep(self.commit_s)  # the group: whatever arrives in the interval
            with self.cv:
                batch, self.pending = self.pending, []
            now = int(time.time() * 1000)
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO readings(topic, payload, rx_ms) VALUES (?, ?, ?)",
                                [(t, p, now) for _, _, t, p in batch])
            self.db.execute("COMMIT")
            assert self.loop is not None
            self.loop.call_soon_threadsafe(acknowledge, batch)


def acknowledge(batch: list[tuple[Conn, int, bytes, bytes]]) -> None:
    for conn, pid, _, _ in batch:
        if pid and not conn.closed:
            conn.transport.write(b"\x40\x02" + pid.to_bytes(2, "big"))


class Conn(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.buf = b""
        self.closed = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data, self.buf = self.buf + data, b""
        pos, n = 0, len(data)
        while pos < n:
            b0, i, length, shift = data[pos], pos + 1, 0, 0
            while True:
                if i >= n:
                    self.buf = data[pos:]
                    return
                digit = data[i]
                i += 1
                length |= (digit & 0x7F) << shift
                if digit < 0x80:
                    break
                shift += 7
            end = i + length
            if end > n:
                self.buf = data[pos:]
                return
            kind = b0 >> 4
            if kind == 3:
                te = i + 2 + ((data[i] << 8) | data[i + 1])
                if (b0 >> 1) & 3:
                    pid, ps = (data[te] << 8) | data[te + 1], te + 2
                else:
                    pid, ps = 0, te
                self.floor.add((self, pid, data[i + 2:te], data[ps:end]))
            elif kind == 1:
                self.transport.write(CONNACK)
            elif kind == 12:
                self.transport.write(PINGRESP)
            elif kind == 14:
                self.transport.close()
            pos = end


async def serve(port: int, path: str, commit_ms: float) -> None:
    floor = Floor(path, commit_ms)
    floor.loop = loop = asyncio.get_running_loop()
    threading.Thread(target=floor.writer, daemon=True, name="floor-writer").start()
    server = await loop.create_server(lambda: Conn(floor), "127.0.0.1", port, backlog=4096)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    async with server:
        await stopped.wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2],
                     float(sys.argv[3]) if len(sys.argv) > 3 else 5.0))
