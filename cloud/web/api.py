"""The dashboard's JSON API and pages (every route here is behind `cloud.web.auth.Guard`).

    GET  /                          fleet page          GET /api/session     user, CSRF token
    GET  /devices/{device_id}       device page         GET /api/fleet       gateways
    GET  /alerts                    alerts page         GET /api/devices     device table
    GET  /api/devices/{device_id}                   the device's series (one per measurement)
    GET  /api/devices/{device_id}/series            chart buckets (cloud.web.history)
         ?measurement=&start_ms=&end_ms=
    GET  /api/alerts?recent=N       active + recent alerts
    POST /api/alerts/ack            {"id": "<gateway>/<dedup_key>"}: acknowledge cloud-side
    GET  /api/alerts/stream         server-sent events: "snapshot", then "update"s

Data answers carry `Cache-Control: no-store`.  A store that is down gives 503 with
`{"error": ..., "store": "influxdb"|"archive"}`; the pages show it and keep polling.

The fleet and device table come from one cached read of InfluxDB (`FleetReader`, `cache_s`
seconds), so many open dashboards cost one query set, not one each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cloud.errors import SinkMisconfigured, SinkUnavailable
from cloud.web.auth import Guard
from cloud.web.board import AlertBoard
from cloud.web.feed import AlertFeed
from cloud.web.fleet import GatewayStatus, status_record, summarize
from cloud.web.history import History
from cloud.web.influx import InfluxReader
from cloud.web.pages import page
from cloud.web.queries import (
    DeviceRow,
    attach_sparklines,
    device_rows,
    devices_query,
    last_seen_by_gateway,
    sparkline_query,
    status_query,
)
from cloud.web.sessions import Session
from cloud.web.store import WebStore
from edge.clock import Clock

__all__ = ["Api", "FleetReader", "FleetSnapshot"]

log = logging.getLogger("fieldlink.cloud.web")

_NO_STORE = {"Cache-Control": "no-store"}
_FILTERS = ("facility", "line", "zone", "gateway")
#: the longest range the chart asks for (a year of daily buckets is 365 points)
MAX_RANGE_MS = 5 * 366 * 86_400_000


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=_NO_STORE)


@dataclass(slots=True)
class FleetSnapshot:
    taken_ms: int
    rows: list[DeviceRow]
    gateways_tagged: list[str]
    statuses: dict[str, GatewayStatus]


class FleetReader:
    """The newest reading of every device series (within `lookback_ms`), sparklines of the
    last `sparkline_ms`, gateway tag values and status records; cached for `cache_s`."""

    def __init__(self, influx: InfluxReader, clock: Clock, *, lookback_ms: int = 86_400_000,
                 sparkline_ms: int = 3_600_000, sparkline_points: int = 30,
                 cache_s: float = 5.0) -> None:
        self.influx = influx
        self.clock = clock
        self.lookback_ms = lookback_ms
        self.sparkline_ms = sparkline_ms
        self.sparkline_points = sparkline_points
        self.cache_s = cache_s
        self._cached: tuple[float, FleetSnapshot] | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> FleetSnapshot:
        async with self._lock:  # concurrent requests share one read
            mono = time.monotonic()
            if self._cached is not None and mono - self._cached[0] < self.cache_s:
                return self._cached[1]
            snap = await self._read()
            self._cached = (time.monotonic(), snap)
            return snap

    async def _read(self) -> FleetSnapshot:
        now = self.clock.now_ms()
        measurements = await self.influx.reading_measurements()
        rows: list[DeviceRow] = []
        tagged: list[str] = []
        if measurements:
            q, params = devices_query(measurements, now - self.lookback_ms)
            rows = device_rows(await self.influx.query(q, params))
            bucket = max(1000, self.sparkline_ms // self.sparkline_points)
            q, params = sparkline_query(measurements, now - self.sparkline_ms, now + 1, bucket)
            [series] = await self.influx.query(q, params)
            attach_sparklines(rows, series)
            tagged = await self.influx.tag_values("gateway", measurements)
        statuses: dict[str, GatewayStatus] = {}
        if "gateway_status" in await self.influx.measurements():
            q, params = status_query(now - self.lookback_ms)
            [series] = await self.influx.query(q, params)
            for s in series:
                gw = s.tags.get("gateway")
                for row in s.rows()[:1]:
                    st = status_record(row)
                    if gw and st is not None:
                        statuses[gw] = st
        return FleetSnapshot(now, rows, tagged, statuses)


class Api:
    def __init__(self, guard: Guard, store: WebStore, board: AlertBoard, feed: AlertFeed,
                 fleet: FleetReader, history: History, clock: Clock, *,
                 known_gateways: list[str], offline_after_ms: int,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        self.guard = guard
        self.store = store
        self.board = board
        self.feed = feed
        self.fleet = fleet
        self.history = history
        self.clock = clock
        self.known_gateways = list(known_gateways)
        self.offline_after_ms = offline_after_ms
        self.stopping = asyncio.Event()
        #: a comment line this often keeps proxies from closing an idle stream, and notices
        #: a browser that went away (its subscription is dropped then)
        self.heartbeat_s = 10.0
        self.counts: dict[str, int] = {"store_unavailable": 0, "acks": 0, "streams": 0}

    def routes(self) -> list[web.RouteDef]:
        g = self.guard
        return [
            web.get("/", g.page(self.fleet_page)),
            web.get("/devices/{device_id}", g.page(self.device_page)),
            web.get("/alerts", g.page(self.alerts_page)),
            web.get("/api/session", g.api(self.session_info)),
            web.get("/api/fleet", g.api(self.fleet_info)),
            web.get("/api/devices", g.api(self.devices)),
            web.get("/api/devices/{device_id}", g.api(self.device)),
            web.get("/api/devices/{device_id}/series", g.api(self.series)),
            web.get("/api/alerts", g.api(self.alerts)),
            web.post("/api/alerts/ack", g.api(self.ack)),
            web.get("/api/alerts/stream", g.api(self.stream)),
        ]

    # -- pages -------------------------------------------------------------------------------

    def _page(self, name: str, s: Session, **attrs: str) -> web.Response:
        return web.Response(text=page(name, user=s.user, csrf=s.csrf, attrs=attrs),
                            content_type="text/html", headers=_NO_STORE)

    async def fleet_page(self, request: web.Request, s: Session) -> web.StreamResponse:
        return self._page("fleet", s)

    async def device_page(self, request: web.Request, s: Session) -> web.StreamResponse:
        return self._page("device", s, **{"device-id": request.match_info["device_id"]})

    async def alerts_page(self, request: web.Request, s: Session) -> web.StreamResponse:
        return self._page("alerts", s)

    # -- data --------------------------------------------------------------------------------

    async def _snapshot(self) -> FleetSnapshot | web.Response:
        try:
            return await self.fleet.snapshot()
        except (SinkUnavailable, SinkMisconfigured, ValueError) as exc:
            self.counts["store_unavailable"] += 1
            log.warning("fleet read failed", extra={"fields": {"error": str(exc)}})
            return _json({"error": str(exc), "store": "influxdb"}, 503)

    async def session_info(self, request: web.Request, s: Session) -> web.StreamResponse:
        return _json({"user": s.user, "csrf": s.csrf, "expires_ms": s.expires_ms})

    async def fleet_info(self, request: web.Request, s: Session) -> web.StreamResponse:
        snap = await self._snapshot()
        if isinstance(snap, web.Response):
            return snap
        devices: dict[str, int] = {}
        for r in snap.rows:
            if r.gateway:
                devices[r.gateway] = devices.get(r.gateway, 0) + 1
        summaries = summarize(self.clock.now_ms(), offline_after_ms=self.offline_after_ms,
                              known=[*self.known_gateways, *snap.gateways_tagged],
                              last_seen=last_seen_by_gateway(snap.rows), devices=devices,
                              statuses=snap.statuses,
                              alerts_firing=self.board.firing_by_gateway())
        return _json({"generated_ms": snap.taken_ms, "offline_after_ms": self.offline_after_ms,
                      "lookback_ms": self.fleet.lookback_ms,
                      "gateways": [g.as_json() for g in summaries]})

    async def devices(self, request: web.Request, s: Session) -> web.StreamResponse:
        snap = await self._snapshot()
        if isinstance(snap, web.Response):
            return snap
        chosen = {k: request.query[k] for k in _FILTERS if request.query.get(k)}
        options = {k: sorted({str(getattr(r, k)) for r in snap.rows if getattr(r, k)})
                   for k in _FILTERS}
        rows = [r for r in snap.rows if all(getattr(r, k) == v for k, v in chosen.items())]
        return _json({"generated_ms": snap.taken_ms, "filters": chosen, "options": options,
                      "sparkline_ms": self.fleet.sparkline_ms,
                      "devices": [r.as_json() for r in rows]})

    async def device(self, request: web.Request, s: Session) -> web.StreamResponse:
        device_id = request.match_info["device_id"]
        snap = await self._snapshot()
        if isinstance(snap, web.Response):
            return snap
        rows = [r.as_json() for r in snap.rows if r.device_id == device_id]
        alerts = [a for a in self.board.active() if a.get("device_id") == device_id]
        return _json({"device_id": device_id, "series": rows, "alerts": alerts,
                      "found": bool(rows)})

    async def series(self, request: web.Request, s: Session) -> web.StreamResponse:
        device_id = request.match_info["device_id"]
        now = self.clock.now_ms()
        try:
            end = int(request.query.get("end_ms", now))
            start = int(request.query.get("start_ms", end - 3_600_000))
        except ValueError:
            return _json({"error": "start_ms and end_ms must be integers (ms)"}, 400)
        if not 0 < end - start <= MAX_RANGE_MS:
            return _json({"error": "the range must be positive and at most 5 years"}, 400)
        measurement = request.query.get("measurement")
        if measurement is not None and (len(measurement) > 200 or
                                        not measurement.isprintable()):
            return _json({"error": "not a measurement name"}, 400)
        if not measurement:
            snap = await self._snapshot()
            if isinstance(snap, web.Response):
                return snap
            known = [r.measurement for r in snap.rows if r.device_id == device_id]
            if not known:
                return _json({"error": f"no recent readings of {device_id!r}: name the "
                                       "measurement"}, 404)
            measurement = known[0]
        try:
            chart = await self.history.series(device_id, measurement, start, end, now)
        except (SinkUnavailable, SinkMisconfigured) as exc:
            self.counts["store_unavailable"] += 1
            where = "archive" if "archive" in str(exc).lower() else "influxdb"
            return _json({"error": str(exc), "store": where}, 503)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(chart)

    # -- alerts ------------------------------------------------------------------------------

    def _alerts_body(self, recent: int) -> dict[str, Any]:
        return {"active": self.board.active(), "recent": self.board.recent(recent),
                "live": self.feed.caught_up.is_set(), "connected": self.feed.connected}

    async def alerts(self, request: web.Request, s: Session) -> web.StreamResponse:
        try:
            recent = min(500, max(0, int(request.query.get("recent", "100"))))
        except ValueError:
            return _json({"error": "recent must be an integer"}, 400)
        return _json(self._alerts_body(recent))

    async def ack(self, request: web.Request, s: Session) -> web.StreamResponse:
        try:
            body = await request.json()
            aid = body["id"]
            if not isinstance(aid, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'expected a JSON object {"id": "<gateway>/<dedup_key>"}'},
                         400)
        outcome, record = self.board.ack(aid, s.user, self.clock.now_ms())
        if outcome == "missing":
            return _json({"error": f"no active alert {aid!r}"}, 404)
        if outcome == "already" or record is None:
            return _json({"error": f"alert {aid!r} is already acknowledged",
                          "alert": self.board.get(aid)}, 409)
        if not await self.store.record_ack(record):
            return _json({"error": f"alert {aid!r} is already acknowledged"}, 409)
        update = self.board.commit_ack(record)
        self.feed.publish(update)
        self.counts["acks"] += 1
        log.info("alert acknowledged on the dashboard", extra={"fields": {
            "alert": aid, "incarnation": record.incarnation, "by": s.user}})
        return _json({"acknowledged": update.alert})

    async def stream(self, request: web.Request, s: Session) -> web.StreamResponse:
        """Server-sent events: `snapshot` (the /api/alerts body), then one `update` per
        change; a comment every `heartbeat_s`.  Ends when the session expires, the user
        logs out, the server stops or the client is too slow (the browser reconnects)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q = self.feed.subscribe()
        self.counts["streams"] += 1
        try:
            await resp.write(_sse("snapshot", self._alerts_body(100)))
            stopping = asyncio.ensure_future(self.stopping.wait())
            try:
                while True:
                    getter = asyncio.ensure_future(q.get())
                    done, _ = await asyncio.wait({getter, stopping},
                                                 timeout=self.heartbeat_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                    if stopping in done or request.transport is None or \
                            request.transport.is_closing():
                        break
                    if self.store.session(s.token_hash, self.clock.now_ms()) is None or \
                            not self.guard.users.exists(s.user):
                        await resp.write(_sse("expired", {}))
                        break
                    if getter in done:
                        update = getter.result()
                        if update is None:
                            break
                        await resp.write(_sse("update", update.as_json()))
                    else:
                        await resp.write(b": keepalive\n\n")
            finally:
                stopping.cancel()
        except ConnectionResetError:
            pass  # the browser went away; EventSource reconnects if it is still open
        finally:
            self.feed.unsubscribe(q)
        return resp


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
