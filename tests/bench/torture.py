"""The torture and security suite: power cuts, partitions, cloud faults, disk pressure,
hostile input and security, against the real services — one command, a table and figures.

    .venv/bin/python tests/bench/torture.py                    # everything, full length
    .venv/bin/python tests/bench/torture.py --quick            # the short versions
    .venv/bin/python tests/bench/torture.py --only power_cut --trials 50
    .venv/bin/python tests/bench/torture.py --only partition --partition-s 600

Prints progress on stderr while it runs, then a table (scenario, trials, readings
acknowledged, lost, duplicated, rejected by reason, dropped and counted, crashes) and the
acceptance line — 0 lost, 0 duplicated after de-duplication, 0 crashes — and, as its LAST
line, one JSON object: `trials`, `acknowledged`, `lost`, `duplicated`, `crashes` (totals)
and `scenarios` (one entry per scenario, with its checks and figures).

Exit status 0 when every scenario passed, 1 otherwise.  A service that cannot be started
skips its scenarios (FAILS them under CI=true).  Scenarios and their figures:
docs/torture.md; the harness: tests/torture/.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from torture.report import ScenarioResult, json_line, progress, table  # noqa: E402
from torture.scenarios import ALL  # noqa: E402
from torture.site import Context, Options  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torture.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the short version of each scenario")
    p.add_argument("--only", action="append", choices=ALL, metavar="SCENARIO",
                   help=f"run only this scenario (repeatable): {', '.join(ALL)}")
    p.add_argument("--trials", type=int, help="power-cut trials (default 50, --quick 3)")
    p.add_argument("--partition-s", type=float,
                   help="network partition length in seconds (default 600, --quick 10)")
    p.add_argument("--influx-down-s", type=float,
                   help="InfluxDB outage in cloud_faults (default 120, --quick 8)")
    p.add_argument("--seed", type=int, default=20240601, help="random kill times, rates")
    p.add_argument("--dir", help="run directory (logs, configs, ledgers; default: a new "
                                 "temporary directory, kept)")
    return p.parse_args(argv)


def run_scenario(name: str, ctx: Context) -> ScenarioResult:
    module = importlib.import_module(f"torture.scenarios.{name}")
    t0 = time.monotonic()
    try:
        result: ScenarioResult = module.run(ctx)
    except Exception as exc:  # noqa: BLE001 - one scenario's failure does not stop the run
        result = ScenarioResult(name, error=f"{type(exc).__name__}: {exc}\n"
                                            f"{traceback.format_exc()}")
    result.seconds = result.seconds or time.monotonic() - t0
    if result.skipped and os.environ.get("CI", "").lower() == "true":
        result.error = f"CI=true and a service is missing: {result.skipped}"
        result.skipped = None
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    opts = Options(quick=args.quick, trials=args.trials, partition_s=args.partition_s,
                   influx_down_s=args.influx_down_s, seed=args.seed)
    run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fieldlink-torture-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(run_dir, opts)
    names = [n for n in ALL if not args.only or n in args.only]
    progress(f"run directory {run_dir}; scenarios {', '.join(names)}"
             f"{' (quick)' if args.quick else ''}")
    results = []
    t0 = time.monotonic()
    for name in names:
        progress(f"--- {name}")
        result = run_scenario(name, ctx)
        verdict = ("skipped" if result.skipped else "ERROR" if result.error else
                   "ok" if result.ok else "FAIL")
        progress(f"--- {name}: {verdict} in {result.seconds:.0f} s "
                 f"(acknowledged {result.acknowledged}, lost {result.lost}, duplicated "
                 f"{result.duplicated}, crashes {result.crashes})")
        results.append(result)
    line = json_line(results, quick=args.quick, seconds=round(time.monotonic() - t0, 1),
                     run_dir=str(run_dir))
    (run_dir / "summary.json").write_text(line + "\n")
    print(table(results))
    print(line)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
