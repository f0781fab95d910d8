"""Power cuts: the gateway SIGKILLed at random moments while sensors publish QoS 1.

One long-lived cloud side (ingest, Kafka, both sinks) and one gateway data directory for
the whole scenario.  Per trial: a fleet with device ids unique to the trial publishes QoS 1
for a random 1-4 s; at a random moment — while readings are being committed, while the
uplink has a batch in flight, or after the fleet stopped while the backlog drains — the
gateway gets SIGKILL; `PRAGMA integrity_check` runs on the buffer file as the kill left it;
the gateway restarts (after a random pause) and the fleet reconnects and resends what was
not acknowledged.  At the end the gateway drains, and the union of every trial's ledger
(readings the gateway acknowledged) is compared with Kafka, InfluxDB and the Parquet
archive by (device, measurement, seq).
"""

from __future__ import annotations

import time
from collections import Counter

from ..procs import ServiceMissing, metric_sum, shared_service
from ..report import ScenarioResult, progress
from ..site import Context, Site
from ..tally import Expected

NAME = "power_cut"


def _count_run(totals: Counter[str], text: str) -> None:
    totals["redeliveries_recognised"] += int(metric_sum(
        text, "fieldlink_gateway_pipeline_duplicates_total"))
    totals["uplink_batches_sent"] += int(metric_sum(
        text, "fieldlink_gateway_uplink_batches_total", outcome="sent"))
    totals["uplink_retries"] += int(metric_sum(text, "fieldlink_gateway_uplink_retries_total"))


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME)
    try:
        kafka = shared_service("kafka")
        influx = shared_service("influxdb")
    except ServiceMissing as exc:
        result.skipped = str(exc)
        return result
    site = Site(ctx, NAME, kafka=kafka.bootstrap_servers, influx_url=influx.url)
    rng = ctx.rng
    phases: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    restart_s: list[float] = []
    integrity_bad: list[str] = []
    sims_failed = 0
    t_start = time.monotonic()
    try:
        site.cloud.start()
        site.start_gateway()
        n = ctx.opts.n_trials
        for t in range(n):
            duration = round(rng.uniform(1.0, 4.0), 2)
            rate = rng.choice((10, 20, 50))
            sim, _ = site.sim(f"pc{t:03d}", duration_s=duration, devices=20, rate_hz=rate,
                              faults={"duplicate": 0.02})
            # from 0.2 s into the run to 1.5 s after the fleet stopped sending (the drain)
            kill_at = rng.uniform(0.2, duration + 1.5)
            time.sleep(kill_at)
            try:
                text = site.metrics()
                in_flight = metric_sum(text, "fieldlink_gateway_buffer_claims_in_flight")
                pending = metric_sum(text, "fieldlink_gateway_buffer_pending_readings")
                _count_run(totals, text)
            except OSError:
                in_flight = pending = 0
            site.gateway.kill()
            phase = ("publishing" if sim.alive() and kill_at < duration else "draining")
            phases[phase] += 1
            if in_flight:
                phases["uplink_batch_in_flight"] += 1
            if pending:
                phases["readings_awaiting_commit"] += 1
            verdict = site.integrity_check()
            if verdict != "ok":
                integrity_bad.append(f"trial {t}: {verdict}")
            time.sleep(rng.choice((0.0, 0.0, 0.3, 1.0, 2.0)))
            t0 = time.monotonic()
            site.start_gateway()
            restart_s.append(time.monotonic() - t0)
            try:
                rc = sim.wait(duration + 90)
            except Exception:  # noqa: BLE001 - a hung fleet is killed and counted
                sim.kill()
                rc = -1
            if rc != 0:
                sims_failed += 1
            result.trials = t + 1
            progress(f"{NAME}: trial {t + 1}/{n}: fleet {duration:.1f} s at {rate} Hz x 20, "
                     f"SIGKILL at {kill_at:.2f} s ({phase}"
                     f"{', batch in flight' if in_flight else ''}), integrity {verdict}")
        progress(f"{NAME}: draining the gateway")
        final = site.wait_drained(300)
        result.rejected.update({k: int(v) for k, v in site.rejected(final).items() if v})
        result.dropped.update({k: int(v) for k, v in site.counted_drops(final).items() if v})
        _count_run(totals, final)
        # summed over every gateway process (these counters start at 0 with each process;
        # what a process counted after the scrape before its SIGKILL is not included)
        result.figures.update({k: int(v) for k, v in totals.items()})
        site.gateway.terminate()
        site.wait_caught_up(300)
        expected = Expected.from_ledgers(site.ledgers)
        result.acknowledged = len(expected.acked)
        result.figures.update({
            "kill_phases": dict(phases),
            "restart_to_listening_s": {
                "avg": round(sum(restart_s) / max(1, len(restart_s)), 2),
                "max": round(max(restart_s, default=0.0), 2)},
            "sim_rows_sent": expected.rows_sent, "sim_rows_acked": expected.rows_acked,
            "unique_sent": len(expected.sent)})
        site.tally_stores(result, expected)
        result.figures["kafka_raw_copies"] = result.stores["kafka"].raw_copies
        result.check("integrity_check ok after every kill", not integrity_bad,
                     "; ".join(integrity_bad[:5]))
        result.check("every fleet completed (exit 0)", sims_failed == 0,
                     f"{sims_failed} fleets failed")
        result.check("readings were acknowledged", result.acknowledged > 0)
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        site.finish(result)
        result.seconds = time.monotonic() - t_start
    return result
