"""The cloud dashboard (`fieldlink cloud web`): fleet overview, device charts, live alerts.

Modules, from the browser inwards:

* `app` — the command (server, `users add|remove|list`); `service` — `WebService`, the
  composition (store, readers, alert feed, HTTP server, housekeeping);
* `auth` — login, logout and the `Guard` every data route goes through; `sessions` (pure:
  tokens, CSRF, throttle), `users` (the users file, argon2id), `store` (SQLite: sessions and
  cloud-side acknowledgements);
* `api` — the JSON API and pages; `pages` + `templates/` + `static/` — HTML, scripts, styles
  and the vendored uPlot chart library (no CDN: plants often have no internet);
* `queries` (pure InfluxQL), `influx` (the hot store), `archive` (DuckDB over the Parquet
  archive), `history` (which store answers which part of a chart), `fleet` (pure gateway
  summaries);
* `board` (pure: active and recent alerts, acknowledgements) fed by `feed` (the alerts topic).

docs/dashboards.md describes what the pages show, where each figure comes from, and the
security model.
"""
