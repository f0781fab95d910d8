"""Cloud faults: the Kafka broker restarted, influxd stopped for minutes, sinks killed
mid-batch — while a fleet publishes through the gateway and ingest.

Kafka and InfluxDB are throwaway instances on their own ports and state directories
(`deploy/local/services/{kafka,influxdb}.sh` with `FIELDLINK_VAR` and the port variables),
so the shared services other tests use are never stopped.  In order:

1. the broker is stopped and started again (`kafka.sh stop`, a pause, `start`) — skipped
   with `Options.kafka_restart=False` (the short test: the shared broker serves instead,
   and is never stopped);
2. influxd is stopped for `--influx-down-s` (default 120 s) and started again;
3. each sink is SIGKILLed while it consumes (its batch in memory, its offsets not yet
   committed) and restarted, several times.

After each fault the time until both consumer groups' lag is back under one batch is
measured ("lag recovered").  At the end every acknowledged reading must be in Kafka,
InfluxDB and Parquet once.
"""

from __future__ import annotations

import threading
import time

from ..procs import ServiceMissing, Throwaway, run_cli, shared_service, wait_until
from ..readback import StoreContents, group_lag, parquet_readings
from ..report import ScenarioResult, progress
from ..site import Context, Site
from ..tally import Expected

NAME = "cloud_faults"


def _start_all(services: list[Throwaway]) -> None:
    errors: list[BaseException] = []

    def start(svc: Throwaway) -> None:
        try:
            svc.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,), name=f"torture-start-{s.kind}")
               for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _compact(site: Site) -> StoreContents:
    """`fieldlink cloud archive compact` as if two days had passed; the archive re-read."""
    future = str(int(time.time() * 1000) + 2 * 86_400_000)
    out = run_cli("cloud", "archive", "compact", "--config", str(site.cloud_files.path),
                  "--now", future, "--json", timeout_s=600)
    if out.returncode != 0:
        raise AssertionError(f"archive compact failed: {out.stderr[-2000:]}")
    return parquet_readings(site.cloud_files.archive)


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME)
    quick = ctx.opts.quick
    # beside the site directory, which the site clears when it is created
    root = ctx.run_dir / f"{NAME}-services"
    restart_kafka = ctx.opts.kafka_restart is not False
    influx = Throwaway("influxdb", root)
    kafka: Throwaway | None = Throwaway("kafka", root) if restart_kafka else None
    t_start = time.monotonic()
    progress(f"{NAME}: starting a throwaway influxd (port {influx.port})"
             + (f" and Kafka (port {kafka.port})" if kafka else ""))
    throwaways = [s for s in (kafka, influx) if s is not None]
    try:
        _start_all(throwaways)
        # without a broker restart the shared broker serves: it is never stopped here
        bootstrap = kafka.bootstrap if kafka else shared_service("kafka").bootstrap_servers
    except ServiceMissing as exc:
        result.skipped = str(exc)
        for svc in throwaways:
            try:
                svc.stop()
            except Exception:  # noqa: BLE001 - best effort
                pass
        return result
    site = Site(ctx, NAME, kafka=bootstrap, influx_url=influx.url)
    recovery: dict[str, float] = {}
    try:
        site.cloud.start()
        site.start_gateway()
        sim, _ = site.sim("cf", duration_s=0, devices=20, rate_hz=10)
        t = site.cloud_files.topics
        topics = {"influxdb": [t.readings, t.aggregates, t.alerts], "parquet": [t.readings]}

        def lag() -> int:
            return sum(group_lag(bootstrap, site.cloud.groups[k], topics[k]) for k in topics)

        def recovered(fault: str, timeout_s: float = 300) -> None:
            t0 = time.monotonic()
            # under one uplink batch per partition behind: caught up with a live stream
            wait_until(f"consumer lag back down after {fault}", lambda: lag() <= 6,
                       timeout_s, procs=site.procs, interval_s=0.5)
            recovery[fault] = round(time.monotonic() - t0, 1)
            progress(f"{NAME}: lag recovered {recovery[fault]} s after {fault}")

        time.sleep(2 if quick else 4)
        # 1. broker restart
        if kafka is not None:
            down = 5.0 if quick else 30.0
            progress(f"{NAME}: Kafka broker stopped for {down:.0f} s")
            kafka.stop()
            time.sleep(down)
            kafka.start()
            recovered("kafka_restart")
        # 2. influxd down for minutes
        down = ctx.opts.influx_down
        progress(f"{NAME}: influxd stopped for {down:.0f} s")
        influx.stop()
        time.sleep(down)
        influx.start()
        recovered("influxd_outage")
        # 3. sinks killed mid-batch
        for round_ in range(1 if quick else 3):
            for kind in ("influxdb", "parquet"):
                sink = site.cloud.sinks[kind]
                time.sleep(0.5 + ctx.rng.random())
                sink.kill()
                progress(f"{NAME}: {kind} sink SIGKILLed (round {round_ + 1})")
                time.sleep(1.0)
                sink.start()
            recovered(f"sink_kills_round_{round_ + 1}")
        # drain and compare
        sim.terminate()
        final = site.wait_drained(300)
        result.rejected.update({k: int(v) for k, v in site.rejected(final).items() if v})
        result.dropped.update({k: int(v) for k, v in site.counted_drops(final).items() if v})
        site.gateway.terminate()
        site.wait_caught_up(300)
        expected = Expected.from_ledgers(site.ledgers)
        result.trials = 1
        result.acknowledged = len(expected.acked)
        site.tally_stores(result, expected)
        result.figures.update({"lag_recovery_s": recovery,
                               "kafka_raw_copies": result.stores["kafka"].raw_copies,
                               "parquet_raw_copies": result.stores["parquet"].raw_copies})
        # raw copies in the archive (a produce retried during the broker restart) are what
        # compaction de-duplicates: after it, each reading is there once
        compacted = _compact(site)
        result.figures["parquet_raw_copies_after_compaction"] = compacted.raw_copies
        result.check("archive compaction leaves every reading once",
                     compacted.raw_copies == 0 and compacted.duplicated == 0
                     and set(compacted.copies) >= expected.acked,
                     f"{compacted.raw_copies} copies, {compacted.duplicated} duplicated, "
                     f"{len(expected.acked - set(compacted.copies))} missing")
        result.check("readings were acknowledged", result.acknowledged > 0)
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        site.finish(result)
        for svc in throwaways:
            try:
                svc.stop()
            except Exception as exc:  # noqa: BLE001 - noted, the run goes on
                result.notes.append(f"stopping throwaway {svc.kind}: {exc}")
        result.seconds = time.monotonic() - t_start
    return result
