"""cloud.sinks.influx.writer: retries, Retry-After, and finding the points InfluxDB refuses.

The server is a fake at the `send(gzipped body) -> WriteResponse` seam that answers the way
influxd 1.8 does (the integration tests check the real one)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

import pytest

from cloud.errors import SinkMisconfigured, SinkUnavailable
from cloud.sinks.influx.client import WriteResponse, duration_seconds
from cloud.sinks.influx.writer import BatchWriter, classify, gzip_lines
from cloud.sinks.metrics import SinkMetrics
from edge.backoff import Backoff


class FakeInflux:
    """Stores lines; refuses lines the predicate marks bad, as a 1.8 partial write."""

    def __init__(self, bad: Callable[[str], str | None] = lambda line: None) -> None:
        self.bad = bad
        self.stored: dict[str, str] = {}
        self.requests: list[list[str]] = []
        self.script: list[WriteResponse | Exception] = []

    async def send(self, body: bytes) -> WriteResponse:
        lines = gzip.decompress(body).decode().split("\n")
        self.requests.append(lines)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        errors = []
        for line in lines:
            why = self.bad(line)
            if why is None:
                self.stored[line.rsplit(" ", 1)[0]] = line
            else:
                errors.append(why)
        if errors:
            return WriteResponse(400, f"partial write: {errors[0]} dropped={len(errors)}")
        return WriteResponse(204)


def _conflict(measurement: str) -> Callable[[str], str | None]:
    def bad(line: str) -> str | None:
        if line.startswith(measurement + ","):
            return (f'field type conflict: input field "value" on measurement "{measurement}" '
                    "is type float, already exists as type integer")
        return None
    return bad


def _writer(server: FakeInflux, **kw: object) -> BatchWriter:
    return BatchWriter(server.send, SinkMetrics("influxdb"),
                       backoff=Backoff(base=0.001, cap=0.002), **kw)  # type: ignore[arg-type]


def _lines(n: int, measurement: str = "temperature", start: int = 0) -> list[str]:
    return [f"{measurement},device_id=d{i} value={i}.5 {1_705_322_400_000 + i}"
            for i in range(start, start + n)]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: object) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("cloud.sinks.influx.writer.asyncio.sleep", fake_sleep)
    return slept


def test_gzip_lines_round_trips() -> None:
    lines = _lines(1000)
    body = gzip_lines(lines)
    assert gzip.decompress(body).decode().split("\n") == lines
    assert len(body) < len("\n".join(lines)) / 4


async def test_a_clean_batch_is_one_request() -> None:
    server = FakeInflux()
    assert await _writer(server).write(_lines(500)) == []
    assert len(server.requests) == 1 and len(server.stored) == 500


async def test_one_bad_point_is_found_and_the_rest_stored() -> None:
    lines = _lines(1000)
    bad_line = lines[637]
    server = FakeInflux(lambda line: "unable to parse 'x': bad" if line == bad_line else None)
    rejected = await _writer(server).write(lines)
    assert rejected == [(637, "unparsable", "partial write: unable to parse 'x': bad dropped=1")]
    assert len(server.stored) == 999
    assert len(server.requests) <= 2 * 10 + 1  # ~2 log2(n)


async def test_field_type_conflict_splits_by_measurement_first() -> None:
    lines = _lines(400) + _lines(100, "pressure") + _lines(400, start=400)
    server = FakeInflux(_conflict("pressure"))
    rejected = await _writer(server).write(lines)
    assert [i for i, _, _ in rejected] == list(range(400, 500))
    assert {reason for _, reason, _ in rejected} == {"field_type_conflict"}
    assert len(server.stored) == 800
    # whole batch, the other measurements, then the conflicting one: every line dropped
    assert len(server.requests) == 3


async def test_measurement_names_with_escapes_are_matched() -> None:
    lines = [f"air\\ q\\,x,device_id=d{i} value=1 {i}" for i in range(10)] + _lines(10)
    server = FakeInflux(lambda line: ('field type conflict: input field "value" on '
                                      'measurement "air q,x" is type float')
                        if line.startswith("air") else None)
    rejected = await _writer(server).write(lines)
    assert [i for i, _, _ in rejected] == list(range(10))
    assert len(server.requests) == 3


async def test_retry_after_is_honoured_and_capped(sleeps: list[float]) -> None:
    server = FakeInflux()
    server.script = [WriteResponse(429, "slow down", retry_after_s=7.0),
                     WriteResponse(503, "busy", retry_after_s=500.0),
                     WriteResponse(500, "engine: cache full"),
                     SinkUnavailable("connection refused")]
    writer = _writer(server, retry_cap_s=30.0)
    assert await writer.write(_lines(10)) == []
    assert sleeps[0] == 7.0 and sleeps[1] == 30.0
    assert all(s <= 0.01 for s in sleeps[2:])  # the backoff (its floor is 10 ms)
    assert len(server.requests) == 5 and len(server.stored) == 10
    assert writer.failing is None
    m = writer.metrics
    assert m.value("fieldlink_sink_store_errors_total", reason="429") == 1
    assert m.value("fieldlink_sink_influx_requests_total", status="unreachable") == 1


async def test_a_write_that_keeps_failing_only_ends_by_cancellation(sleeps: list[float]) -> None:
    server = FakeInflux()
    server.script = [WriteResponse(503, "down")] * 10_000
    writer = _writer(server)
    task = asyncio.create_task(writer.write(_lines(3)))
    for _ in range(10_000):
        if len(server.requests) >= 20:
            break
        await asyncio.sleep(0)
    assert not task.done() and writer.failing is not None and "503" in writer.failing
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_credentials_refused_is_fatal_and_rejects_nothing() -> None:
    server = FakeInflux()
    server.script = [WriteResponse(401, "authorization failed")]
    with pytest.raises(SinkMisconfigured):
        await _writer(server).write(_lines(5))


async def test_missing_database_is_recreated(sleeps: list[float]) -> None:
    server = FakeInflux()
    server.script = [WriteResponse(404, 'database not found: "x"')]
    recreated: list[bool] = []

    async def on_missing() -> None:
        recreated.append(True)

    assert await _writer(server, on_missing=on_missing).write(_lines(5)) == []
    assert recreated == [True] and len(server.stored) == 5


async def test_a_single_line_too_large_is_rejected_as_such() -> None:
    server = FakeInflux()
    server.script = [WriteResponse(413, "Request Entity Too Large")] * 3
    rejected = await _writer(server).write(_lines(2))
    # the pair is too large, then each half alone
    assert [(i, reason) for i, reason, _ in rejected] == [(0, "too_large"), (1, "too_large")]


def test_classify() -> None:
    assert classify("partial write: points beyond retention policy dropped=3") == \
        "beyond_retention"
    assert classify("partial write: field type conflict: input field") == "field_type_conflict"
    assert classify("partial write: max-values-per-tag limit exceeded") == "series_limit"
    assert classify("something else") == "rejected"


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 604800), ("1w2d", 777600), ("36h", 129600), ("90m", 5400), ("INF", 0), ("0", 0),
    ("1h30m", 5400)])
def test_duration_seconds(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d7", "7x", "7d 2h"])
def test_duration_seconds_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        duration_seconds(text)
