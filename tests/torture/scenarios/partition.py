"""Network partition: the uplink cut for `--partition-s` (default 10 minutes) while sensors
keep publishing and local alerts keep being delivered; then the backlog drains.

The cut is cloud ingest stopped (SIGTERM): from the gateway's side the cloud does not
answer, exactly as when the link is down (connection refused, then the breaker holds the
uplink back).  Meanwhile temperature spikes fire and resolve the `hot` rule, whose
transitions must reach the local webhook during the cut.  After the cut:

* the backlog drains completely (the gateway's /metrics: no rows, no claim in flight),
* live data keeps flowing during the drain: readings received after the cut ended reach
  Kafka while older ones are still being sent (the uplink's live share),
* every acknowledged reading is in Kafka, InfluxDB and Parquet once; every alert
  transition the webhook saw is in Kafka's alerts topic.

Figures: backlog at the end of the cut, drain time and rate (readings/s), latency of live
readings during the drain (p50/p95/max), alerts delivered locally during the cut.
"""

from __future__ import annotations

import time

from ..configs import write_rules
from ..procs import ServiceMissing, metric_sum, shared_service, wait_until
from ..readback import kafka_events
from ..receivers import KafkaTail, WebhookReceiver
from ..report import ScenarioResult, progress
from ..site import Context, Site
from ..tally import Expected

NAME = "partition"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME, trials=1)
    try:
        kafka = shared_service("kafka")
        influx = shared_service("influxdb")
    except ServiceMissing as exc:
        result.skipped = str(exc)
        return result
    cut_s = ctx.opts.partition
    t_start = time.monotonic()
    with WebhookReceiver() as hook:
        rules = write_rules(ctx.run_dir / "partition-rules.yaml")
        site = Site(ctx, NAME, kafka=kafka.bootstrap_servers, influx_url=influx.url,
                    rules=rules, webhook=hook.url)
        try:
            site.cloud.start()
            site.start_gateway()
            devices, rate = 20, 10.0
            sim, _ = site.sim("pt", duration_s=0, devices=devices, rate_hz=rate,
                              faults={"spike": 0.02})
            time.sleep(3.0)
            # -- the cut
            cut_ms = int(time.time() * 1000)
            site.cloud.stop_ingest()
            progress(f"{NAME}: uplink cut for {cut_s:.0f} s")
            t_cut = time.monotonic()
            next_report = t_cut + 30
            while time.monotonic() - t_cut < cut_s:
                time.sleep(min(1.0, max(0.0, cut_s - (time.monotonic() - t_cut))))
                if time.monotonic() >= next_report:
                    next_report += 30
                    progress(f"{NAME}: {time.monotonic() - t_cut:.0f} s into the cut, "
                             f"backlog {site.backlog():.0f} rows, "
                             f"{len(hook.transitions(cut_ms))} alert transitions delivered "
                             "locally")
                if not sim.alive():
                    raise AssertionError("the fleet stopped during the cut\n" + sim.tail())
            heal_ms = int(time.time() * 1000)
            alerts_during = hook.transitions(cut_ms, heal_ms)
            text = site.metrics()
            backlog = site.backlog(text)
            circuit_open = metric_sum(text, "fieldlink_gateway_uplink_circuit_open")
            # -- heal and drain, watching Kafka for live readings meanwhile
            with KafkaTail(kafka.bootstrap_servers, site.cloud_files.topics.readings) as tail:
                site.cloud.start_ingest()
                t_heal = time.monotonic()
                progress(f"{NAME}: cut ended; backlog {backlog:.0f} rows; draining")

                def backlog_sent() -> bool:
                    text = site.metrics()
                    age = metric_sum(text, "fieldlink_gateway_buffer_oldest_unsent_age_seconds")
                    return age < 3.0 and site.backlog(text) < devices * rate * 3

                wait_until("backlog drained", backlog_sent, max(120.0, cut_s * 2),
                           procs=site.procs, interval_s=0.25)
                drain_s = time.monotonic() - t_heal
                drained_ms = int(time.time() * 1000)
                time.sleep(2.0)
            live = [(arr - rx) / 1000.0 for arr, rx in tail.arrivals
                    if rx >= heal_ms and arr <= drained_ms]
            backlog_seen = sum(1 for arr, rx in tail.arrivals if rx < heal_ms)
            # -- stop the fleet, drain what is left, compare
            sim.terminate()
            final = site.wait_drained(300)
            result.rejected.update({k: int(v) for k, v in site.rejected(final).items() if v})
            result.dropped.update({k: int(v) for k, v in site.counted_drops(final).items()
                                   if v})
            site.gateway.terminate()
            site.wait_caught_up(600)
            expected = Expected.from_ledgers(site.ledgers)
            result.acknowledged = len(expected.acked)
            site.tally_stores(result, expected)
            # alerts: every transition delivered locally is also in the cloud
            events = kafka_events(kafka.bootstrap_servers, site.cloud_files.topics.alerts)
            in_kafka = {(e.body.get("dedup_key"), int(e.body.get("incarnation") or 0),
                         e.body.get("transition"), e.ts_ms) for e in events}
            delivered = set(hook.transitions())
            missing_alerts = delivered - in_kafka
            result.figures.update({
                "partition_s": cut_s, "fleet": f"{devices} devices x {rate:g} Hz",
                "backlog_at_heal_rows": int(backlog),
                "circuit_open_during_cut": bool(circuit_open),
                "drain_s": round(drain_s, 1),
                "drain_rate_readings_per_s": round(backlog / drain_s, 0) if drain_s else None,
                "backlog_readings_seen_during_drain": backlog_seen,
                "live_readings_during_drain": len(live),
                "live_latency_s": {"p50": round(_pct(live, 0.5), 2),
                                   "p95": round(_pct(live, 0.95), 2),
                                   "max": round(max(live, default=0.0), 2)},
                "alert_transitions_during_cut": len(alerts_during),
                "alert_transitions_total": len(delivered),
                "alert_events_in_kafka": len(in_kafka)})
            kinds = {t[2] for t in alerts_during}
            # spikes fire the rule and the next normal window clears it: both transitions
            # must reach the operator while the uplink is cut
            result.check("alerts fired and resolved locally during the cut",
                         {"firing", "resolved"} <= kinds,
                         f"transitions delivered during the cut: "
                         f"{ {k: sum(1 for t in alerts_during if t[2] == k) for k in kinds} }")
            result.check("every locally delivered alert transition reached Kafka",
                         not missing_alerts, f"{len(missing_alerts)} missing, e.g. "
                                             f"{sorted(missing_alerts)[:3]}")
            result.check("the backlog built up during the cut",
                         backlog > devices * rate * cut_s * 0.5,
                         f"backlog {backlog:.0f} rows")
            # live data flowed during the drain: readings received after the heal reached
            # Kafka while the backlog was being sent, and not only after it
            # (a drain of a second or two leaves nothing to measure: vacuously true)
            result.check("live data flowed during the drain",
                         drain_s < 3.0 or (len(live) > 0
                                           and _pct(live, 0.5) < max(5.0, drain_s / 2)),
                         f"{len(live)} live readings, p50 latency {_pct(live, 0.5):.1f} s, "
                         f"drain {drain_s:.1f} s")
        except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            site.finish(result)
    result.seconds = time.monotonic() - t_start
    return result
