"""`AlertSettings`: how the alert service runs — plain data, built from `gateway.yaml`.

    settings = AlertSettings.from_config(cfg)        # cfg: edge.config.gateway.GatewayConfig

Everything but the file locations and the `alerts:` section of the config has a default
here (timing, retention); tests and benchmarks construct `AlertSettings` directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from edge.config.gateway import GatewayConfig


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    kind: Literal["pagerduty", "generic"] = "generic"
    #: PagerDuty routing key (required for kind "pagerduty")
    routing_key: str | None = None
    timeout_s: float = 10.0

    @property
    def channel(self) -> str:
        """Stable channel name: a webhook keeps its pending deliveries across restarts as
        long as its kind and URL stay the same, whatever its position in the list."""
        digest = hashlib.sha256(f"{self.kind} {self.url}".encode()).hexdigest()[:10]
        return f"webhook-{digest}"

    @property
    def display(self) -> str:
        """The URL without credentials, query or fragment (safe for logs)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{self.kind} {parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class AlertSettings:
    #: the SQLite file of the alert service (snapshot, outbox)
    state_path: Path
    #: rules.yaml; None runs without rules (one default 10 s window family, no alerts)
    rules_file: Path | None = None
    gateway_id: str = "gateway"
    #: state topics are <prefix><severity>/<rule_id>/<device_id>; acks <prefix>ack/<dedup_key>
    topic_prefix: str = "alerts/"
    webhooks: tuple[WebhookTarget, ...] = ()
    #: publish alert states on the embedded broker (its channels wait for `attach_mqtt`)
    mqtt_delivery: bool = True
    #: period of engine.advance (stale, gateway and re-notification checks; window closes
    #: also happen in between, see `close_coalesce_s`); None: no ticker task, the owner
    #: calls `AlertService.step()` (tests)
    tick_s: float | None = 0.1
    #: windows closed per engine call (about 10 ms of CPU on the development machine); the
    #: event loop runs other tasks in between, and each call's alerts are committed and
    #: delivered before the next call
    close_batch: int = 2000
    #: between ticks, due windows are closed as soon as a reading makes them due — wakes
    #: closer together than this are served by one call (each costs a fixed ~0.1 ms)
    close_coalesce_s: float = 0.01
    #: a full engine snapshot (open windows included) at most this often ...
    snapshot_interval_s: float = 10.0
    #: ... and less often when it is expensive: its CPU time stays under this share of a core
    snapshot_cpu_share: float = 0.02
    #: a resolved alert's retained MQTT state is cleared (empty retained message) this long
    #: after the resolution; 0 clears at once, None never
    retain_resolved_s: float | None = 600.0
    #: webhook and buffer retries: capped, jittered exponential backoff
    retry_base_s: float = 0.5
    retry_cap_s: float = 60.0
    #: finished transitions are kept (GET /alerts "recent", audit) this long ...
    outbox_retention_s: float = 7 * 86400.0
    #: ... and at most this many
    outbox_max_rows: int = 50_000
    #: aggregates waiting for the buffer beyond this are dropped (counted, logged)
    max_pending_aggregates: int = 200_000
    #: at shutdown, how long channels may take to deliver what is pending
    shutdown_grace_s: float = 2.0
    #: time spent in the engine (observe/advance) is measured with the thread CPU clock
    measure_cpu: bool = False

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> AlertSettings:
        a = cfg.alerts
        rules: Path | None = a.rules_file
        if rules is not None and "rules_file" not in a.model_fields_set and not rules.is_file():
            rules = None  # the default file may be absent: no local rules
        hooks = tuple(WebhookTarget(url=str(h.url), kind=h.kind, routing_key=a.routing_key(h),
                                    timeout_s=h.timeout_s) for h in a.webhooks)
        return cls(state_path=cfg.gateway.data_dir / "alerts.sqlite3", rules_file=rules,
                   gateway_id=cfg.gateway.id, topic_prefix=a.mqtt_topic_prefix,
                   webhooks=hooks, mqtt_delivery=cfg.mqtt.enabled)
