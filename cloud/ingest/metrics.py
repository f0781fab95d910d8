"""Prometheus metrics of cloud ingest, on a dedicated CollectorRegistry (never the global one).

    fieldlink_ingest_requests_total{status}              POST /v1/batches answers by status
    fieldlink_ingest_bytes_received_total                request bodies read
    fieldlink_ingest_readings_produced_total             readings acknowledged by the bus
    fieldlink_ingest_events_produced_total{kind}         aggregates / alerts acknowledged
    fieldlink_ingest_records_produced_total{topic}       bus records acknowledged
    fieldlink_ingest_passthrough_batches_total           batches forwarded without re-encoding
    fieldlink_ingest_duplicates_total{kind}              kind="batch": whole batches answered
                                                         from the ledger; kind="reading":
                                                         readings dropped as seen before
    fieldlink_ingest_decode_errors_total{reason}         frames refused (400), by codec reason
    fieldlink_ingest_rejected_total{kind, reason}        readings/events refused and
                                                         dead-lettered (batch still accepted)
    fieldlink_ingest_deadletters_total{reason}           dead-letter records produced
    fieldlink_ingest_auth_failures_total{reason}         401s, by edge.signing reason
    fieldlink_ingest_bus_unavailable_total               503s because the bus failed
    fieldlink_ingest_in_flight                           requests being handled
    fieldlink_ingest_produce_seconds                     bus send → all acknowledged
    fieldlink_ingest_request_seconds                     whole POST /v1/batches handling
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "fieldlink_ingest_"
        self.requests = Counter(p + "requests", "POST /v1/batches answers by HTTP status",
                                ["status"], registry=r)
        self.bytes_received = Counter(p + "bytes_received", "Request body bytes read",
                                      registry=r)
        self.readings = Counter(p + "readings_produced",
                                "Readings acknowledged by the bus", registry=r)
        self.events = Counter(p + "events_produced", "Events acknowledged by the bus, by kind",
                              ["kind"], registry=r)
        self.records = Counter(p + "records_produced", "Bus records acknowledged, by topic",
                               ["topic"], registry=r)
        self.passthrough = Counter(p + "passthrough_batches",
                                   "Batches forwarded as received (one partition key)",
                                   registry=r)
        self.duplicates = Counter(p + "duplicates", "Duplicates by kind (batch, reading)",
                                  ["kind"], registry=r)
        self.decode_errors = Counter(p + "decode_errors", "Frames refused, by reason",
                                     ["reason"], registry=r)
        self.rejected = Counter(p + "rejected", "Readings/events refused and dead-lettered",
                                ["kind", "reason"], registry=r)
        self.deadletters = Counter(p + "deadletters", "Dead-letter records produced, by reason",
                                   ["reason"], registry=r)
        self.auth_failures = Counter(p + "auth_failures", "Authentication failures, by reason",
                                     ["reason"], registry=r)
        self.bus_unavailable = Counter(p + "bus_unavailable",
                                       "Requests answered 503 because the bus failed",
                                       registry=r)
        self.in_flight = Gauge(p + "in_flight", "Requests being handled", registry=r)
        self.produce_seconds = Histogram(p + "produce_seconds",
                                         "Bus send until every record is acknowledged",
                                         buckets=_LATENCY, registry=r)
        self.request_seconds = Histogram(p + "request_seconds",
                                         "POST /v1/batches handling time", buckets=_LATENCY,
                                         registry=r)
        # children resolved once: a labelled lookup per request is measurable at 10^5/s
        self.status = {s: self.requests.labels(str(s)) for s in (200, 400, 401, 413, 415, 503)}
        self.batch_duplicates = self.duplicates.labels("batch")
        self.reading_duplicates = self.duplicates.labels("reading")
