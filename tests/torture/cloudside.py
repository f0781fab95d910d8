"""The cloud tier of a torture run as processes: `fieldlink cloud ingest` and the two sinks
(`fieldlink cloud sink influxdb|parquet`), each started, stopped (SIGTERM) and killed
(SIGKILL) by name, all on one cloud.yaml.

The sinks run with consumer groups unique to the run, so their committed offsets (and lag)
belong to this run alone.
"""

from __future__ import annotations

import uuid

from .configs import CloudFiles
from .procs import FIELDLINK, Proc, Procs, http_get, wait_until


class CloudSide:
    def __init__(self, files: CloudFiles, procs: Procs, *, tag: str = "") -> None:
        self.files = files
        self.procs = procs
        suffix = uuid.uuid4().hex[:6]
        self.groups = {"influxdb": f"torture-influx-{suffix}",
                       "parquet": f"torture-parquet-{suffix}"}
        cfg = str(files.path)
        self.ingest = procs.add(f"ingest{tag}", [*FIELDLINK, "cloud", "ingest", "--config", cfg])
        self.sinks: dict[str, Proc] = {
            kind: procs.add(f"sink-{kind}{tag}", [*FIELDLINK, "cloud", "sink", kind, "--config",
                                                  cfg, "--group", self.groups[kind],
                                                  "--http-port", "0"])
            for kind in ("influxdb", "parquet")}

    @property
    def health_url(self) -> str:
        return f"{self.files.ingest_url}/healthz"

    def ingest_ready(self) -> bool:
        return http_get(self.health_url)[0] == 200

    def start_ingest(self, timeout_s: float = 90) -> None:
        self.ingest.start()
        wait_until("cloud ingest ready (topics created)", self.ingest_ready, timeout_s,
                   procs=self.procs)

    def stop_ingest(self) -> None:
        self.ingest.terminate()

    def start_sinks(self, *kinds: str) -> None:
        for kind in kinds or tuple(self.sinks):
            self.sinks[kind].start()

    def stop_sinks(self, *kinds: str) -> None:
        for kind in kinds or tuple(self.sinks):
            self.sinks[kind].terminate()

    def start(self, *, sinks: bool = True) -> CloudSide:
        self.start_ingest()
        if sinks:
            self.start_sinks()
        return self

    def stop(self) -> None:
        self.stop_sinks()
        self.stop_ingest()
