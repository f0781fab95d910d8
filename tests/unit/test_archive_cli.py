"""`fieldlink cloud archive|query|sink` command lines (no services: a local archive, and the
refusals that happen before any connection)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from cloud.archive import cli as archive_cli
from cloud.archive import query as query_cli
from cloud.archive.layout import day_of, part_name, partition_dir
from cloud.archive.rows import parquet_bytes, readings_batch, sort_rows
from cloud.archive.store import ArchiveStore
from cloud.sinks import cli as sink_cli
from edge.model import Reading

T = 1_705_322_400_000
DAY = 86_400_000


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    store = ArchiveStore(str(root))
    for p in range(2):
        rs = [Reading(device_id=f"dev-{i % 3}", ts_ms=T + 1000 * i, value=float(i), seq=i,
                      facility="plant a") for i in range(p * 50, p * 50 + 60)]
        table = pa.Table.from_batches([readings_batch(rs, "gw")])
        store.write_atomic(f"{partition_dir(day_of(T), 'plant a')}/{part_name('t', p, 0, 9)}",
                           parquet_bytes(sort_rows(table)))
    return root


@pytest.fixture
def config(tmp_path: Path, archive: Path) -> Path:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(f"""
cloud: {{data_dir: {tmp_path}}}
archive: {{path: {archive}, compact_after_days: 1, expire_after_days: 30}}
influxdb: {{enabled: false}}
""")
    return cfg


def test_query_prints_a_table_csv_and_json(archive: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT facility, count(*) AS n FROM readings GROUP BY 1"
    assert query_cli.main([sql, "--archive", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "plant a" in out and "120" in out and "(1 row)" in out
    assert query_cli.main([sql, "--archive", str(archive), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"facility": "plant a", "n": 120}
    assert query_cli.main([sql, "--archive", str(archive), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["facility,n", "plant a,120"]
    assert query_cli.main(["SELECT nope FROM readings", "--archive", str(archive)]) == 1
    assert "query failed" in capsys.readouterr().err


def test_archive_stats_compact_expire(config: Path, archive: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    later = str((day_of(T) + 2) * DAY)
    assert archive_cli.main(["stats", "-c", str(config), "--now", later, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totals"]["rows"] == 120 and stats["days"][0]["tier"] == "due"
    assert archive_cli.main(["compact", "-c", str(config), "--now", later, "--dry-run"]) == 0
    assert "would compact" in capsys.readouterr().out
    assert len(list(archive.glob("**/*.parquet"))) == 2
    assert archive_cli.main(["compact", "-c", str(config), "--now", later, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["rows_in"], result["rows_out"], result["duplicates"]) == (120, 110, 10)
    assert [p.name[:6] for p in archive.glob("**/*.parquet")] == ["daily-"]
    assert archive_cli.main(["expire", "-c", str(config), "--now", later]) == 0
    assert "deleted 0 file(s)" in capsys.readouterr().out
    much_later = "2024-03-01T00:00:00Z"
    assert archive_cli.main(["expire", "-c", str(config), "--now", much_later]) == 0
    assert "deleted 1 file(s)" in capsys.readouterr().out
    assert list(archive.glob("**/*.parquet")) == []
    assert archive_cli.main(["stats", "-c", str(config), "--now", "yesterday"]) == 2


def test_sink_refuses_a_disabled_store_and_a_bad_config(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sink_cli.main(["influxdb", "-c", str(config)]) == 1
    assert "influxdb.enabled is false" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("archive: {roll_seconds: -1}\n")
    assert sink_cli.main(["parquet", "-c", str(bad)]) == 1
    assert "archive.roll_seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sink_cli.main(["elsewhere"])


def test_compact_at_a_chosen_level_drops_duplicates_and_an_old_key_column(
        archive: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from cloud.archive.rows import SCHEMA

    # a file as written before the key column was dropped: read, de-duplicated, then gone
    store = ArchiveStore(str(archive))
    rs = [Reading(device_id="dev-0", ts_ms=T + 1000 * i, value=float(i), seq=i,
                  facility="plant a") for i in range(0, 200, 3)]
    old = pa.Table.from_batches([readings_batch(rs, "gw")]).select(SCHEMA.names + ["key"])
    store.write_atomic(f"{partition_dir(day_of(T), 'plant a')}/{part_name('t', 5, 0, 9)}",
                       _with_key(old))
    _, rows = query_cli.query(str(archive), f"SELECT count(DISTINCT {query_cli.KEY_SQL}) "
                                            "FROM readings")
    assert rows == [(110 + 30,)]  # dev-0 seq 110..199 step 3 are new: 30 of them
    now = str(T + 3 * DAY)
    assert archive_cli.main(["compact", "--config", str(config), "--now", now, "--json",
                             "--level", "15"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["rows_in"], result["rows_out"]) == (120 + 67, 140)
    (daily,) = list(archive.glob("**/daily-*.parquet"))
    assert pq.read_schema(daily).names == SCHEMA.names
    with pytest.raises(SystemExit):
        archive_cli.main(["compact", "--config", str(config), "--level", "0"])


def _with_key(table: pa.Table) -> bytes:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
