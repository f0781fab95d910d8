"""Hostile input against the running processes: zero crashes, every rejection counted and
dead-lettered, well-behaved clients still served.

1. Fleets over MQTT: registered devices sending 5 % malformed payloads (bad JSON, wrong
   types, oversize) and a fleet of devices the gateway does not know
   (`devices.unknown_devices: reject`).  Every payload the ledgers expect rejected is
   dead-lettered with a reason, counted by the pipeline and stored as a dead letter; every
   acknowledged good reading reaches Kafka, InfluxDB and Parquet.
2. Raw MQTT packets (`torture.mqtt_fuzz`): random, truncated, bit-flipped, oversize,
   protocol violations; a well-behaved client is served between bursts; every PUBLISH that
   reached the pipeline was dead-lettered (they come from unregistered devices).
3. CoAP (`torture.coap_fuzz`): random datagrams and POSTs with random payloads and content
   formats; every payload the pipeline saw was dead-lettered; a valid POST still gets 2.04.
4. Cloud ingest: oversize (a 1 GB Content-Length), truncated and damaged signed frames,
   unsigned requests, a wrong content type; then schemathesis generates requests from
   `/openapi.json` (`torture.schemathesis_hooks` signs two thirds of them).  No 5xx, the
   process stays up, and every 400 is in the dead-letter topic.

The unit-level fuzzing of the same parsers (hypothesis) is in tests/unit/test_fuzz_*.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

from .. import coap_fuzz, ingest_probe, mqtt_fuzz
from ..procs import PYTHON, ROOT, ServiceMissing, http_get, metric_by, metric_sum, shared_service
from ..readback import influx_readings, kafka_count, kafka_readings, parquet_readings
from ..report import ScenarioResult, progress
from ..site import MEASUREMENTS, Context, Site
from ..tally import Expected, compare

NAME = "hostile_input"
KINDS = ("temperature", "pressure")


def _fleet_ids(prefix: str, devices: int) -> list[str]:
    per = max(1, devices // len(KINDS))
    return [f"{prefix}_{k[:4]}_{n:03d}_l{('1', '2', '3')[n % 3]}" for k in KINDS
            for n in range(per)]


def _dead_letters(text: str) -> float:
    return metric_sum(text, "fieldlink_gateway_pipeline_dead_letters_total")


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME, trials=1)
    try:
        kafka = shared_service("kafka")
        influx = shared_service("influxdb")
    except ServiceMissing as exc:
        result.skipped = str(exc)
        return result
    quick = ctx.opts.quick
    good_ids = _fleet_ids("hg", 10)
    site = Site(ctx, NAME, kafka=kafka.bootstrap_servers, influx_url=influx.url,
                unknown_devices="reject", coap=True,
                registry={d: {"facility": "torture"} for d in good_ids})
    t_start = time.monotonic()
    try:
        site.cloud.start()
        site.start_gateway()
        # -- 1. fleets with malformed payloads and unknown devices
        good, good_ledger = site.sim("hg", duration_s=6 if quick else 30, devices=10,
                                     rate_hz=10, faults={"malformed": 0.05})
        bad, bad_ledger = site.sim("hu", duration_s=3 if quick else 10, devices=4, rate_hz=5)
        for p in (good, bad):
            p.wait(180)
        site.ledgers.remove(bad_ledger)  # not a fleet whose readings may be stored
        unknown = Expected.from_ledgers([bad_ledger])
        expected = Expected.from_ledgers([good_ledger])
        text = site.wait_drained(120)
        rejected = metric_by(text, "fieldlink_gateway_pipeline_dead_letters_total", "reason")
        stored_dl = metric_sum(text, "fieldlink_gateway_dead_letters_total")
        want = expected.rejected_sent + unknown.rows_sent
        result.check("every malformed payload and unknown device dead-lettered",
                     _dead_letters(text) == want,
                     f"{_dead_letters(text):.0f} dead letters, {expected.rejected_sent} "
                     f"malformed + {unknown.rows_sent} unknown-device payloads sent")
        result.check("unknown devices refused by reason",
                     rejected.get("unknown_device", 0) == unknown.rows_sent,
                     f"{rejected.get('unknown_device', 0):.0f} of {unknown.rows_sent}")
        result.check("every dead letter stored in the buffer", stored_dl == _dead_letters(text),
                     f"{stored_dl:.0f} stored of {_dead_letters(text):.0f}")
        # -- 2. raw MQTT packets
        cases = ctx.opts.mqtt_cases or (300 if quick else 3000)
        progress(f"{NAME}: {cases} raw MQTT cases")
        before = site.metrics()
        stats = asyncio.run(mqtt_fuzz.fuzz(site.gw.mqtt_port, cases=cases,
                                           seed=ctx.rng.randrange(1 << 30), good_every=25))
        after = site.metrics()
        mqtt_payloads = (metric_sum(after, "fieldlink_gateway_pipeline_payloads_total",
                                    protocol="mqtt")
                         - metric_sum(before, "fieldlink_gateway_pipeline_payloads_total",
                                      protocol="mqtt"))
        mqtt_dead = _dead_letters(after) - _dead_letters(before)
        proto = metric_by(after, "fieldlink_gateway_mqtt_protocol_errors_total", "kind")
        result.check("gateway alive after the MQTT fuzzing", site.gateway.alive())
        result.check("every protocol violation closes its connection", not stats.left_open(),
                     f"still open after 1 s: {stats.left_open()}")
        result.check("well-behaved MQTT client served between every burst",
                     not stats.good_failed and stats.good_ok == cases // 25,
                     "; ".join(stats.good_failed[:3]))
        result.check("every fuzzed PUBLISH that reached the pipeline was dead-lettered",
                     mqtt_payloads == mqtt_dead,
                     f"{mqtt_payloads:.0f} payloads, {mqtt_dead:.0f} dead letters")
        # -- 3. CoAP
        datagrams, posts = (200, 40) if quick else (2000, 400)
        progress(f"{NAME}: {datagrams} CoAP datagrams, {posts} hostile POSTs")
        assert site.gw.coap_port is not None
        before = site.metrics()
        cstats = asyncio.run(coap_fuzz.fuzz(site.gw.coap_port, datagrams=datagrams,
                                            posts=posts, seed=ctx.rng.randrange(1 << 30),
                                            path="r/cx_dev"))
        after = site.metrics()
        coap_payloads = (metric_sum(after, "fieldlink_gateway_pipeline_payloads_total",
                                    protocol="coap")
                         - metric_sum(before, "fieldlink_gateway_pipeline_payloads_total",
                                      protocol="coap"))
        coap_dead = _dead_letters(after) - _dead_letters(before)
        oversize = metric_sum(after, "fieldlink_gateway_coap_oversize_refused_total")
        good_code = asyncio.run(coap_fuzz.post(
            site.gw.coap_port, f"r/{good_ids[0]}",
            json.dumps({"value": 21.5, "seq": 10**6, "device_type": "temperature",
                        "timestamp": int(time.time() * 1000)}).encode()))
        if good_code.startswith("2.04"):  # acknowledged: the stores must have it
            expected.acked.add((good_ids[0], "temperature", 10**6))
            expected.sent.add((good_ids[0], "temperature", 10**6))
        result.check("gateway alive after the CoAP fuzzing", site.gateway.alive())
        result.check("every hostile CoAP POST answered", not cstats.errors,
                     f"{dict(cstats.errors)}")
        result.check("every CoAP payload the pipeline saw was dead-lettered",
                     coap_payloads == coap_dead,
                     f"{coap_payloads:.0f} payloads, {coap_dead:.0f} dead letters")
        result.check("a valid CoAP POST still gets 2.04", good_code.startswith("2.04"),
                     good_code)
        # -- 4. cloud ingest
        ingest_stats = _ingest(ctx, site, result)
        # -- the fleets' good readings went through
        final = site.wait_drained(120)
        result.rejected.update({f"gateway:{k}": int(v) for k, v in site.rejected(final).items()
                                if v})
        result.rejected.update({f"mqtt:{k}": int(v) for k, v in metric_by(
            final, "fieldlink_gateway_mqtt_protocol_errors_total", "kind").items() if v})
        site.gateway.terminate()
        site.wait_caught_up(300)
        result.acknowledged = len(expected.acked)
        f = site.cloud_files
        # "sx_" readings are the ingest fuzzer's own (valid frames it posted)
        result.add_store(compare(expected, kafka_readings(f.kafka, f.topics.readings)
                                 .without("sx_")))
        result.add_store(compare(expected, influx_readings(f.influx_url, f.database,
                                                           MEASUREMENTS).without("sx_")))
        result.add_store(compare(expected, parquet_readings(f.archive).without("sx_")))
        result.figures.update({
            "fleet_malformed_sent": expected.rejected_sent,
            "unknown_device_payloads": unknown.rows_sent,
            "mqtt_cases": dict(stats.cases), "mqtt_connection_endings": dict(stats.endings),
            "mqtt_endings_by_kind": {k: dict(v) for k, v in sorted(stats.by_kind.items())},
            "mqtt_protocol_errors": proto,
            "good_client_served": stats.good_ok,
            "good_client_latency_ms_max": round(max(stats.good_latency_ms, default=0), 1),
            "coap": {"datagrams": cstats.datagrams, "posts": cstats.posts,
                     "codes": dict(cstats.codes), "oversize_refused": oversize},
            "ingest": ingest_stats})
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        site.finish(result)
        result.seconds = time.monotonic() - t_start
    return result


def _ingest(ctx: Context, site: Site, result: ScenarioResult) -> dict[str, object]:
    url = site.cloud_files.ingest_url
    gw, secret = site.gateway_id, site.uplink_secret
    out: dict[str, object] = {}
    seq = 10**9
    codes: dict[str, int] = {}
    codes["oversize_content_length"] = ingest_probe.huge_content_length(
        site.cloud_files.ingest_port)
    whole = ingest_probe.frame(gw, seq)
    cut = whole[: len(whole) // 2]
    codes["truncated_signed"] = ingest_probe.post(url, cut, ingest_probe.signed(secret, gw,
                                                                                cut))[0]
    flipped = bytearray(whole)
    flipped[-3] ^= 0x10
    codes["bit_flipped_signed"] = ingest_probe.post(
        url, bytes(flipped), ingest_probe.signed(secret, gw, bytes(flipped)))[0]
    codes["garbage_signed"] = ingest_probe.post(url, b"\x00" * 64, ingest_probe.signed(
        secret, gw, b"\x00" * 64))[0]
    codes["unsigned"] = ingest_probe.post(url, whole)[0]
    codes["wrong_content_type"] = ingest_probe.post(url, whole, ingest_probe.signed(
        secret, gw, whole), content_type="text/plain")[0]
    expect = {"oversize_content_length": 413, "truncated_signed": 400,
              "bit_flipped_signed": 400, "garbage_signed": 400, "unsigned": 401,
              "wrong_content_type": 415}
    result.check("ingest answers hostile requests with the documented refusals",
                 codes == expect, f"got {codes}")
    out["probes"] = codes
    # schemathesis from /openapi.json
    examples = ctx.opts.api_examples or (100 if ctx.opts.quick else 1000)
    progress(f"{NAME}: schemathesis against ingest ({examples} examples per operation)")
    report = site.dir / "schemathesis.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "torture.schemathesis_hooks",
           "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FIELDLINK_TORTURE_GATEWAY": gw, "FIELDLINK_TORTURE_SECRET": secret,
           "FIELDLINK_TORTURE_SEED": str(ctx.rng.randrange(1 << 30))}
    log = site.dir / "logs" / "schemathesis.log"
    with open(log, "wb") as f:
        proc = subprocess.run(
            [os.path.join(os.path.dirname(PYTHON), "schemathesis"), "run",
             f"{url}/openapi.json", "--url", url, "-n", str(examples),
             "--checks", "not_a_server_error,status_code_conformance,"
                         "content_type_conformance,response_schema_conformance",
             "--request-timeout", "30", "--report", "ndjson",
             "--report-ndjson-path", str(report), "--seed", str(ctx.opts.seed)],
            cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=1800)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    result.check("schemathesis: no server error, every answer as documented",
                 proc.returncode == 0, "\n".join(tail))
    status, text = http_get(f"{url}/metrics")
    answers = {k: int(v) for k, v in metric_by(text, "fieldlink_ingest_requests_total",
                                               "status").items()}
    dead = metric_by(text, "fieldlink_ingest_deadletters_total", "reason")
    frame_dead = sum(v for k, v in dead.items() if k != "refused_items")
    result.check("ingest alive after the fuzzing", site.cloud.ingest.alive() and status == 200)
    result.check("every 400 from ingest is in the dead-letter topic",
                 answers.get("400", 0) == frame_dead and kafka_count(
                     site.cloud_files.kafka, site.cloud_files.topics.deadletter) >= frame_dead,
                 f"{answers.get('400', 0)} answered 400, {frame_dead:.0f} dead-lettered")
    result.rejected.update({f"ingest:{k}": int(v) for k, v in dead.items() if v})
    result.rejected.update({f"ingest_auth:{k}": int(v) for k, v in metric_by(
        text, "fieldlink_ingest_auth_failures_total", "reason").items() if v})
    out["answers_by_status"] = answers
    out["schemathesis_exit"] = proc.returncode
    out["schemathesis_summary"] = [line for line in tail if line.strip()][-4:]
    return out
