"""The gateway's Prometheus metrics, defined once, read from components' `stats()` at scrape.

Components keep plain counters in their own stats snapshots (an integer increment on the hot
path, nothing more); `GatewayMetrics` is a custom collector that calls every registered
`stats()` when Prometheus scrapes and maps the fields it knows onto the metric families
below.  So a reading costs no metrics work, and the names live in one table.

    metrics = GatewayMetrics(registry)            # a dedicated CollectorRegistry
    metrics.register_source("coap", coap.stats)   # the name selects the mapping
    metrics.register_source("serial", serial_in.stats)
    metrics.register_source("buffer", buffer.stats)
    metrics.register_source("mqtt", broker.stats)

A snapshot may be a dataclass, any object with attributes, or a dict.  Each source kind
(``register_source(name, fn, kind=...)``, default: the name) has a list of `Field`s:
the snapshot field (first alias present wins; properties work), the family, constant labels,
and for a dict-valued field the label(s) its keys become (nested dicts: one label per
level).  Fields the table does not name are ignored, missing fields are skipped, None is
skipped, booleans are 0/1, `scale` converts (ms → s).  A stats callable that raises is
logged and counted in ``fieldlink_gateway_metrics_source_errors_total{source}``; the scrape
still succeeds.

Extension points: the tables `INGRESS_FIELDS` (any ingress: "coap", "serial", "mqtt" share
the readings/acks/rejections families), `BUFFER_FIELDS`, `MQTT_FIELDS`, `UPLINK_FIELDS` and
`ALERTS_FIELDS`.  Adding a field is one line; adding a family is one entry in `FAMILIES`.
The families and their sources are listed in docs/coap-serial.md ("Metrics").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("fieldlink.gateway.metrics")

PREFIX = "fieldlink_gateway_"


@dataclass(frozen=True, slots=True)
class Family:
    kind: str  # "counter" | "gauge"
    help: str
    labels: tuple[str, ...] = ()


#: every family the gateway exports (names without PREFIX; counters without "_total")
FAMILIES: dict[str, Family] = {
    # ingress, shared by every protocol
    "readings_received": Family("counter", "Readings accepted from sensors, by protocol",
                                ("protocol",)),
    "readings_duplicate": Family("counter", "Redelivered readings recognised as duplicates",
                                 ("protocol",)),
    "ingress_rejected": Family("counter", "Payloads refused at ingress (dead-lettered by the "
                                          "pipeline), by protocol and reason",
                               ("protocol", "reason")),
    "acks": Family("counter", "Acknowledgements sent after the commit (MQTT PUBACK/PUBREC, "
                              "CoAP ACK 2.04)", ("protocol",)),
    "ingest_unavailable": Family("counter", "Requests not acknowledged because the buffer "
                                            "could not commit", ("protocol",)),
    "ingest_wait_seconds": Family("counter", "Seconds ingress spent waiting for commits "
                                             "(divide by ingest_calls for the mean)",
                                  ("protocol",)),
    "ingest_calls": Family("counter", "Calls into the ingest pipeline", ("protocol",)),
    "internal_errors": Family("counter", "Unexpected errors, by component", ("component",)),
    "connected_devices": Family("gauge", "Connected devices: MQTT clients, open serial ports",
                                ("protocol",)),
    # CoAP
    "coap_requests": Family("counter", "CoAP requests handled"),
    "coap_responses": Family("counter", "CoAP responses, by code", ("code",)),
    "coap_oversize_refused": Family("counter", "CoAP uploads refused for size before ingest"),
    "coap_ingest_timeouts": Family("counter", "CoAP requests whose commit exceeded the timeout"),
    "coap_in_flight": Family("gauge", "CoAP requests waiting for their commit"),
    "coap_listening": Family("gauge", "1 while the CoAP endpoint is listening"),
    # serial, per port
    "serial_port_connected": Family("gauge", "1 while the serial port is open", ("port",)),
    "serial_connects": Family("counter", "Serial port opens (reconnects included)", ("port",)),
    "serial_open_failures": Family("counter", "Failed serial port opens", ("port",)),
    "serial_bytes": Family("counter", "Bytes read from the serial port", ("port",)),
    "serial_lines": Family("counter", "Line frames handed to the pipeline", ("port",)),
    "serial_overlong_lines": Family("counter", "Lines over max_line_bytes", ("port",)),
    "serial_partial_lines": Family("counter", "Lines cut off by a disconnect", ("port",)),
    "serial_discarded_bytes": Family("counter", "Bytes of over-long lines dropped past the "
                                                "limit", ("port",)),
    "serial_ingest_retries": Family("counter", "Line commits retried (buffer busy)", ("port",)),
    "serial_lost_on_shutdown": Family("counter", "Lines not committed before shutdown",
                                      ("port",)),
    # buffer
    "buffer_rows": Family("gauge", "Rows in the buffer, by class", ("class",)),
    "buffer_disk_bytes": Family("gauge", "Buffer size on disk (database + WAL)"),
    "buffer_used_bytes": Family("gauge", "Buffer pages in use"),
    "buffer_max_bytes": Family("gauge", "Configured buffer size limit"),
    "buffer_oldest_unsent_age_seconds": Family("gauge", "Age of the oldest unsent row"),
    "buffer_pending_readings": Family("gauge", "Readings waiting for the next group commit"),
    "buffer_claims_in_flight": Family("gauge", "Uplink claims not yet acknowledged"),
    "buffer_appended": Family("counter", "Rows stored, by class", ("class",)),
    "buffer_acked": Family("counter", "Rows removed after the uplink ack, by class",
                           ("class",)),
    "buffer_duplicates": Family("counter", "Appends recognised as duplicates, by class",
                                ("class",)),
    "drops": Family("counter", "Rows removed without an ack, by reason and class",
                    ("reason", "class")),
    "buffer_refused": Family("counter", "Records refused by the buffer, by reason and class",
                             ("reason", "class")),
    "dead_letters": Family("counter", "Dead letters stored, by reason", ("reason",)),
    "dead_letters_dropped": Family("counter", "Dead letters removed, by reason", ("reason",)),
    "buffer_commits": Family("counter", "Buffer group commits"),
    "buffer_sync_commits": Family("counter", "Buffer commits that fsynced"),
    "buffer_commit_seconds": Family("gauge", "Buffer commit latency", ("stat",)),
    "buffer_group_size": Family("gauge", "Readings per group commit", ("stat",)),
    # MQTT broker
    "mqtt_connections_open": Family("gauge", "Open MQTT connections (before CONNECT too)"),
    "mqtt_subscriptions": Family("gauge", "MQTT subscriptions"),
    "mqtt_messages": Family("counter", "MQTT PUBLISH packets, by direction", ("direction",)),
    "mqtt_bytes": Family("counter", "MQTT bytes, by direction", ("direction",)),
    "mqtt_auth_failures": Family("counter", "MQTT authentication failures, by reason",
                                 ("reason",)),
    "mqtt_acl_refusals": Family("counter", "MQTT ACL refusals, by operation", ("operation",)),
    "mqtt_protocol_errors": Family("counter", "MQTT protocol violations, by kind", ("kind",)),
    "mqtt_dropped": Family("counter", "MQTT deliveries to subscribers dropped, by reason",
                           ("reason",)),
    "mqtt_disconnects": Family("counter", "MQTT disconnections, clean or abnormal", ("kind",)),
    "mqtt_timeouts": Family("counter", "MQTT connections closed for a missed deadline",
                            ("kind",)),
    "mqtt_connections_refused": Family("counter", "MQTT connections refused over the limit"),
    # uplink
    "uplink_batches": Family("counter", "Uplink batches, by outcome", ("outcome",)),
    "uplink_readings": Family("counter", "Readings delivered by the uplink"),
    "uplink_bytes": Family("counter", "Uplink bytes sent (compressed)"),
    "uplink_retries": Family("counter", "Uplink batch retries"),
    "uplink_latency_seconds": Family("gauge", "Uplink batch round trip", ("stat",)),
    "uplink_backlog_age_seconds": Family("gauge", "Age of the oldest reading not yet sent"),
    "uplink_circuit_open": Family("gauge", "1 while the uplink circuit breaker is open"),
    # alerts
    "alerts_firing": Family("gauge", "Alerts currently firing"),
    "alert_transitions": Family("counter", "Alert state transitions, by new state", ("to",)),
    "alert_notifications_failed": Family("counter", "Alert deliveries that failed"),
    "alerts_active": Family("gauge", "Active alerts, by severity and state",
                            ("severity", "state")),
    "alert_deliveries": Family("counter", "Alert notifications by channel and outcome",
                               ("channel", "outcome")),
    "alert_outbox_depth": Family("gauge", "Alert notifications not yet delivered"),
    "alert_outbox_oldest_age_seconds": Family(
        "gauge", "Age of the oldest undelivered alert notification"),
    "alert_late_readings": Family("counter",
                                  "Readings a window family did not absorb, by reason",
                                  ("reason",)),
    "alert_windows_closed": Family("counter", "Windows closed, by what closed them",
                                   ("closed_by",)),
    "alert_rule_reloads": Family("counter", "Rule reloads, by outcome", ("outcome",)),
    "alert_acks": Family("counter", "Operator acknowledgements, by source", ("source",)),
    # pipeline (decode → buffer), all protocols
    "pipeline_payloads": Family("counter", "Payloads handed to the pipeline", ("protocol",)),
    "pipeline_readings_stored": Family("counter", "Readings committed to the buffer",
                                       ("protocol",)),
    "pipeline_duplicates": Family("counter", "Readings recognised as redeliveries",
                                  ("protocol",)),
    "pipeline_dead_letters": Family("counter", "Payloads dead-lettered by the pipeline",
                                    ("reason",)),
    "pipeline_refused": Family("counter", "Readings the buffer refused (not acknowledged)",
                               ("reason",)),
    "pipeline_observer_errors": Family("counter", "Alert-engine observer failures"),
    # the collector itself
    "metrics_source_errors": Family("counter", "stats() calls that failed during a scrape",
                                    ("source",)),
}


@dataclass(frozen=True, slots=True)
class Field:
    """One snapshot field → one family.  See the module docstring."""

    names: tuple[str, ...]
    family: str
    labels: tuple[tuple[str, str], ...] = ()
    #: for dict-valued fields: the label each nesting level's keys become
    key_labels: tuple[str, ...] = ()
    scale: float = 1.0


def F(names: str | tuple[str, ...], family: str, *, key: str | tuple[str, ...] = (),  # noqa: N802
      scale: float = 1.0, **labels: str) -> Field:
    return Field(names if isinstance(names, tuple) else (names,), family,
                 tuple(labels.items()), key if isinstance(key, tuple) else (key,), scale)


def INGRESS_FIELDS(protocol: str) -> list[Field]:  # noqa: N802 - a table, like the others
    """Fields every ingress snapshot may carry (CoapStats, PortStats, the broker's dict)."""
    p = protocol
    return [
        F("readings_accepted", "readings_received", protocol=p),
        F("duplicates", "readings_duplicate", protocol=p),
        F(("rejected", "readings_rejected"), "ingress_rejected", key="reason", protocol=p),
        F(("acks", "readings_acked"), "acks", protocol=p),
        F(("unavailable", "ingest_unavailable", "ingest_retries"), "ingest_unavailable",
          protocol=p),
        F("ingest_seconds", "ingest_wait_seconds", protocol=p),
        F("ingest_calls", "ingest_calls", protocol=p),
        F(("internal_errors", "ingest_errors"), "internal_errors", component=protocol),
    ]


COAP_FIELDS: list[Field] = INGRESS_FIELDS("coap") + [
    F("requests", "coap_requests"),
    F("responses", "coap_responses", key="code"),
    F("oversize_refused", "coap_oversize_refused"),
    F("ingest_timeouts", "coap_ingest_timeouts"),
    F("in_flight", "coap_in_flight"),
    F("listening", "coap_listening"),
]

#: applied to each value of SerialStats.ports, with the port path as label `port`
SERIAL_PORT_FIELDS: list[Field] = INGRESS_FIELDS("serial") + [
    F("connected", "serial_port_connected"),
    F("connected", "connected_devices", protocol="serial"),
    F("connects", "serial_connects"),
    F("open_failures", "serial_open_failures"),
    F("bytes_read", "serial_bytes"),
    F("lines", "serial_lines"),
    F("overlong_lines", "serial_overlong_lines"),
    F("partial_lines", "serial_partial_lines"),
    F("discarded_bytes", "serial_discarded_bytes"),
    F("ingest_retries", "serial_ingest_retries"),
    F("lost_on_shutdown", "serial_lost_on_shutdown"),
]

BUFFER_FIELDS: list[Field] = [
    F("rows", "buffer_rows", key="class"),
    F(("disk_bytes", "bytes"), "buffer_disk_bytes"),
    F("used_bytes", "buffer_used_bytes"),
    F("max_bytes", "buffer_max_bytes"),
    F(("oldest_unsent_age_ms",), "buffer_oldest_unsent_age_seconds", scale=0.001),
    F("pending_readings", "buffer_pending_readings"),
    F("claims_in_flight", "buffer_claims_in_flight"),
    F("appended", "buffer_appended", key="class"),
    F("acked", "buffer_acked", key="class"),
    F("duplicates", "buffer_duplicates", key="class"),
    F(("dropped", "drops"), "drops", key=("reason", "class")),
    F("refused", "buffer_refused", key=("reason", "class")),
    F("dead_letters", "dead_letters", key="reason"),
    F("dead_letters_dropped", "dead_letters_dropped", key="reason"),
    F("commits", "buffer_commits"),
    F("sync_commits", "buffer_sync_commits"),
    F("commit_ms_last", "buffer_commit_seconds", scale=0.001, stat="last"),
    F("commit_ms_avg", "buffer_commit_seconds", scale=0.001, stat="avg"),
    F("commit_ms_max", "buffer_commit_seconds", scale=0.001, stat="max"),
    F("group_size_last", "buffer_group_size", stat="last"),
    F("group_size_avg", "buffer_group_size", stat="avg"),
]

MQTT_FIELDS: list[Field] = INGRESS_FIELDS("mqtt") + [
    F("clients_connected", "connected_devices", protocol="mqtt"),
    F("connections_open", "mqtt_connections_open"),
    F("subscriptions", "mqtt_subscriptions"),
    F("messages_in", "mqtt_messages", direction="in"),
    F("messages_out", "mqtt_messages", direction="out"),
    F("bytes_in", "mqtt_bytes", direction="in"),
    F("bytes_out", "mqtt_bytes", direction="out"),
    F("auth_failures", "mqtt_auth_failures", key="reason"),
    F("acl_refused_publish", "mqtt_acl_refusals", operation="publish"),
    F("acl_refused_subscribe", "mqtt_acl_refusals", operation="subscribe"),
    F("protocol_errors", "mqtt_protocol_errors", key="kind"),
    F("dropped_slow", "mqtt_dropped", reason="slow_subscriber"),
    F("dropped_queue_full", "mqtt_dropped", reason="queue_full"),
    F("disconnects_clean", "mqtt_disconnects", kind="clean"),
    F("disconnects_abnormal", "mqtt_disconnects", kind="abnormal"),
    F("timeouts", "mqtt_timeouts", key="kind"),
    F("connections_refused", "mqtt_connections_refused"),
]

UPLINK_FIELDS: list[Field] = [
    F(("batches_sent", "batches_acked"), "uplink_batches", outcome="sent"),
    F("batches_failed", "uplink_batches", outcome="failed"),
    F("batches_rejected", "uplink_batches", outcome="rejected"),
    F(("batches", "batches_by_outcome"), "uplink_batches", key="outcome"),
    F(("readings_sent", "readings_acked"), "uplink_readings"),
    F("bytes_sent", "uplink_bytes"),
    F("retries", "uplink_retries"),
    F(("latency_ms_last", "last_latency_ms"), "uplink_latency_seconds", scale=0.001,
      stat="last"),
    F(("latency_ms_avg", "avg_latency_ms"), "uplink_latency_seconds", scale=0.001, stat="avg"),
    F(("backlog_age_ms", "oldest_unsent_age_ms"), "uplink_backlog_age_seconds", scale=0.001),
    F("circuit_open", "uplink_circuit_open"),
]

ALERTS_FIELDS: list[Field] = [
    F(("firing", "alerts_firing"), "alerts_firing"),
    F("transitions", "alert_transitions", key="to"),
    F("notifications_failed", "alert_notifications_failed"),
    F("firing_by_severity", "alerts_active", key="severity", state="firing"),
    F("acknowledged_by_severity", "alerts_active", key="severity", state="acknowledged"),
    F("deliveries", "alert_deliveries", key=("channel", "outcome")),
    F("outbox_depth", "alert_outbox_depth"),
    F("outbox_oldest_age_ms", "alert_outbox_oldest_age_seconds", scale=0.001),
    F("late", "alert_late_readings", key="reason"),
    F("windows_closed_by", "alert_windows_closed", key="closed_by"),
    F("rule_reloads", "alert_rule_reloads", key="outcome"),
    F("acks", "alert_acks", key="source"),
]

PIPELINE_FIELDS: list[Field] = [
    F("payloads", "pipeline_payloads", key="protocol"),
    F("readings", "pipeline_readings_stored", key="protocol"),
    F("duplicates", "pipeline_duplicates", key="protocol"),
    F("rejected", "pipeline_dead_letters", key="reason"),
    F("refused", "pipeline_refused", key="reason"),
    F("observer_errors", "pipeline_observer_errors"),
]

#: source kind → (fields of the snapshot, or of each entry of a dict field named `each`)
KINDS: dict[str, tuple[list[Field], str | None, str | None]] = {
    "coap": (COAP_FIELDS, None, None),
    "serial": (SERIAL_PORT_FIELDS, "ports", "port"),
    "buffer": (BUFFER_FIELDS, None, None),
    "mqtt": (MQTT_FIELDS, None, None),
    "uplink": (UPLINK_FIELDS, None, None),
    "alerts": (ALERTS_FIELDS, None, None),
    "pipeline": (PIPELINE_FIELDS, None, None),
}

_MISSING = object()


def _get(snapshot: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        if isinstance(snapshot, Mapping):
            value = snapshot.get(name, _MISSING)
        else:
            value = getattr(snapshot, name, _MISSING)
        if value is not _MISSING:
            return value
    return _MISSING


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _samples(value: Any, key_labels: tuple[str, ...], prefix: tuple[tuple[str, str], ...]
             ) -> Iterator[tuple[tuple[tuple[str, str], ...], float]]:
    if key_labels:
        if not isinstance(value, Mapping):
            return
        for key, inner in value.items():
            yield from _samples(inner, key_labels[1:], prefix + ((key_labels[0], str(key)),))
        return
    number = _number(value)
    if number is not None:
        yield prefix, number


def map_snapshot(snapshot: Any, fields: Iterable[Field],
                 extra: tuple[tuple[str, str], ...] = ()
                 ) -> Iterator[tuple[str, dict[str, str], float]]:
    """(family, labels, value) for every known field of one snapshot.  Pure."""
    for spec in fields:
        value = _get(snapshot, spec.names)
        if value is _MISSING or value is None:
            continue
        family = FAMILIES[spec.family]
        for labels, number in _samples(value, spec.key_labels, spec.labels):
            merged = dict(labels)
            for name, label_value in extra:
                if name in family.labels:
                    merged[name] = label_value
            yield spec.family, merged, number * spec.scale


class GatewayMetrics(Collector):
    """The collector.  Register sources at wiring time; scraping reads them."""

    def __init__(self, registry: CollectorRegistry, *, process_metrics: bool = True) -> None:
        self._sources: dict[str, tuple[str, Callable[[], Any]]] = {}
        self._source_errors: dict[str, int] = {}
        registry.register(self)
        if process_metrics:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
            for collector in (ProcessCollector, PlatformCollector, GCCollector):
                try:
                    collector(registry=registry)
                except ValueError:  # already on this registry
                    pass

    def register_source(self, name: str, stats: Callable[[], Any], *,
                        kind: str | None = None) -> None:
        """Read `stats()` at every scrape and map it by `kind` (default: `name`)."""
        kind = kind or name
        if kind not in KINDS:
            raise ValueError(f"unknown metrics source kind {kind!r}; known: "
                             f"{', '.join(sorted(KINDS))}")
        self._sources[name] = (kind, stats)

    def unregister_source(self, name: str) -> None:
        self._sources.pop(name, None)

    def describe(self) -> Iterable[Metric]:
        # names depend on which sources answer; no up-front description (and no collect()
        # at registration time, before the components exist)
        return []

    def collect(self) -> Iterable[Metric]:
        values: dict[str, dict[tuple[str, ...], float]] = {}
        for name, (kind, stats) in list(self._sources.items()):
            try:
                snapshot = stats()
                samples = list(self._map(kind, snapshot))
            except Exception:
                self._source_errors[name] = self._source_errors.get(name, 0) + 1
                log.exception("metrics source failed", extra={"fields": {"source": name}})
                continue
            for family_name, labels, number in samples:
                family = FAMILIES[family_name]
                key = tuple(labels.get(label, "") for label in family.labels)
                series = values.setdefault(family_name, {})
                # sources sharing a series (several serial ports, one protocol) add up
                series[key] = series.get(key, 0.0) + number
        errors = values.setdefault("metrics_source_errors", {})
        for name, count in self._source_errors.items():
            errors[(name,)] = float(count)
        for family_name, series in values.items():
            family = FAMILIES[family_name]
            metric: CounterMetricFamily | GaugeMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(PREFIX + family_name, family.help,
                                             labels=family.labels)
            else:
                metric = GaugeMetricFamily(PREFIX + family_name, family.help,
                                           labels=family.labels)
            for key, number in series.items():
                metric.add_metric(list(key), number)
            yield metric

    @staticmethod
    def _map(kind: str, snapshot: Any) -> Iterator[tuple[str, dict[str, str], float]]:
        fields, each, label = KINDS[kind]
        if each is None:
            yield from map_snapshot(snapshot, fields)
            return
        entries = _get(snapshot, (each,))
        if not isinstance(entries, Mapping):
            return
        assert label is not None
        for key, entry in entries.items():
            yield from map_snapshot(entry, fields, ((label, str(key)),))


def snapshot_dict(snapshot: Any) -> dict[str, Any]:
    """A JSON-ready dict of a stats snapshot (dataclass, object or dict), for status pages."""
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        return dataclasses.asdict(snapshot)
    if isinstance(snapshot, Mapping):
        return dict(snapshot)
    return dict(vars(snapshot))
