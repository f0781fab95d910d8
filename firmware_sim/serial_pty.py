"""Serial devices: each writes newline-terminated payloads to its own pseudo-terminal.

`connect()` opens a pty pair (`os.openpty()`), puts the slave side in raw mode (no echo,
no line editing, no CR/LF translation, no 4 KiB canonical line limit) and exposes its path
as `SerialLink.port` — a gateway's serial reader opens that path like a real UART.  The
simulator keeps the slave open itself, so the port stays valid while a reader comes and
goes.

Lines are JSON (`encode_json`) or CSV (see `firmware_sim.payloads`).  Serial has no
acknowledgement: a reading counts as unconfirmed once all of its bytes are written to the
pty.  When nobody reads, the kernel buffer fills; the link then stops taking sends
(`writable` False) and the fleet queues them; lines still unwritten at close fail with
reason ``serial_unread``.
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections import deque
from typing import Any

from firmware_sim.device import Emission
from firmware_sim.link import LinkEvents

#: bytes buffered in the simulator per port before it stops taking sends
_HIGH_WATER = 256 * 1024


class SerialLink:
    def __init__(self, events: LinkEvents, owner: Any):
        self._events = events
        self._owner = owner
        self.connected = False
        self.writable = True
        self.port: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._out: deque[tuple[memoryview, Emission]] = deque()
        self._buffered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_on = False

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._master is None:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self.port = os.ttyname(slave)
        self.connected = True

    def send(self, e: Emission, qos: int) -> None:
        self._out.append((memoryview(e.payload + b"\n"), e))
        self._buffered += len(e.payload) + 1
        self._flush()

    def _flush(self) -> None:
        master = self._master
        assert master is not None
        out = self._out
        while out:
            view, e = out[0]
            try:
                n = os.write(master, view)
            except BlockingIOError:
                n = 0
            except OSError:
                # the pty is gone (closed underneath us): what is left can never be read
                self._fail_all("serial_closed")
                return
            self._buffered -= n
            if n < len(view):
                out[0] = (view[n:], e)
                self._want_write(True)
                self.writable = self._buffered < _HIGH_WATER
                return
            out.popleft()
            self._events.link_sent(self._owner, e)
        self._want_write(False)
        if not self.writable:
            self.writable = True
            self._events.link_writable(self._owner)

    def _want_write(self, on: bool) -> None:
        if on == self._writer_on or self._loop is None or self._master is None:
            return
        self._writer_on = on
        if on:
            self._loop.add_writer(self._master, self._flush)
        else:
            self._loop.remove_writer(self._master)

    def _fail_all(self, reason: str) -> None:
        self._want_write(False)
        while self._out:
            _, e = self._out.popleft()
            self._events.link_failed(self._owner, e, reason)
        self._buffered = 0

    def inflight(self) -> int:
        return 0

    def take_unacked(self) -> list[Emission]:
        return []

    def abort(self) -> None:
        # a serial line has no connection to drop
        pass

    async def close(self) -> None:
        self.connected = False
        self._fail_all("serial_unread")
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def housekeeping(self, now: float) -> None:
        pass
