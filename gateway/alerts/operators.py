"""How operators reach the alert service: MQTT acknowledgements and HTTP routes.

MQTT (`MqttAcks`, an internal subscriber of ``<prefix>ack/#`` on the embedded broker): an
operator publishes to ``alerts/ack/<dedup_key>``, payload empty or ``{"by": "name"}``.  The
broker's ACL lets only operator accounts publish under ``alerts/#`` (device PUBLISHes there are
refused), so every message arriving here is an operator's.  A retained ack is cleared (it
would be replayed to every subscriber); a payload that is not a JSON object is counted
(``acks["mqtt_invalid"]``) and the ack still applies; an ack of an alert that is not firing is
counted as ``mqtt_refused``.  The acknowledgement transition is delivered on every channel.

HTTP (`alert_routes`, mounted on the gateway's HTTP server):

    GET  /alerts                   {"active": [...], "recent": [...], "stats": {...}}
    POST /alerts/{dedup_key}/ack   acknowledge a firing alert

Both need an *operator* account of the broker's credentials file, as HTTP Basic
(``curl -u ops:secret``): 401 without or with wrong credentials, 403 for a device account
(and when the gateway runs without a credentials file: no operator can be recognised).
The password is verified like an MQTT CONNECT's (argon2 off the event loop, cached).

Acknowledge answers: 200 ``{"acknowledged": <alert body>}`` once the acknowledgement is
durable (it is then delivered on every channel, like any transition); 404 for no active
alert with that key; 409 when it is already acknowledged.  `by` is the operator's username.
``GET /alerts?recent=N`` (default 50, at most 500) sets how many recent transitions — each
with its delivery status per channel — are listed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.alerts.formats import parse_ack
from gateway.errors import Unauthorized

if TYPE_CHECKING:
    from gateway.alerts.service import AlertService

log = logging.getLogger("fieldlink.gateway.alerts")

REALM = 'Basic realm="fieldlink gateway", charset="UTF-8"'
MAX_RECENT = 500


def _deny(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": REALM} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def operator(service: AlertService, request: web.Request) -> str | web.Response:
    """The operator's username, or the response refusing the request."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return _deny(401, "operator credentials required (HTTP Basic)")
    try:
        username, sep, password = base64.b64decode(encoded.strip(), validate=True
                                                   ).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return _deny(401, "malformed Basic credentials")
    if not sep or not username:
        return _deny(401, "malformed Basic credentials")
    if service.auth is None:
        return _deny(403, "no credentials file is configured: no operator can be recognised")
    try:
        account = await service.auth.authenticate(username, password.encode())
    except Unauthorized:
        service.acks["http_unauthorized"] += 1
        return _deny(401, "invalid credentials")
    if account.role != "operator":
        service.acks["http_forbidden"] += 1
        return _deny(403, f"{username!r} is not an operator account")
    return str(account.username)


def alert_routes(service: AlertService) -> list[web.RouteDef]:
    async def list_alerts(request: web.Request) -> web.Response:
        who = await operator(service, request)
        if isinstance(who, web.Response):
            return who
        try:
            limit = min(MAX_RECENT, max(0, int(request.query.get("recent", "50"))))
        except ValueError:
            return web.json_response({"error": "recent must be an integer"}, status=400)
        body: dict[str, Any] = {"active": service.engine.active_alerts(),
                                "recent": await service.recent(limit) if limit else [],
                                "stats": service.stats()}
        return web.json_response(body)

    async def acknowledge(request: web.Request) -> web.Response:
        who = await operator(service, request)
        if isinstance(who, web.Response):
            return who
        key = request.match_info["dedup_key"]
        t = await service.acknowledge(key, who, source="http")
        if t is not None:
            return web.json_response({"acknowledged": t.body})
        current = service.alert(key)
        if current is None:
            return web.json_response({"error": f"no active alert {key!r}"}, status=404)
        return web.json_response({"error": f"alert {key!r} is already {current['state']}",
                                  "alert": current}, status=409)

    return [web.get("/alerts", list_alerts),
            web.post("/alerts/{dedup_key}/ack", acknowledge)]


class MqttAcks:
    """The callback `MqttServer.subscribe_internal(f"{prefix}ack/#", MqttAcks(service))`."""

    def __init__(self, service: AlertService) -> None:
        self.service = service

    def __call__(self, msg: Any) -> Any:
        svc = self.service
        if msg.retain and msg.payload and svc.mqtt is not None:
            with contextlib.suppress(Exception):
                svc.mqtt.publish(msg.topic, b"", retain=True)
        ack = parse_ack(msg.topic, msg.payload, svc.settings.topic_prefix,
                        getattr(msg, "username", None))
        if not ack.payload_ok:
            svc.acks["mqtt_invalid"] += 1
            log.warning("MQTT acknowledgement with a payload that is not a JSON object; "
                        "acknowledged anyway", extra={"fields": {"topic": msg.topic}})
        if not ack.dedup_key or not svc.running:
            svc.acks["mqtt_refused"] += 1
            return None
        return self._ack(ack.dedup_key, ack.by)

    async def _ack(self, dedup_key: str, by: str) -> None:
        t = await self.service.acknowledge(dedup_key, by, source="mqtt")
        log.info("alert acknowledgement over MQTT", extra={"fields": {
            "dedup_key": dedup_key, "by": by, "accepted": t is not None}})
