"""Both sinks as processes on one topic, SIGKILLed mid-batch and restarted: every reading is in
InfluxDB (InfluxQL and Flux) and in the Parquet archive (DuckDB) exactly once; then the
archive is compacted and queried with the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import services
from test_sinks_support import (
    FIELDLINK,
    HOUR,
    ROOT,
    SinkProcess,
    Topics,
    influx_count,
    lag,
    make_readings,
    now_ms,
    produce,
    wait_for,
    write_config,
)

from cloud.archive.query import KEY_SQL, connect, query, query_range
from cloud.archive.rows import row_keys

BATCHES = 100
PER_BATCH = 1000
N = BATCHES * PER_BATCH


def _archive_files(root: Path) -> list[Path]:
    return sorted(root.glob("**/*.parquet")) if root.exists() else []


async def test_sigkill_mid_batch_then_restart_stores_each_reading_once_in_both_stores(
        kafka: services.Kafka, influxdb: services.InfluxDB, tmp_path: Path) -> None:
    topics = Topics.unique()
    database = f"fl_sink_e2e_{uuid.uuid4().hex[:8]}"
    archive = tmp_path / "archive"
    # 30 hours of readings up to an hour ago: the archive gets two or three dates
    t0 = now_ms() - 31 * HOUR
    span = 30 * HOUR // N
    batches: list[Any] = [(f"gw-{b % 3}", b, make_readings(b, PER_BATCH, t0=t0 + b * PER_BATCH * span,
                                                span_ms=span), [])
               for b in range(BATCHES)]
    expected = {r.idempotency_key() for _, _, rs, _ in batches for r in rs}
    assert len(expected) == N
    await produce(kafka.bootstrap_servers, topics, batches)
    cfg = write_config(tmp_path / "cloud.yaml", topics, kafka.bootstrap_servers,
                       influx_url=influxdb.url, database=database, archive=archive,
                       roll_seconds=0.3, batch_size=1000)
    groups = {"influxdb": f"e2e-influx-{uuid.uuid4().hex[:6]}",
              "parquet": f"e2e-parquet-{uuid.uuid4().hex[:6]}"}

    def influx_points() -> int:
        return influx_count(influxdb.url, database, "temperature")

    killed_at = []
    for _cycle in range(2):
        procs = {kind: SinkProcess(kind, cfg, group, tmp_path) for kind, group in groups.items()}
        try:
            before = (influx_points(), len(_archive_files(archive)))
            # kill both as soon as each shows progress: mid-stream, most likely mid-batch
            await wait_for(lambda b=before: influx_points() > b[0], 120, "influx progress",
                           interval_s=0.05)
            await wait_for(lambda b=before: len(_archive_files(archive)) > b[1], 120,
                           "archive progress", interval_s=0.05)
            killed_at.append((influx_points(), len(_archive_files(archive))))
        finally:
            for proc in procs.values():
                proc.kill()
    assert killed_at[-1][0] < N, "the sinks finished before they were killed; more data needed"

    procs = {kind: SinkProcess(kind, cfg, group, tmp_path) for kind, group in groups.items()}
    try:
        await wait_for(lambda: influx_points() == N, 240, f"{N} points in InfluxDB")

        def archived() -> int:
            return int(query(str(archive), "SELECT count(*) FROM readings")[1][0][0])

        await wait_for(lambda: archived() >= N, 240, f"{N} readings in the archive")

        async def caught_up() -> bool:
            return all([await lag(kafka.bootstrap_servers, groups["influxdb"],
                                  [topics.readings, topics.aggregates, topics.alerts]) == 0,
                        await lag(kafka.bootstrap_servers, groups["parquet"],
                                  [topics.readings]) == 0])

        await wait_for(caught_up, 60, "both groups committed everything")
        for kind, proc in procs.items():
            status, health = proc.health()
            assert status == 200, (kind, health)
        assert procs["influxdb"].terminate() == 0
        assert procs["parquet"].terminate() == 0
    finally:
        for proc in procs.values():
            proc.stop_quietly()

    # InfluxDB: one point per reading (InfluxQL and Flux agree)
    assert influx_points() == N
    from test_sinks_influx import _flux_count

    assert await asyncio.to_thread(_flux_count, influxdb.url, influxdb.token,
                                   f"{database}/hot", "temperature") == N
    # the archive: every reading once, in date and facility directories
    columns, rows = query(str(archive), f"SELECT count(*), count(DISTINCT {KEY_SQL}), "
                                        "count(DISTINCT date), count(DISTINCT facility) "
                                        "FROM readings")
    total, distinct, dates, facilities = rows[0]
    assert (total, distinct, facilities) == (N, N, 2) and dates >= 2
    con = connect(str(archive))
    stored = con.sql("SELECT * FROM readings").to_arrow_table()
    con.close()
    assert set(row_keys(stored).to_pylist()) == expected

    # the dashboard's range query over the archive
    device = "g0-dev-00"
    buckets = query_range(str(archive), device, t0, t0 + 31 * HOUR, HOUR)
    assert sum(b.count for b in buckets) == N // 20

    await asyncio.to_thread(_compact_and_query_with_the_cli, cfg, archive)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIELDLINK, "cloud", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _compact_and_query_with_the_cli(cfg: Path, archive: Path) -> None:
    # compaction (made due with --now) keeps every reading once, one file per directory
    future = str(now_ms() + 3 * 24 * HOUR)
    out = _run("archive", "compact", "--config", str(cfg), "--now", future, "--json")
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert results and all(r["rows_in"] == r["rows_out"] for r in results)
    for directory in {p.parent for p in _archive_files(archive)}:
        names = [p.name for p in directory.iterdir()]
        assert len(names) == 1 and names[0].startswith("daily-"), names
    out = _run("query", "--config", str(cfg), "--format", "json",
               f"SELECT count(*) AS n, count(DISTINCT {KEY_SQL}) AS k FROM readings")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"n": N, "k": N}
    out = _run("archive", "stats", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["totals"]["rows"] == N and set(stats["totals"]["tiers"]) <= {"compacted"}
