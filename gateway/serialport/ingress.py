"""Serial ingress: line-delimited JSON or CSV from sensors wired to the gateway's UARTs.

    async with SerialIngress([PortSettings("/dev/ttyUSB0", 115200, format="csv")],
                             ingest=pipeline) as serial_in:
        ...

One task per port (named ``serial:<path>``) on the event loop, no threads: pyserial opens and
configures the port (raw mode, baud rate, exclusive lock), then the task waits for the
non-blocking descriptor with `loop.add_reader` and reads whatever is there.  Chosen over a
reader thread per port because it needs no thread hand-off, no `timeout` polling and stops
instantly on shutdown; it requires a selectable descriptor, which every POSIX tty has.

Guarantees:

* Lines of one port reach `ingest()` in the order they arrived, one at a time, with
  `durable=True`: the next line is not read before the previous one is committed, so a
  slow buffer slows the port down (the kernel's tty buffer holds what arrives meanwhile)
  instead of growing memory.
* Nothing is acknowledged on serial, so nothing may be given up: when the buffer cannot
  commit (`RetriableError`) the same line is retried with capped jittered backoff until it
  is committed; only a shutdown stops the retrying (the line is then logged, raw, and
  counted in `lost_on_shutdown`).
* Garbage never stops a port: every frame the framer produces goes to the pipeline, which
  decodes it or dead-letters it with its raw bytes (all dead-lettering stays there).  A line
  over `max_line_bytes` is handed over as its first `max_line_bytes + 1` bytes, which the
  pipeline refuses as `oversize` as long as its payload limit is not above `max_line_bytes`
  (both default to 65536; keep them so).  The unterminated rest of a line when a port goes
  away is handed over with the content type `PARTIAL_LINE_CONTENT_TYPE`, which the decoder
  refuses (`unknown_encoding`), so a cut-off reading is dead-lettered, never stored.
* A port that disappears (USB unplugged, EIO/EOF on read) or cannot be opened is retried
  with `edge.backoff.Backoff` (full jitter, capped); the backoff resets once data flowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import serial

from edge.backoff import Backoff
from edge.errors import ConfigError, RetriableError
from gateway.ingest import Ingest, Origin, Outcome
from gateway.serialport.framing import Frame, FrameKind, LineFramer

log = logging.getLogger("fieldlink.gateway.serial")

CONTENT_TYPES = {"json": "application/json", "csv": "text/csv"}
#: hint for a line cut off by a disconnect: the decoder does not know it and refuses it
PARTIAL_LINE_CONTENT_TYPE = "application/x-fieldlink-partial-line"
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class PortSettings:
    path: str
    baudrate: int = 115200
    format: Literal["json", "csv"] = "json"
    #: the device hint for every line of this port (a port wired to one sensor)
    device_id: str | None = None
    max_line_bytes: int = 65536
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        where = f"serial[{self.path}]"
        if not self.path:
            problems.append((f"{where}.path", "must not be empty"))
        if self.format not in CONTENT_TYPES:
            problems.append((f"{where}.format", f"{self.format!r} is not one of json, csv"))
        if self.baudrate <= 0:
            problems.append((f"{where}.baudrate", "must be positive"))
        if self.max_line_bytes <= 0:
            problems.append((f"{where}.max_line_bytes", "must be positive"))
        if not 0 < self.backoff_base <= self.backoff_cap:
            problems.append((f"{where}.backoff_base", "must be positive and ≤ backoff_cap"))
        if problems:
            raise ConfigError("serial", problems)


@dataclass(slots=True)
class PortStats:
    path: str
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    open_failures: int = 0
    bytes_read: int = 0
    lines: int = 0
    readings_accepted: int = 0
    duplicates: int = 0
    #: lines the pipeline refused (dead-lettered there), by reason
    rejected: dict[str, int] = field(default_factory=dict)
    overlong_lines: int = 0
    partial_lines: int = 0
    blank_lines: int = 0
    discarded_bytes: int = 0
    #: ingest attempts that hit a buffer that could not commit (the line was retried)
    ingest_retries: int = 0
    lost_on_shutdown: int = 0
    internal_errors: int = 0
    last_error: str = ""


@dataclass(slots=True)
class SerialStats:
    ports: dict[str, PortStats] = field(default_factory=dict)


class _Stopping(Exception):
    """The ingress is shutting down while a line still waits for a commit."""


class SerialIngress:
    """Reads every configured port until the `async with` block ends.

    `stats()` and `health()` are cheap and may be called from the metrics scrape and the
    health endpoint.  Shutdown: the tasks finish the chunk they are delivering (bounded by
    `shutdown_grace_s`), then are cancelled; ports are closed either way.
    """

    def __init__(self, ports: list[PortSettings], *, ingest: Ingest,
                 shutdown_grace_s: float = 5.0) -> None:
        paths = [p.path for p in ports]
        duplicated = sorted({p for p in paths if paths.count(p) > 1})
        if duplicated:
            raise ConfigError("serial", [("serial", f"port {p} is configured twice")
                                         for p in duplicated])
        self._ports = list(ports)
        self._ingest = ingest
        self._grace = shutdown_grace_s
        self._stats = {p.path: PortStats(path=p.path) for p in ports}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._framers: dict[str, LineFramer] = {}
        self._stop: asyncio.Future[None] | None = None

    def stats(self) -> SerialStats:
        out = SerialStats()
        for path, st in self._stats.items():
            snapshot = dataclasses.replace(st, rejected=dict(st.rejected))
            framer = self._framers.get(path)
            if framer is not None:  # the live connection's counters, not yet folded in
                snapshot.blank_lines += framer.blank_lines
                snapshot.discarded_bytes += framer.discarded_bytes
            out.ports[path] = snapshot
        return out

    def health(self) -> tuple[bool, str]:
        """Fails only when a port's reader died; an unplugged sensor is not a sick gateway."""
        dead = [path for path, task in self._tasks.items() if task.done()]
        if dead or self._stop is None:
            return False, f"serial reader stopped: {', '.join(dead) or 'not running'}"
        down = [path for path, st in self._stats.items() if not st.connected]
        up = len(self._stats) - len(down)
        detail = f"{up}/{len(self._stats)} ports connected"
        return True, detail + (f"; waiting for {', '.join(down)}" if down else "")

    async def __aenter__(self) -> SerialIngress:
        self._stop = asyncio.get_running_loop().create_future()
        for port in self._ports:
            self._tasks[port.path] = asyncio.create_task(
                self._run_port(port), name=f"serial:{port.path}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stop is None:
            return
        if not self._stop.done():
            self._stop.set_result(None)
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._stop = None

    # -- one port -------------------------------------------------------------------------

    @property
    def _stopping(self) -> bool:
        return self._stop is None or self._stop.done()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on shutdown."""
        if self._stop is not None and not self._stop.done():
            await asyncio.wait({self._stop}, timeout=seconds)

    async def _run_port(self, port: PortSettings) -> None:
        st = self._stats[port.path]
        backoff = Backoff(base=port.backoff_base, cap=port.backoff_cap)
        in_outage = False
        while not self._stopping:
            try:
                conn = await asyncio.to_thread(_open, port)
            except (serial.SerialException, OSError, ValueError) as err:
                st.open_failures += 1
                st.last_error = str(err)
                delay = backoff.next_delay()
                # the first failure of an outage is news; the retries after it are not
                log.log(logging.DEBUG if in_outage else logging.WARNING,
                        "serial port unavailable", extra={"fields": {
                            "port": port.path, "error": str(err),
                            "retry_in_s": round(delay, 3)}})
                in_outage = True
                await self._pause(delay)
                continue
            in_outage = False
            st.connected = True
            st.connects += 1
            log.info("serial port open", extra={"fields": {
                "port": port.path, "baudrate": port.baudrate, "format": port.format}})
            try:
                flowed = await self._pump(port, conn, st)
            finally:
                st.connected = False
                conn.close()
            if flowed:
                backoff.reset()
            if not self._stopping:
                st.disconnects += 1
                delay = backoff.next_delay()
                log.warning("serial port lost", extra={"fields": {
                    "port": port.path, "error": st.last_error, "retry_in_s": round(delay, 3)}})
                await self._pause(delay)

    async def _pump(self, port: PortSettings, conn: serial.Serial, st: PortStats) -> bool:
        """Read and deliver until the port goes away or shutdown.  True if data flowed."""
        loop = asyncio.get_running_loop()
        fd = conn.fileno()
        framer = self._framers[port.path] = LineFramer(port.max_line_bytes)
        flowed = False
        try:
            while not self._stopping:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _set_once, ready)
                try:
                    assert self._stop is not None
                    await asyncio.wait({ready, self._stop},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    loop.remove_reader(fd)
                if not ready.done():
                    break
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as err:  # EIO / ENODEV: the device is gone
                    st.last_error = f"read failed: {err}"
                    break
                if not chunk:  # readable but empty: hang-up
                    st.last_error = "end of stream (hang-up)"
                    break
                flowed = True
                st.bytes_read += len(chunk)
                for frame in framer.feed(chunk):
                    await self._deliver(port, frame, st)
        finally:
            del self._framers[port.path]
            st.blank_lines += framer.blank_lines
            st.discarded_bytes += framer.discarded_bytes
            rest = framer.flush()
            if rest is not None:
                await self._deliver(port, rest, st)
        return flowed

    async def _deliver(self, port: PortSettings, frame: Frame, st: PortStats) -> None:
        st.lines += 1
        if frame.kind is FrameKind.OVERLONG:
            st.overlong_lines += 1
            content_type = CONTENT_TYPES[port.format]
        elif frame.kind is FrameKind.PARTIAL:
            st.partial_lines += 1
            content_type = PARTIAL_LINE_CONTENT_TYPE
        else:
            content_type = CONTENT_TYPES[port.format]
        origin = Origin(protocol="serial", peer=port.path, device_hint=port.device_id,
                        content_type=content_type)
        try:
            outcome = await self._ingest_until_committed(frame.data, origin, port, st)
        except _Stopping:
            st.lost_on_shutdown += 1
            log.error("serial line not committed before shutdown", extra={"fields": {
                "port": port.path, "raw_hex": frame.data[:256].hex()}})
            return
        except Exception:
            st.internal_errors += 1
            log.exception("serial ingest failed unexpectedly", extra={"fields": {
                "port": port.path, "raw_hex": frame.data[:256].hex()}})
            return
        st.readings_accepted += outcome.accepted
        st.duplicates += outcome.duplicates
        if outcome.rejected is not None:
            st.rejected[outcome.rejected] = st.rejected.get(outcome.rejected, 0) + 1
            log.debug("serial line rejected", extra={"fields": {
                "port": port.path, "reason": outcome.rejected, "detail": outcome.detail}})

    async def _ingest_until_committed(self, data: bytes, origin: Origin, port: PortSettings,
                                      st: PortStats) -> Outcome:
        backoff = Backoff(base=min(0.05, port.backoff_base), cap=port.backoff_cap)
        while True:
            try:
                return await self._ingest.ingest(data, origin, durable=True)
            except RetriableError as err:
                st.ingest_retries += 1
                st.last_error = f"{err.reason}: {err.message}"
                if self._stopping:
                    raise _Stopping() from err
                delay = backoff.next_delay()
                log.warning("serial line waits for the buffer", extra={"fields": {
                    "port": port.path, "reason": err.reason, "retry_in_s": round(delay, 3)}})
                await self._pause(delay)
                if self._stopping:
                    raise _Stopping() from err


def _open(port: PortSettings) -> serial.Serial:
    conn = serial.Serial(port=port.path, baudrate=port.baudrate, timeout=0, exclusive=True)
    os.set_blocking(conn.fileno(), False)
    return conn


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
