"""Web click tracking: browser snippet -> collector -> `web_events` -> 1-minute windows.

* `cloud.clicks.events`, `cloud.clicks.pii` — the event schema, validation, PII scrubbing
  (pure).
* `cloud.clicks.dedup` — the collector's bounded, persistent memory of event ids.
* `cloud.clicks.collector` — `POST /v1/batch` (Segment's batch API shape), `/snippet.js`.
* `cloud.clicks.windows` — tumbling windows per event type with a grace period (pure).
* `cloud.clicks.job`, `cloud.clicks.results` — the window job and its InfluxDB / Parquet
  output.
* `cloud.clicks.app` — `fieldlink cloud clicks collector|job`.

docs/secondary-pipelines.md describes the pipeline end to end.
"""
