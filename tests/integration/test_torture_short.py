"""The short version of every torture scenario, in the normal test run.

The full versions (50 power cuts, a 10-minute partition, minutes of InfluxDB outage, a
broker restart, thousands of fuzz cases) run with `python tests/bench/torture.py`; these
are the same scenarios, the same harness (tests/torture/) and the same acceptance — 0 lost,
0 duplicated after de-duplication, 0 crashes, every check of the scenario held — with
fewer trials and shorter outages (about three minutes in all).

Every scenario talks to real processes over real sockets on 127.0.0.1: `fieldlink gateway
run`, `fieldlink cloud ingest`, both sinks, `fieldlink sim run`, the shared Kafka and
InfluxDB and a throwaway influxd.  A missing service skips locally and FAILS under CI=true.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from torture.report import ScenarioResult, table  # noqa: E402
from torture.site import Context, Options  # noqa: E402

SHORT = Options(quick=True, trials=2, partition_s=5.0, influx_down_s=3.0,
                kafka_restart=False, mqtt_cases=100, api_examples=25)


def _run(name: str, tmp_path: Path) -> ScenarioResult:
    import importlib

    module = importlib.import_module(f"torture.scenarios.{name}")
    result: ScenarioResult = module.run(Context(tmp_path, SHORT))
    print("\n" + table([result]))
    if result.skipped:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and a service is missing: {result.skipped}", pytrace=False)
        pytest.skip(result.skipped)
    return result


def _assert_passed(result: ScenarioResult) -> None:
    assert result.error is None, result.error
    failed = [f"{c.name}: {c.detail}" for c in result.failed_checks]
    assert not failed, "\n".join(failed)
    assert not result.leaks, f"secrets in logs: {result.leaks}"
    assert result.acknowledged > 0, "nothing was acknowledged: the scenario tested nothing"
    assert (result.lost, result.duplicated, result.crashes) == (0, 0, 0), \
        f"lost {result.lost}, duplicated {result.duplicated}, crashes {result.crashes}: " \
        f"{result.notes} {[(k, v.lost_sample) for k, v in result.stores.items()]}"


def test_power_cuts(tmp_path: Path) -> None:
    result = _run("power_cut", tmp_path)
    _assert_passed(result)
    assert result.trials == SHORT.trials
    assert set(result.stores) == {"kafka", "influxdb", "parquet"}


def test_partition_drains_and_alerts_stay_local(tmp_path: Path) -> None:
    result = _run("partition", tmp_path)
    _assert_passed(result)
    assert result.figures["alert_transitions_during_cut"] > 0


def test_cloud_faults(tmp_path: Path) -> None:
    result = _run("cloud_faults", tmp_path)
    _assert_passed(result)
    assert {"influxd_outage", "sink_kills_round_1"} <= set(result.figures["lag_recovery_s"])


def test_disk_pressure_drops_only_evictable_rows_and_counts_them(tmp_path: Path) -> None:
    result = _run("disk_pressure", tmp_path)
    _assert_passed(result)
    assert result.dropped and not any(k.endswith("/alert") for k in result.dropped)


def test_hostile_input(tmp_path: Path) -> None:
    result = _run("hostile_input", tmp_path)
    _assert_passed(result)
    assert sum(result.rejected.values()) > 0


def test_security(tmp_path: Path) -> None:
    result = _run("security", tmp_path)
    _assert_passed(result)
