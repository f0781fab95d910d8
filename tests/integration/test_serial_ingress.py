"""Serial ingress through real pseudo-terminals: a test writes to the master side like a
sensor on a UART, `SerialIngress` opens the slave with pyserial (through a symlink, so a
"re-plugged" device can appear under the same path)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from edge.errors import ConfigError, RetriableError
from gateway.ingest import Origin, Outcome
from gateway.serialport import PARTIAL_LINE_CONTENT_TYPE, PortSettings, SerialIngress
from gateway.testing import RecordingIngest

pytestmark = pytest.mark.integration

LINE = b'{"device_id":"s1","timestamp":1705322445000,"value":72.5}'


class Device:
    """A sensor plugged into a pty; `path` is the stable symlink the gateway is told."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = -1
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        self.master = master
        target = os.ttyname(slave)
        os.close(slave)  # the gateway opens its own end, as with real hardware
        os.symlink(target, self.path)

    def unplug(self) -> None:
        os.unlink(self.path)
        os.close(self.master)
        self.master = -1

    async def write(self, data: bytes) -> None:
        # in a thread: a full pty buffer blocks the writer, and the reader is on this loop
        await asyncio.to_thread(_write_all, self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
        if self.path.is_symlink():
            os.unlink(self.path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    dev = Device(tmp_path / "ttyFIELD0")
    yield dev
    dev.close()


def port(device: Device, **overrides: object) -> PortSettings:
    base: dict[str, object] = {"path": str(device.path), "baudrate": 115200,
                               "backoff_base": 0.02, "backoff_cap": 0.1}
    base.update(overrides)
    return PortSettings(**base)  # type: ignore[arg-type]


async def started(ingress: SerialIngress, path: Path, connects: int = 1) -> None:
    await until(lambda: ingress.stats().ports[str(path)].connects >= connects
                and ingress.stats().ports[str(path)].connected)


async def test_json_lines_reach_ingest_in_order_with_hints(device: Device) -> None:
    ingest = RecordingIngest()
    async with SerialIngress([port(device, device_id="s1")], ingest=ingest) as ingress:
        await started(ingress, device.path)
        lines = [LINE.replace(b"72.5", str(i).encode()) for i in range(20)]
        await device.write(b"".join(line + b"\n" for line in lines))
        await until(lambda: len(ingest.calls) == 20)
        ok, detail = ingress.health()
        stats = ingress.stats().ports[str(device.path)]
    assert [c[0] for c in ingest.calls] == lines
    _, origin, durable = ingest.calls[0]
    assert origin == Origin(protocol="serial", peer=str(device.path), device_hint="s1",
                            content_type="application/json")
    assert durable is True
    assert ok and detail == "1/1 ports connected"
    assert stats.readings_accepted == 20 and stats.lines == 20


async def test_csv_lines_with_crlf(device: Device) -> None:
    ingest = RecordingIngest()
    async with SerialIngress([port(device, format="csv")], ingest=ingest) as ingress:
        await started(ingress, device.path)
        await device.write(b"s1,1705322445000,72.5,celsius\r\ns2,,19.0\r\n")
        await until(lambda: len(ingest.calls) == 2)
    assert [c[0] for c in ingest.calls] == [b"s1,1705322445000,72.5,celsius", b"s2,,19.0"]
    assert {c[1].content_type for c in ingest.calls} == {"text/csv"}


async def test_partial_lines_across_writes_are_joined(device: Device) -> None:
    ingest = RecordingIngest()
    async with SerialIngress([port(device)], ingest=ingest) as ingress:
        await started(ingress, device.path)
        for piece in (LINE[:10], LINE[10:31], LINE[31:] + b"\n" + LINE[:5], LINE[5:] + b"\n"):
            await device.write(piece)
            await asyncio.sleep(0.05)
        await until(lambda: len(ingest.calls) == 2)
    assert [c[0] for c in ingest.calls] == [LINE, LINE]


async def test_garbage_between_lines_goes_to_the_pipeline_and_reading_continues(
        device: Device) -> None:
    noise = b"\xff\xfe\x00\x9c\x81binary\x07"
    ingest = RecordingIngest(reject={noise: "malformed_payload"})
    settings = port(device, max_line_bytes=256)
    async with SerialIngress([settings], ingest=ingest) as ingress:
        await started(ingress, device.path)
        await device.write(LINE + b"\n" + noise + b"\n" + b"\x00\xff" * 1000 + b"\n"
                           + LINE + b"\n")
        await until(lambda: len(ingest.calls) == 4)
        stats = ingress.stats().ports[str(device.path)]
    payloads = [c[0] for c in ingest.calls]
    assert payloads[0] == LINE and payloads[1] == noise and payloads[3] == LINE
    # the over-long noise line is handed over one byte over the limit: the pipeline refuses
    # it as oversize, the framer never holds more than that
    assert len(payloads[2]) == 257
    assert stats.rejected == {"malformed_payload": 1}
    assert stats.overlong_lines == 1 and stats.discarded_bytes == 2000 - 257
    assert stats.readings_accepted == 3


async def test_unplug_and_replug_reconnects_and_continues(device: Device) -> None:
    ingest = RecordingIngest()
    async with SerialIngress([port(device)], ingest=ingest) as ingress:
        await started(ingress, device.path)
        await device.write(LINE + b"\n" + b'{"device_id":"s1","val')  # cut off by the unplug
        await until(lambda: len(ingest.calls) == 1)
        device.unplug()
        await until(lambda: not ingress.stats().ports[str(device.path)].connected)
        await asyncio.sleep(0.3)  # several reconnect attempts against a missing device
        failures = ingress.stats().ports[str(device.path)].open_failures
        assert failures >= 2
        ok, detail = ingress.health()
        assert ok and "waiting for" in detail  # an unplugged sensor is not a sick gateway
        device.plug()
        await started(ingress, device.path, connects=2)
        await device.write(LINE + b"\n")
        await until(lambda: len(ingest.calls) == 3)
        stats = ingress.stats().ports[str(device.path)]
    assert ingest.calls[0][0] == LINE
    partial, origin, _ = ingest.calls[1]
    assert partial == b'{"device_id":"s1","val'
    assert origin.content_type == PARTIAL_LINE_CONTENT_TYPE  # dead-lettered, never decoded
    assert ingest.calls[2][0] == LINE
    assert stats.connects == 2 and stats.disconnects == 1 and stats.partial_lines == 1


async def test_missing_port_at_start_is_retried_until_it_appears(tmp_path: Path) -> None:
    ingest = RecordingIngest()
    path = tmp_path / "ttyLATE"
    async with SerialIngress([PortSettings(str(path), backoff_base=0.02, backoff_cap=0.05)],
                             ingest=ingest) as ingress:
        await until(lambda: ingress.stats().ports[str(path)].open_failures >= 3)
        dev = Device(path)
        try:
            await started(ingress, path)
            await dev.write(LINE + b"\n")
            await until(lambda: len(ingest.calls) == 1)
        finally:
            dev.close()


class _Tracking(RecordingIngest):
    """Records the highest number of concurrent ingest calls; fails the first `busy` calls."""

    def __init__(self, delay: float = 0.0, busy: int = 0) -> None:
        super().__init__(delay=delay)
        self.busy = busy
        self.running = 0
        self.max_running = 0

    async def ingest(self, payload: bytes, origin: Origin, *, durable: bool = True) -> Outcome:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.busy:
                self.busy -= 1
                self.calls.append((payload, origin, durable))
                raise RetriableError("buffer full of alerts", reason="buffer_busy")
            return await super().ingest(payload, origin, durable=durable)
        finally:
            self.running -= 1


async def test_one_line_at_a_time_per_port_backpressure(device: Device) -> None:
    ingest = _Tracking(delay=0.02)
    async with SerialIngress([port(device)], ingest=ingest) as ingress:
        await started(ingress, device.path)
        lines = [LINE.replace(b"72.5", str(i).encode()) for i in range(15)]
        await device.write(b"".join(line + b"\n" for line in lines))
        await until(lambda: len(ingest.committed) == 15)
    assert ingest.committed == lines
    assert ingest.max_running == 1


async def test_a_line_is_retried_until_the_buffer_commits_it(device: Device) -> None:
    ingest = _Tracking(busy=3)
    async with SerialIngress([port(device)], ingest=ingest) as ingress:
        await started(ingress, device.path)
        await device.write(b"first\nsecond\n")
        await until(lambda: len(ingest.committed) == 2)
        stats = ingress.stats().ports[str(device.path)]
    assert [c[0] for c in ingest.calls] == [b"first"] * 4 + [b"second"]
    assert ingest.committed == [b"first", b"second"]
    assert stats.ingest_retries == 3


async def test_shutdown_closes_the_port(device: Device) -> None:
    async with SerialIngress([port(device)], ingest=RecordingIngest()) as ingress:
        await started(ingress, device.path)
    assert ingress.health()[0] is False
    assert not ingress.stats().ports[str(device.path)].connected
    # the exclusive lock was released: the port opens again
    conn = serial.Serial(str(device.path), exclusive=True, timeout=0)
    conn.close()


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="format"):
        PortSettings("/dev/ttyS0", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="configured twice"):
        SerialIngress([PortSettings("/dev/ttyS0"), PortSettings("/dev/ttyS0")],
                      ingest=RecordingIngest())
