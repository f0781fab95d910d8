"""SaaS connectors: incremental REST polling and signed webhooks into the bus.

* `cloud.connectors.ratelimit` — Link pagination and rate-limit decisions (pure).
* `cloud.connectors.client` — an HTTP JSON client that waits out rate limits and retries.
* `cloud.connectors.store` — cursors and delivered ids in SQLite (survive restarts).
* `cloud.connectors.poller` — delivery (produce, then record) and the poll loop.
* `cloud.connectors.github` — commits and events of GitHub repositories.
* `cloud.connectors.stripe` — Stripe-signed webhook deliveries.
* `cloud.connectors.service`, `cloud.connectors.app` — `fieldlink cloud connectors run`.

docs/secondary-pipelines.md describes the framework and its guarantees.
"""
