"""Disk pressure: the buffer's byte cap reached during an uplink outage.

The gateway runs with a small `buffer.max_bytes`, local alert rules (so alerts and window
aggregates are buffered beside raw readings) and a fleet with temperature spikes.  Cloud
ingest is stopped until the buffer is full and has been evicting for a while, then started
again and the backlog drains.  Required:

* only evictable classes are dropped — raw readings, and aggregates only when no raw row
  is left — never an alert; every drop is counted with its reason (`/metrics`
  `fieldlink_gateway_drops_total{reason,class}`);
* every acknowledged reading is in Kafka unless counted as dropped: the acknowledged
  readings missing from Kafka are at most the counted raw drops ("lost" is the excess);
* InfluxDB and Parquet hold everything Kafka holds;
* every alert transition delivered locally reached Kafka's alerts topic;
* the database file stays within the cap.
"""

from __future__ import annotations

import time

from ..configs import write_rules
from ..procs import ServiceMissing, metric_sum, shared_service, wait_until
from ..readback import influx_readings, kafka_events, kafka_readings, parquet_readings
from ..receivers import WebhookReceiver
from ..report import ScenarioResult, progress
from ..site import MEASUREMENTS, Context, Site
from ..tally import Expected, compare

NAME = "disk_pressure"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME, trials=1)
    try:
        kafka = shared_service("kafka")
        influx = shared_service("influxdb")
    except ServiceMissing as exc:
        result.skipped = str(exc)
        return result
    quick = ctx.opts.quick
    cap = 512 * 1024 if quick else 2 * 1024 * 1024
    t_start = time.monotonic()
    with WebhookReceiver() as hook:
        rules = write_rules(ctx.run_dir / "disk-rules.yaml")
        site = Site(ctx, NAME, kafka=kafka.bootstrap_servers, influx_url=influx.url,
                    rules=rules, webhook=hook.url, max_bytes=str(cap))
        try:
            site.cloud.start()
            site.start_gateway()
            sim, _ = site.sim("dp", duration_s=0, devices=20, rate_hz=25,
                              faults={"spike": 0.01})
            time.sleep(2.0)
            site.cloud.stop_ingest()
            progress(f"{NAME}: uplink cut; filling the {cap // 1024} KiB buffer")

            def evicting() -> bool:
                return sum(site.counted_drops(site.metrics()).values()) > 0
            wait_until("buffer full and evicting", evicting, 300, procs=site.procs,
                       interval_s=0.5)
            t_full = time.monotonic()
            hold = 5.0 if quick else 60.0
            max_disk = 0.0
            while time.monotonic() - t_full < hold:
                text = site.metrics()
                max_disk = max(max_disk, metric_sum(text, "fieldlink_gateway_buffer_disk_bytes"))
                time.sleep(0.5)
            text = site.metrics()
            during = site.counted_drops(text)
            alerts_held = metric_sum(text, "fieldlink_gateway_buffer_rows", **{"class": "alert"})
            progress(f"{NAME}: evicting for {hold:.0f} s: drops {during}; "
                     f"{alerts_held:.0f} alert rows held; uplink back")
            site.cloud.start_ingest()
            sim.terminate()
            final = site.wait_drained(300)
            drops = site.counted_drops(final)
            result.rejected.update({k: int(v) for k, v in site.rejected(final).items() if v})
            result.dropped.update({k: int(v) for k, v in drops.items() if v})
            refused = {k: v for k, v in _refused(final).items() if v}
            site.gateway.terminate()
            site.wait_caught_up(300)

            expected = Expected.from_ledgers(site.ledgers)
            result.acknowledged = len(expected.acked)
            f = site.cloud_files
            k = kafka_readings(f.kafka, f.topics.readings)
            missing = expected.acked - set(k.copies)
            evicted_raw = int(sum(v for key, v in drops.items() if key.endswith("/raw")))
            kt = compare(expected, k, allowed_missing=missing)
            result.add_store(kt)
            result.lost = max(0, len(missing) - evicted_raw)
            for contents in (influx_readings(f.influx_url, f.database, MEASUREMENTS),
                             parquet_readings(f.archive)):
                result.add_store(compare(expected, contents, allowed_missing=missing))
            events = kafka_events(f.kafka, f.topics.alerts)
            in_kafka = {(e.body.get("dedup_key"), int(e.body.get("incarnation") or 0),
                         e.body.get("transition"), e.ts_ms) for e in events}
            delivered = set(hook.transitions())
            result.figures.update({
                "max_bytes": cap, "max_disk_bytes_seen": int(max_disk),
                "acknowledged_then_evicted": len(missing), "evicted_raw_counted": evicted_raw,
                "drops": drops, "buffer_refused": refused,
                "alert_transitions": len(delivered), "alert_events_in_kafka": len(in_kafka)})
            result.check("the cap was reached (evictions counted)", evicted_raw > 0,
                         f"drops {drops}")
            result.check("no alert dropped", not any(key.endswith("/alert") for key in drops),
                         f"drops {drops}")
            result.check("aggregates evicted only after raw readings",
                         not any(key.endswith("/aggregate") for key in during)
                         or evicted_raw > 0, f"drops {during}")
            result.check("acknowledged readings missing from Kafka are counted drops",
                         len(missing) <= evicted_raw,
                         f"{len(missing)} missing, {evicted_raw} counted")
            result.check("every locally delivered alert transition reached Kafka",
                         delivered <= in_kafka,
                         f"{len(delivered - in_kafka)} missing of {len(delivered)}")
            result.check("alerts were raised while the buffer was full", len(delivered) > 0)
            # invariant 6: file + WAL within max_bytes (plus one transaction's WAL frames
            # until the checkpoint that follows a commit; the -shm index is not counted)
            result.check("the buffer stayed within its cap (+64 KiB for one transaction)",
                         max_disk <= cap + 64 * 1024, f"{max_disk:.0f} bytes of {cap}")
        except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            site.finish(result)
    result.seconds = time.monotonic() - t_start
    return result


def _refused(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fieldlink_gateway_buffer_refused_total{"):
            labels = line[line.index("{") + 1:line.index("}")].replace('"', "")
            out[labels] = out.get(labels, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
