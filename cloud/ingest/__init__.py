"""Cloud ingest: the HTTP endpoint gateways post signed batches to (docs/cloud-ingest.md).

`cloud.ingest.service.IngestService` is the component, `cloud.ingest.app.main` the command
(`fieldlink cloud ingest`).  Pure parts: `records` (batch → bus records), `validate`,
`recent.RecentKeys` (readings seen recently); I/O: `dedup.BatchLedger` (SQLite), the service.
"""
