"""Prometheus metrics of a sink process, on a dedicated CollectorRegistry (never the global one).

Every metric has the label `sink` ("influxdb" | "parquet").

    fieldlink_sink_records_total{sink, topic}            bus records consumed
    fieldlink_sink_items_total{sink, kind}               readings / aggregates / alerts stored
    fieldlink_sink_deadletters_total{sink, reason}       items or records dead-lettered
    fieldlink_sink_flushes_total{sink}                   flushes that reached the store
    fieldlink_sink_flush_seconds{sink}                   one flush: write + dead letters
    fieldlink_sink_commits_total{sink}                   offset commits that succeeded
    fieldlink_sink_commit_failures_total{sink, reason}   refused (consumer_fenced) or failed
    fieldlink_sink_store_errors_total{sink, reason}      store requests retried (5xx, 429,
                                                         unreachable, ...)
    fieldlink_sink_buffered_items{sink}                  items held, not yet durable
    fieldlink_sink_lag_seconds{sink, topic, partition}   now - bus timestamp of the newest
                                                         record consumed (0 when caught up)
    fieldlink_sink_lag_records{sink, topic, partition}   high watermark - next offset (Kafka
                                                         only: the embedded bus has no watermark
                                                         on its consumers)
    fieldlink_sink_committed_offset{sink, topic, partition}
    fieldlink_sink_influx_requests_total{sink, status}   write requests by HTTP status
    fieldlink_sink_influx_bisections_total{sink}         requests split to find rejected points
    fieldlink_sink_parquet_files_total{sink}             Parquet files published
    fieldlink_sink_parquet_bytes_total{sink}             their bytes
    fieldlink_sink_parquet_orphans_deleted_total{sink}   uncommitted files of an earlier run
                                                         replaced (crash between write and
                                                         commit)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SinkMetrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SinkMetrics:
    def __init__(self, sink: str, registry: CollectorRegistry | None = None) -> None:
        self.sink = sink
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "fieldlink_sink_"
        self._records = Counter(p + "records", "Bus records consumed", ["sink", "topic"],
                                registry=r)
        self._items = Counter(p + "items", "Items stored, by kind", ["sink", "kind"],
                              registry=r)
        self._deadletters = Counter(p + "deadletters", "Items or records dead-lettered",
                                    ["sink", "reason"], registry=r)
        self.flushes = Counter(p + "flushes", "Flushes that reached the store", ["sink"],
                               registry=r).labels(sink)
        self.flush_seconds = Histogram(p + "flush_seconds", "Duration of one flush",
                                       ["sink"], buckets=_LATENCY, registry=r).labels(sink)
        self.commits = Counter(p + "commits", "Offset commits that succeeded", ["sink"],
                               registry=r).labels(sink)
        self._commit_failures = Counter(p + "commit_failures", "Offset commits that failed",
                                        ["sink", "reason"], registry=r)
        self._store_errors = Counter(p + "store_errors", "Store requests retried",
                                     ["sink", "reason"], registry=r)
        self.buffered = Gauge(p + "buffered_items", "Items held, not yet durable", ["sink"],
                              registry=r).labels(sink)
        self._lag_seconds = Gauge(p + "lag_seconds", "Age of the newest record consumed",
                                  ["sink", "topic", "partition"], registry=r)
        self._lag_records = Gauge(p + "lag_records", "Records behind the high watermark",
                                  ["sink", "topic", "partition"], registry=r)
        self._committed = Gauge(p + "committed_offset", "Next offset to read, committed",
                                ["sink", "topic", "partition"], registry=r)
        self._influx_requests = Counter(p + "influx_requests", "InfluxDB writes by status",
                                        ["sink", "status"], registry=r)
        self.influx_bisections = Counter(p + "influx_bisections",
                                         "Writes split to find rejected points", ["sink"],
                                         registry=r).labels(sink)
        self.parquet_files = Counter(p + "parquet_files", "Parquet files published", ["sink"],
                                     registry=r).labels(sink)
        self.parquet_bytes = Counter(p + "parquet_bytes", "Bytes of Parquet files published",
                                     ["sink"], registry=r).labels(sink)
        self.parquet_orphans = Counter(p + "parquet_orphans_deleted",
                                       "Uncommitted files of an earlier run replaced",
                                       ["sink"], registry=r).labels(sink)

    def records(self, topic: str, n: int = 1) -> None:
        self._records.labels(self.sink, topic).inc(n)

    def items(self, kind: str, n: int = 1) -> None:
        if n:
            self._items.labels(self.sink, kind).inc(n)

    def deadletters(self, reason: str, n: int = 1) -> None:
        self._deadletters.labels(self.sink, reason).inc(n)

    def commit_failure(self, reason: str) -> None:
        self._commit_failures.labels(self.sink, reason).inc()

    def store_error(self, reason: str) -> None:
        self._store_errors.labels(self.sink, reason).inc()

    def lag_seconds(self, topic: str, partition: int, seconds: float) -> None:
        self._lag_seconds.labels(self.sink, topic, str(partition)).set(seconds)

    def lag_records(self, topic: str, partition: int, records: int) -> None:
        self._lag_records.labels(self.sink, topic, str(partition)).set(records)

    def committed(self, topic: str, partition: int, offset: int) -> None:
        self._committed.labels(self.sink, topic, str(partition)).set(offset)

    def influx_request(self, status: int | str) -> None:
        self._influx_requests.labels(self.sink, str(status)).inc()

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (tests and benchmarks); 0 when it was never set."""
        v = self.registry.get_sample_value(name, {"sink": self.sink, **labels})
        return float(v or 0.0)
