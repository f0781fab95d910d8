"""Local alert delivery: the service around the pure `edge.rules.AlertEngine`.

* `AlertService` (`service`): the async component the gateway app runs — pipeline observer,
  ticker (`ticker`: every 100 ms, and at once when windows are due), durable state and
  outbox, MQTT/HTTP acknowledgements, SIGHUP reload, stats.
* `AlertSettings`, `WebhookTarget` (`settings`): how it runs; `AlertSettings.from_config`.
* `AlertStore` (`store`): its SQLite file (snapshot, outbox, delivery status).
* `apply_transitions` (`journal`): committed transitions replayed onto a snapshot (restart).
* channels (`channels`), the per-channel delivery task (`delivery`), the wire formats
  (`formats`: MQTT state, PagerDuty Events v2, generic webhook), the aggregates' way to
  the buffer (`aggregates`), the outbox (`outbox`), MQTT acks and HTTP routes (`operators`),
  when to snapshot (`cadence`), stats and health (`status`), the CLI (`cli`), fakes (`testing`).

docs/alerts.md ("Delivery") describes topics, bodies, retries and the restart guarantee.
"""

from gateway.alerts.service import AlertService
from gateway.alerts.settings import AlertSettings, WebhookTarget
from gateway.alerts.store import AlertStore

__all__ = ["AlertService", "AlertSettings", "AlertStore", "WebhookTarget"]
