"""The click window job on the embedded bus: results, late events, checkpoints, restarts."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cloud.archive.store import ArchiveStore
from cloud.bus import TopicSpec
from cloud.bus.embedded import EmbeddedBus
from cloud.clicks.events import WebEvent
from cloud.clicks.job import ClickWindowJob, JobSettings
from cloud.clicks.results import ResultWriter, line
from cloud.clicks.windows import WindowResult
from edge.testing import FakeClock

M = 60_000
T0 = 1_705_314_600_000


class FakeInflux:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def write(self, lines: Sequence[str]) -> list[tuple[int, str, str]]:
        self.lines += lines
        return []

    def points(self) -> dict[tuple[str, int], dict[str, str]]:
        """(event_type, start) -> fields of the last write of that point."""
        out = {}
        for text in self.lines:
            head, fields, ts = text.split(" ")
            event_type = head.split("event_type=")[1]
            out[(event_type, int(ts))] = dict(f.split("=") for f in fields.split(","))
        return out


def web_event(event_type: str, ts_ms: int, user: str) -> bytes:
    return WebEvent(event_id=str(uuid.uuid4()), user_id=user, session_id=f"s-{user}",
                    event_type=event_type, ts_ms=ts_ms, properties={}, context={},
                    source="web", received_ms=ts_ms).to_json()


async def produce(bus: EmbeddedBus, items: list[tuple[str, int, str]]) -> None:
    await bus.send_batch("web_events", [(u.encode(), web_event(et, ts, u), [])
                                        for et, ts, u in items])


def settings(tmp_path: Path) -> JobSettings:
    return JobSettings(checkpoint_path=tmp_path / "job.sqlite3", partitions=2,
                       size_ms=M, grace_ms=2 * M, idle_ms=3_600_000,
                       provisional_every_ms=0, checkpoint_every_ms=0, poll_ms=50,
                       http_port=None)


async def run_until(job: ClickWindowJob, cond: Any, within_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():  # noqa: ASYNC110 - polling the job's counters
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_windows_are_written_once_final_and_late_events_counted(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 10 * M)
    influx = FakeInflux()
    archive = ArchiveStore(str(tmp_path / "archive"))
    writer = ResultWriter(influx=influx, archive=archive, measurement="web_events_1m",
                          archive_dir="web_events_1m")
    async with EmbeddedBus(tmp_path / "bus.sqlite3", durable=False, clock=clock) as bus:
        await bus.ensure_topics([TopicSpec("web_events", 2)])
        await produce(bus, [("click", T0 + 1000, "u1"), ("click", T0 + 2000, "u2"),
                            ("click", T0 + 3000, "u1"), ("view", T0 + 4000, "u3"),
                            ("click", T0 + M + 1, "u1")])
        async with ClickWindowJob(settings(tmp_path), bus, writer, clock=clock) as job:
            await run_until(job, lambda: job.metrics.events._value.get() == 5)
            assert influx.lines == []
            # stream time passes the first minute's end + grace: it becomes final
            await produce(bus, [("view", T0 + 3 * M, "u9")])
            await run_until(job, lambda: ("click", T0) in influx.points())
            points = influx.points()
            assert points[("click", T0)] == {"events": "3i", "users": "2i", "sessions": "2i",
                                             "out_of_order": "0i", "final": "true",
                                             "window_ms": "60000i"}
            assert points[("view", T0)]["events"] == "1i"
            assert ("click", T0 + M) not in points  # still within its grace
            # an event for the final minute: late, counted, not written
            await produce(bus, [("click", T0 + 5, "u7")])
            await run_until(job, lambda: job.metrics.late.labels("click")._value.get() == 1)
    files = archive.files()
    assert [(d, n) for d, n, _ in files] == [
        ("web_events_1m/date=2024-01-15", f"minute-{T0}.parquet")]
    table = pq.read_table(str(tmp_path / "archive" / files[0][0] / files[0][1]))
    assert table.column("event_type").to_pylist() == ["click", "view"]
    assert table.column("events").to_pylist() == [3, 1]
    assert table.column("users").to_pylist() == [2, 1]


async def test_restart_from_the_checkpoint_counts_every_event_exactly_once(
        tmp_path: Path) -> None:
    clock = FakeClock(T0 + 10 * M)
    influx = FakeInflux()
    writer = ResultWriter(influx=influx, archive=None, measurement="m", archive_dir="d")
    s = settings(tmp_path)
    async with EmbeddedBus(tmp_path / "bus.sqlite3", durable=False, clock=clock) as bus:
        await bus.ensure_topics([TopicSpec("web_events", 2)])
        await produce(bus, [("click", T0 + i * 100, f"u{i % 7}") for i in range(40)])
        async with ClickWindowJob(s, bus, writer, clock=clock) as job:
            await run_until(job, lambda: job.metrics.events._value.get() == 40)
        # the group's commit is rolled back behind the checkpoint (a crash between the
        # checkpoint and the commit): the records re-read must be skipped, not re-counted
        conn = bus.connect()
        conn.execute("UPDATE group_offsets SET offset = 0")
        conn.close()
        await produce(bus, [("click", T0 + 5000 + i, f"u{i}") for i in range(10)])
        async with ClickWindowJob(s, bus, writer, clock=clock) as job:
            assert job.windows.open_windows == 1
            await run_until(job, lambda: job.metrics.events._value.get() == 10)
            assert job.metrics.skipped._value.get() == 40
            await produce(bus, [("view", T0 + 4 * M, "u1")])
            await run_until(job, lambda: ("click", T0) in influx.points())
    assert influx.points()[("click", T0)]["events"] == "50i"


async def test_bad_records_are_dead_lettered(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    writer = ResultWriter(influx=FakeInflux(), archive=None, measurement="m", archive_dir="d")
    async with EmbeddedBus(tmp_path / "bus.sqlite3", durable=False, clock=clock) as bus:
        await bus.ensure_topics([TopicSpec("web_events", 2),
                                 TopicSpec("web_events.deadletter", 1)])
        await bus.send_batch("web_events", [(b"k", b"not json", []),
                                            (b"k", json.dumps({"x": 1}).encode(), [])])
        async with ClickWindowJob(settings(tmp_path), bus, writer, clock=clock) as job:
            await run_until(job, lambda: job.metrics.bad._value.get() == 2)
        async with bus.consumer("t", ["web_events.deadletter"]) as c:
            dead = await c.getmany(timeout_ms=500)
    assert [r.header("reason") for r in dead] == [b"bad_record", b"bad_record"]
    assert dead[0].value == b"not json"


def test_line_protocol_of_a_result() -> None:
    r = WindowResult("add_to_cart", T0, T0 + M, 5, 3, 4, 1, final=False)
    assert line(r, "web_events_1m") == (
        "web_events_1m,event_type=add_to_cart events=5i,users=3i,sessions=4i,"
        f"out_of_order=1i,final=false,window_ms=60000i {T0}")
