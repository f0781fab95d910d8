"""GatewayMetrics: stats snapshots → Prometheus families, read at scrape time."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.coap import CoapStats
from gateway.http.metrics import (
    BUFFER_FIELDS,
    FAMILIES,
    INGRESS_FIELDS,
    KINDS,
    MQTT_FIELDS,
    PREFIX,
    GatewayMetrics,
    map_snapshot,
)
from gateway.serialport import PortStats, SerialStats


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_table_entry_names_a_family_with_matching_labels() -> None:
    for kind, (fields, _, each_label) in KINDS.items():
        for spec in fields:
            family = FAMILIES[spec.family]
            used = {name for name, _ in spec.labels} | set(spec.key_labels)
            assert used <= set(family.labels), (kind, spec)
            missing = set(family.labels) - used - {each_label}
            assert not missing, f"{kind}.{spec.names[0]} leaves {missing} of {spec.family} empty"
            if spec.key_labels:
                assert family.labels, spec


def test_coap_stats_map_to_the_shared_and_coap_families() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process_metrics=False)
    stats = CoapStats(listening=True, requests=5, acks=3, readings_accepted=7, duplicates=1,
                      rejected={"malformed_payload": 2}, responses={"2.04": 3, "4.00": 2},
                      ingest_seconds=0.25, ingest_calls=5)
    metrics.register_source("coap", lambda: stats)
    got = scrape(registry)
    p = PREFIX
    assert got[(p + "readings_received_total", (("protocol", "coap"),))] == 7
    assert got[(p + "acks_total", (("protocol", "coap"),))] == 3
    assert got[(p + "ingress_rejected_total",
                (("protocol", "coap"), ("reason", "malformed_payload")))] == 2
    assert got[(p + "coap_responses_total", (("code", "4.00"),))] == 2
    assert got[(p + "coap_listening", ())] == 1
    assert got[(p + "ingest_wait_seconds_total", (("protocol", "coap"),))] == 0.25


def test_stats_are_read_at_scrape_time_not_copied_at_registration() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process_metrics=False)
    live = CoapStats()
    metrics.register_source("coap", lambda: live)
    live.readings_accepted = 41
    assert scrape(registry)[(PREFIX + "readings_received_total", (("protocol", "coap"),))] == 41
    live.readings_accepted = 42
    assert scrape(registry)[(PREFIX + "readings_received_total", (("protocol", "coap"),))] == 42


def test_serial_ports_get_a_port_label_and_add_up_per_protocol() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process_metrics=False)
    snapshot = SerialStats(ports={
        "/dev/ttyUSB0": PortStats("/dev/ttyUSB0", connected=True, readings_accepted=3,
                                  rejected={"malformed_payload": 1}, overlong_lines=1),
        "/dev/ttyUSB1": PortStats("/dev/ttyUSB1", connected=False, readings_accepted=4,
                                  rejected={"malformed_payload": 2}),
    })
    metrics.register_source("serial", lambda: snapshot)
    got = scrape(registry)
    p = PREFIX
    assert got[(p + "readings_received_total", (("protocol", "serial"),))] == 7
    assert got[(p + "ingress_rejected_total",
                (("protocol", "serial"), ("reason", "malformed_payload")))] == 3
    assert got[(p + "serial_port_connected", (("port", "/dev/ttyUSB0"),))] == 1
    assert got[(p + "serial_port_connected", (("port", "/dev/ttyUSB1"),))] == 0
    assert got[(p + "connected_devices", (("protocol", "serial"),))] == 1
    assert got[(p + "serial_overlong_lines_total", (("port", "/dev/ttyUSB0"),))] == 1


def test_buffer_snapshot_with_nested_reasons_and_ms_to_seconds() -> None:
    @dataclass
    class BufferLike:
        rows: dict[str, int]
        dropped: dict[str, dict[str, int]]
        oldest_unsent_age_ms: int | None
        commit_ms_last: float
        db_bytes: int
        wal_bytes: int
        unknown_field: str = "ignored"

        @property
        def disk_bytes(self) -> int:
            return self.db_bytes + self.wal_bytes

    snap = BufferLike(rows={"raw": 10, "alert": 1}, dropped={"evicted": {"raw": 4}},
                      oldest_unsent_age_ms=1500, commit_ms_last=4.0, db_bytes=4096,
                      wal_bytes=1024)
    got = {(fam, tuple(sorted(labels.items()))): value
           for fam, labels, value in map_snapshot(snap, KINDS["buffer"][0])}
    assert got[("buffer_rows", (("class", "raw"),))] == 10
    assert got[("drops", (("class", "raw"), ("reason", "evicted")))] == 4
    assert got[("buffer_oldest_unsent_age_seconds", ())] == 1.5
    assert got[("buffer_commit_seconds", (("stat", "last"),))] == 0.004
    assert got[("buffer_disk_bytes", ())] == 5120
    snap.oldest_unsent_age_ms = None  # empty buffer: no sample rather than a wrong one
    assert all(fam != "buffer_oldest_unsent_age_seconds"
               for fam, _, _ in map_snapshot(snap, KINDS["buffer"][0]))


def test_dict_snapshots_work_too_and_aliases_are_used() -> None:
    mqtt = {"clients_connected": 12, "readings_acked": 30, "readings_accepted": 31,
            "readings_rejected": {"unknown_device": 2}, "messages_in": 40,
            "acl_refused_publish": 1, "brand_new_counter": 5}
    got = {(fam, tuple(sorted(labels.items()))): value
           for fam, labels, value in map_snapshot(mqtt, KINDS["mqtt"][0])}
    assert got[("connected_devices", (("protocol", "mqtt"),))] == 12
    assert got[("acks", (("protocol", "mqtt"),))] == 30
    assert got[("ingress_rejected", (("protocol", "mqtt"), ("reason", "unknown_device")))] == 2
    assert got[("mqtt_acl_refusals", (("operation", "publish"),))] == 1
    assert not any("brand_new" in fam for fam, _ in got)


def test_a_failing_source_is_counted_and_the_scrape_still_works() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process_metrics=False)

    def broken() -> CoapStats:
        raise RuntimeError("component gone")

    metrics.register_source("coap", broken)
    metrics.register_source("serial", lambda: SerialStats())
    got = scrape(registry)
    assert got[(PREFIX + "metrics_source_errors_total", (("source", "coap"),))] == 1
    metrics.unregister_source("coap")
    assert (PREFIX + "metrics_source_errors_total", (("source", "coap"),)) in scrape(registry)


def test_unknown_kind_is_refused_at_registration() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), process_metrics=False)
    with pytest.raises(ValueError, match="unknown metrics source kind"):
        metrics.register_source("lora", dict)
    metrics.register_source("coap-2", CoapStats, kind="coap")


def test_two_gateways_in_one_process_have_separate_registries() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    GatewayMetrics(a).register_source("coap", lambda: CoapStats(readings_accepted=1))
    GatewayMetrics(b).register_source("coap", lambda: CoapStats(readings_accepted=2))
    key = (PREFIX + "readings_received_total", (("protocol", "coap"),))
    assert scrape(a)[key] == 1 and scrape(b)[key] == 2
    assert any(name.startswith("process_") for name, _ in scrape(a))


def _attribute_names(cls: type) -> set[str]:
    fields = {f.name for f in dataclasses.fields(cls)}
    return fields | {name for name in dir(cls) if isinstance(getattr(cls, name), property)}


def test_buffer_table_names_fields_the_buffer_snapshot_has() -> None:
    from gateway.buffer.results import BufferStats

    names = _attribute_names(BufferStats)
    missing = [spec.names for spec in BUFFER_FIELDS if not set(spec.names) & names]
    assert not missing, f"BufferStats has none of {missing}: update BUFFER_FIELDS"


def test_mqtt_table_names_counters_the_broker_reports() -> None:
    from gateway.mqtt.broker import Counters

    # the gauges Broker.stats() adds to its Counters
    names = _attribute_names(Counters) | {"clients_connected", "connections_open",
                                          "subscriptions"}
    shared_optional = {spec.names for spec in INGRESS_FIELDS("mqtt")}
    missing = [spec.names for spec in MQTT_FIELDS
               if spec.names not in shared_optional and not set(spec.names) & names]
    assert not missing, f"the broker reports none of {missing}: update MQTT_FIELDS"
    for needed in ("readings_accepted", "readings_acked", "readings_rejected"):
        assert needed in names
