"""The torture and security suite: power cuts, partitions, cloud faults, disk pressure,
hostile input and security, against the real services, with figures.

Run it with ``.venv/bin/python tests/bench/torture.py`` (``--quick`` for the short
versions, ``--only SCENARIO``, ``--trials N``, ``--partition-s S``); the short version of
each scenario also runs in the normal test run (``tests/integration/test_torture_short.py``).
docs/torture.md describes the scenarios and the latest figures.

Modules:

* `procs` — fieldlink processes with captured logs, throwaway Kafka/InfluxDB instances,
  waiting, HTTP and Prometheus helpers, the registry of secrets no log may contain;
* `configs` — gateway.yaml, cloud.yaml, sim.yaml and rules.yaml for a run;
* `cloudside` — ingest and both sinks as processes, started, stopped and killed by name;
* `readback` — what Kafka, InfluxDB and the Parquet archive hold, keyed by reading;
* `tally` — sim ledgers against the stores: acknowledged, lost, duplicated;
* `report` — one `ScenarioResult` per scenario, the table and the JSON summary;
* `receivers` — a webhook receiver (the operator's pager) and a Kafka tail;
* `site` — one gateway, its cloud tier and fleets in one directory; `Context`, `Options`;
* `mqtt_fuzz` — raw MQTT packets (random, truncated, oversize) over a real socket;
* `scenarios/` — one module per scenario, each `run(ctx, opts) -> ScenarioResult`.

This package is test code: it drives fieldlink as an operator would (processes, config
files, signals, HTTP) and reads its results only through public interfaces.
"""
