"""One torture site: a gateway process, its cloud tier and simulated fleets, in one directory.

    ctx = Context(run_dir, Options(quick=True))
    site = Site(ctx, "powercut", kafka=..., influx_url=...)
    site.cloud.start()
    site.start_gateway()
    sim, ledger = site.sim("t000", duration_s=2.0)
    ...
    site.wait_drained()
    result.add_store(...)            # site.stores_tally(expected)

Readiness is judged from outside, as an operator would: the MQTT port accepts connections
and /metrics answers; "drained" is the gateway's own /metrics saying no row is waiting and
no claim is in flight; "caught up" is both sink groups having committed every record.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cloudside import CloudSide
from .configs import GatewayFiles, write_cloud, write_gateway, write_sim
from .procs import (
    FIELDLINK,
    Proc,
    Procs,
    Secrets,
    http_get,
    metric_by,
    metric_sum,
    port_open,
    wait_until,
)
from .readback import influx_readings, kafka_readings, parquet_readings
from .report import ScenarioResult, progress
from .tally import Expected, compare

MEASUREMENTS = ("temperature", "pressure")


@dataclass
class Options:
    quick: bool = False
    #: power-cut trials (None: 50, quick 3)
    trials: int | None = None
    #: network partition length (None: 600 s, quick 10 s)
    partition_s: float | None = None
    #: InfluxDB outage in the cloud-faults scenario (None: 120 s, quick 8 s)
    influx_down_s: float | None = None
    seed: int = 20240601
    #: cloud_faults: restart the (throwaway) Kafka broker (None: yes)
    kafka_restart: bool | None = None
    #: hostile_input: raw MQTT cases and schemathesis examples (None: 3000/1000, quick 300/100)
    mqtt_cases: int | None = None
    api_examples: int | None = None

    @property
    def n_trials(self) -> int:
        return self.trials if self.trials is not None else (3 if self.quick else 50)

    @property
    def partition(self) -> float:
        return self.partition_s if self.partition_s is not None else (
            10.0 if self.quick else 600.0)

    @property
    def influx_down(self) -> float:
        return self.influx_down_s if self.influx_down_s is not None else (
            8.0 if self.quick else 120.0)


class Context:
    def __init__(self, run_dir: Path, opts: Options) -> None:
        self.run_dir = run_dir
        self.opts = opts
        self.secrets = Secrets()
        self.rng = random.Random(opts.seed)


class Site:
    def __init__(self, ctx: Context, name: str, *, kafka: str, influx_url: str,
                 gateway_id: str | None = None, extra_gateways: dict[str, str] | None = None,
                 cloud: dict[str, Any] | None = None, **gateway: Any) -> None:
        self.ctx = ctx
        self.name = name
        self.dir = ctx.run_dir / name
        if self.dir.exists():  # a run directory used before: start from nothing
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.procs = Procs(self.dir)
        self.gateway_id = gateway_id or f"gw-{name}"
        self.uplink_secret = ctx.secrets.new(f"{name}-uplink-secret")
        self.cloud_files = write_cloud(self.dir / "cloud.yaml", kafka=kafka,
                                       influx_url=influx_url,
                                       gateways={self.gateway_id: self.uplink_secret,
                                                 **(extra_gateways or {})},
                                       **(cloud or {}))
        self.cloud = CloudSide(self.cloud_files, self.procs)
        self.gw: GatewayFiles = write_gateway(self.dir / "gateway.yaml",
                                              gateway_id=self.gateway_id,
                                              secret=self.uplink_secret,
                                              ingest_url=self.cloud_files.ingest_url, **gateway)
        self.gateway: Proc = self.procs.add("gateway", [*FIELDLINK, "gateway", "run",
                                                        "--config", str(self.gw.path)])
        self.ledgers: list[Path] = []
        self.sims: list[Proc] = []

    # -- gateway --------------------------------------------------------------------------
    def gateway_ready(self) -> bool:
        return port_open(self.gw.mqtt_port) and http_get(self.gw.metrics_url)[0] == 200

    def start_gateway(self, timeout_s: float = 60) -> None:
        self.gateway.start()
        wait_until("gateway listening", self.gateway_ready, timeout_s, procs=self.procs,
                   interval_s=0.05)

    def metrics(self) -> str:
        status, text = http_get(self.gw.metrics_url, timeout=5)
        if status != 200:
            raise OSError(f"gateway /metrics answered {status}")
        return text

    def backlog(self, text: str | None = None) -> float:
        text = text if text is not None else self.metrics()
        return (metric_sum(text, "fieldlink_gateway_buffer_rows")
                + metric_sum(text, "fieldlink_gateway_buffer_pending_readings"))

    def drained(self) -> str | None:
        text = self.metrics()
        if self.backlog(text) == 0 and metric_sum(
                text, "fieldlink_gateway_buffer_claims_in_flight") == 0:
            return text
        return None

    def wait_drained(self, timeout_s: float = 180) -> str:
        text = wait_until("gateway buffer drained", self.drained, timeout_s, procs=self.procs,
                          interval_s=0.5)
        assert text is not None
        return text

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check` of the buffer file (the gateway must not be running)."""
        conn = sqlite3.connect(f"file:{self.gw.buffer_path}?mode=ro", uri=True, timeout=10)
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()

    def counted_drops(self, text: str) -> dict[str, float]:
        """Rows the buffer removed without an ack, `reason/class` → count."""
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("fieldlink_gateway_drops_total{"):
                labels = dict(part.split("=", 1) for part in
                              line[line.index("{") + 1:line.index("}")].split(","))
                reason, cls = labels["reason"].strip('"'), labels["class"].strip('"')
                key = f"{reason}/{cls}"
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def rejected(self, text: str) -> dict[str, float]:
        return metric_by(text, "fieldlink_gateway_pipeline_dead_letters_total", "reason")

    # -- fleets ---------------------------------------------------------------------------
    def sim(self, prefix: str, *, duration_s: float, devices: int = 20, rate_hz: float = 10,
            seed: int | None = None, extra: list[str] | None = None, **fleet: Any
            ) -> tuple[Proc, Path]:
        """Start a fleet whose device ids start with `prefix`; returns (process, ledger)."""
        cfg = write_sim(self.dir / f"sim-{prefix}.yaml", prefix=prefix, devices=devices,
                        rate_hz=rate_hz, target_port=fleet.pop("target_port", self.gw.mqtt_port),
                        **fleet)
        ledger = self.dir / f"ledger-{prefix}.sqlite3"
        args = [*FIELDLINK, "sim", "run", "--config", str(cfg), "--duration", str(duration_s),
                "--seed", str(seed if seed is not None else self.ctx.rng.randrange(1 << 30)),
                "--ledger", str(ledger), "--json", "--quiet", *(extra or [])]
        proc = self.procs.add(f"sim-{prefix}", args, finishes=True).start()
        self.ledgers.append(ledger)
        self.sims.append(proc)
        return proc, ledger

    @staticmethod
    def sim_summary(proc: Proc) -> dict[str, Any]:
        for line in reversed(proc.log.read_text(errors="replace").splitlines()):
            if line.startswith("{") and '"acknowledged"' in line:
                return dict(json.loads(line))
        return {}

    # -- cloud read-back ------------------------------------------------------------------
    def wait_caught_up(self, timeout_s: float = 180) -> None:
        """Both sinks committed every record of their topics."""
        from .readback import group_lag

        t = self.cloud_files.topics
        topics = {"influxdb": [t.readings, t.aggregates, t.alerts], "parquet": [t.readings]}

        def caught_up() -> bool:
            return all(group_lag(self.cloud_files.kafka, self.cloud.groups[k], topics[k]) == 0
                       for k in topics if self.cloud.sinks[k].alive())
        wait_until("sinks caught up with Kafka", caught_up, timeout_s, procs=self.procs,
                   interval_s=1.0)

    def tally_stores(self, result: ScenarioResult, expected: Expected,
                     stores: tuple[str, ...] = ("kafka", "influxdb", "parquet")) -> None:
        f = self.cloud_files
        progress(f"{self.name}: reading back {', '.join(stores)}")
        t0 = time.monotonic()
        if "kafka" in stores:
            result.add_store(compare(expected, kafka_readings(f.kafka, f.topics.readings)))
        if "influxdb" in stores:
            result.add_store(compare(expected, influx_readings(f.influx_url, f.database,
                                                               MEASUREMENTS)))
        if "parquet" in stores:
            result.add_store(compare(expected, parquet_readings(f.archive)))
        result.figures["readback_s"] = round(time.monotonic() - t0, 1)

    def finish(self, result: ScenarioResult) -> None:
        """Stop everything still running (cleanly), count crashes, grep logs for secrets."""
        self.procs.stop_all()
        result.crashes += self.procs.crashes()
        result.notes += self.procs.crash_notes()
        # every process log, and whatever else a scenario captured (schemathesis' output)
        logs = set(self.procs.logs()) | set((self.dir / "logs").glob("*.log"))
        result.leaks += self.ctx.secrets.leaks(sorted(logs))
