"""The broker core shared by every listener: sessions, routing, retained messages, counters,
and the in-process API the rest of the gateway uses.

Who calls what:

* connections (`gateway.mqtt.connection`) call `attach`/`detach`, `subscribe`/`unsubscribe`
  and `route` / `route_reading`;
* gateway code calls `publish` (e.g. the alerts module, retained `alerts/...` state),
  `subscribe_internal` (e.g. consuming `alerts/ack/...` published by operators) and
  `stats()` (status page, metrics);
* `MqttServer` calls `sweep` once a second (keepalive and CONNECT timeouts, session expiry).

Readings reach the ingest through `Broker.submit(payload, origin, durable=, done=, token=)`:
the pipeline's own `submit` (no task per PUBLISH: `done` is called back after the commit) or,
for an `Ingest` that only has the async `ingest()` (test doubles), `TaskSubmit`, which runs
one `mqtt-ingest` task per PUBLISH.

Everything runs on the event loop thread; nothing here blocks or awaits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.clock import Clock
from gateway.auth.acl import Acl
from gateway.auth.authenticator import Authenticator
from gateway.auth.topics import valid_topic_filter, valid_topic_name
from gateway.ingest import Ingest
from gateway.mqtt.router import Message, RetainedStore, TopicTree
from gateway.mqtt.session import Session
from gateway.mqtt.settings import MqttSettings

if TYPE_CHECKING:
    from gateway.mqtt.connection import MqttConnection

log = logging.getLogger("gateway.mqtt")


@dataclass
class Counters:
    """Monotonic counters since start (a snapshot is `Broker.stats()`)."""

    connections_opened: int = 0
    connections_refused: int = 0  # over max_connections
    connects: int = 0  # CONNACK 0 sent
    disconnects_clean: int = 0
    disconnects_abnormal: int = 0
    sessions_taken_over: int = 0
    messages_in: int = 0  # PUBLISH received
    messages_out: int = 0  # PUBLISH sent to subscribers
    bytes_in: int = 0
    bytes_out: int = 0
    readings_acked: int = 0  # PUBACK/PUBREC sent after the pipeline returned
    readings_accepted: int = 0
    readings_rejected: dict[str, int] = field(default_factory=dict)  # dead-lettered, by reason
    auth_failures: dict[str, int] = field(default_factory=dict)
    acl_refused_publish: int = 0
    acl_refused_subscribe: int = 0
    protocol_errors: dict[str, int] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)  # keepalive / connect
    ingest_unavailable: int = 0  # RetriableError from the pipeline: client disconnected
    ingest_errors: int = 0  # unexpected exception from the pipeline: client disconnected
    dropped_slow: int = 0  # QoS 0 to a subscriber that does not keep up
    dropped_queue_full: int = 0  # QoS 1 to a subscriber whose queue is full
    wills_published: int = 0
    internal_published: int = 0
    callback_errors: int = 0
    sessions_expired: int = 0
    overload_pauses: int = 0  # connections paused: too many PUBLISHes in flight broker-wide


def bump(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


class LimitedLog:
    """Log a warning per key at most once per `interval` seconds, saying how many were
    suppressed — bad input is never silent, and never floods the log either."""

    def __init__(self, clock: Clock, interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, **fields: Any) -> None:
        now = self.clock.monotonic()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        log.warning(msg, extra={"fields": fields})


class InternalSubscription:
    """A gateway-internal subscriber (no socket).  `cancel()` ends it."""

    def __init__(self, broker: Broker, flt: str, callback: Callable[[Message], Any]) -> None:
        self.broker = broker
        self.filter = flt
        self.callback = callback

    def deliver(self, msg: Message, qos: int, retain: bool = False) -> None:
        try:
            result = self.callback(msg)
            if inspect.isawaitable(result):
                self.broker.spawn(result, "mqtt-internal-callback")
        except Exception:
            self.broker.counters.callback_errors += 1
            log.exception("internal MQTT subscriber failed",
                          extra={"fields": {"filter": self.filter, "topic": msg.topic}})

    def cancel(self) -> None:
        self.broker.tree.remove(self.filter, self)


class TaskSubmit:
    """`submit()` over an `Ingest` with only `async ingest()`: one named task per payload."""

    def __init__(self, broker: Broker, ingest: Ingest) -> None:
        self.broker = broker
        self.ingest = ingest

    def __call__(self, payload: bytes, origin: Any, *, durable: bool,
                 done: Callable[[Any, Any, BaseException | None], None], token: Any) -> None:
        self.broker.spawn(self._run(payload, origin, durable, done, token), "mqtt-ingest")

    async def _run(self, payload: bytes, origin: Any, durable: bool,
                   done: Callable[[Any, Any, BaseException | None], None], token: Any) -> None:
        try:
            outcome = await self.ingest.ingest(payload, origin, durable=durable)
        except Exception as exc:  # noqa: BLE001 - the connection decides what it means
            done(token, None, exc)
            return  # cancelled at shutdown (BaseException): no acknowledgement
        done(token, outcome, None)


class Broker:
    def __init__(self, settings: MqttSettings, *, ingest: Ingest, auth: Authenticator | None,
                 clock: Clock) -> None:
        self.settings = settings
        self.ingest = ingest
        #: `submit(payload, origin, durable=, done=, token=)`, see the module docstring
        self.submit: Callable[..., None] = getattr(ingest, "submit", None) or TaskSubmit(
            self, ingest)
        #: PUBLISHes handed to the ingest whose outcome has not come back yet
        self.in_flight = 0
        #: set by MqttServer at shutdown; resolved when `in_flight` reaches 0
        self.drained: asyncio.Future[None] | None = None
        self.auth = auth
        self.clock = clock
        self.acl = Acl(settings.acl)
        self.counters = Counters()
        self.tree = TopicTree()
        self.retained = RetainedStore()
        self.sessions: dict[str, Session] = {}
        self.conns: set[MqttConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.limited = LimitedLog(clock)
        self.closing = False
        #: set by MqttServer when it starts (the broker may be built outside the loop)
        self.loop: Any = None
        #: connections paused because the whole broker has too many PUBLISHes in flight
        self.paused: set[MqttConnection] = set()
        self.max_in_flight = settings.max_inflight_total
        self.resume_below = settings.max_inflight_total // 2

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- overload -------------------------------------------------------------------------

    def overloaded(self, conn: MqttConnection) -> None:
        """Too many PUBLISHes in flight: stop reading from `conn` until half have finished."""
        if conn not in self.paused:
            self.paused.add(conn)
            self.counters.overload_pauses += 1
            conn.pause_input()

    def resume_paused(self) -> None:
        paused, self.paused = self.paused, set()
        for conn in paused:
            conn.resume_input()

    def settled(self) -> None:
        """One PUBLISH handed to the ingest came back (committed, refused or failed)."""
        self.in_flight -= 1
        if self.paused and self.in_flight <= self.resume_below:
            self.resume_paused()
        if self.in_flight <= 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # -- sessions ---------------------------------------------------------------------------

    def attach(self, conn: MqttConnection, client_id: str, clean: bool) -> tuple[Session, bool]:
        """Bind `conn` to the session of `client_id`; returns (session, session_present).

        A second connection with the same client id takes the session over: the older
        connection is closed without publishing its will (§3.1.4-2)."""
        session = self.sessions.get(client_id)
        if session is not None and session.conn is not None:
            self.counters.sessions_taken_over += 1
            old = session.conn
            session.conn = None
            old.taken_over()  # type: ignore[attr-defined]
        present = session is not None and not clean
        if session is not None and clean:
            self._drop_session(session)
            session = None
        if session is None:
            session = Session(client_id, clean, self.counters,
                              max_inflight=self.settings.max_inflight_out,
                              max_queued=self.settings.max_queued_out)
            self.sessions[client_id] = session
        session.clean = clean
        return session, present

    def detach(self, conn: MqttConnection, session: Session) -> None:
        if session.conn is not conn:
            return  # taken over: the session belongs to the newer connection
        session.conn = None
        if session.clean:
            self._drop_session(session)
        else:
            session.offline_since = self.clock.monotonic()

    def _drop_session(self, session: Session) -> None:
        for flt in session.subscriptions:
            self.tree.remove(flt, session)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    # -- subscriptions and routing ----------------------------------------------------------

    def subscribe(self, session: Session, flt: str, qos: int) -> None:
        """Add (or replace) a subscription and send matching retained messages."""
        granted = min(qos, 1)
        session.subscriptions[flt] = granted
        self.tree.add(flt, session, granted)
        for msg in self.retained.matching(flt):
            session.deliver(msg, min(granted, msg.qos), True)

    def unsubscribe(self, session: Session, flt: str) -> None:
        if session.subscriptions.pop(flt, None) is not None:
            self.tree.remove(flt, session)

    def route(self, msg: Message, *, store: bool) -> int:
        """Deliver `msg` to every matching subscriber; `store` also makes it the retained
        message of its topic.  Returns the number of subscribers reached."""
        if store:
            self.retained.set(msg)
        if not self.tree.count:
            return 0
        targets = self.tree.match(msg.topic)
        qos = msg.qos
        for sub, sub_qos in targets.items():
            sub.deliver(msg, sub_qos if sub_qos < qos else qos, False)  # type: ignore[attr-defined]
        return len(targets)

    def route_reading(self, topic: str, topic_bytes: bytes, payload: bytes, qos: int,
                      retain: bool, username: str | None) -> None:
        """Route a committed reading; it becomes its topic's retained message when the sensor
        flagged it or `retain_last_reading` is on."""
        if retain or self.settings.retain_last_reading:
            self.retained.put(topic, payload, qos)
        if self.tree.count:
            self.route(Message(topic, payload, qos, retain, topic_bytes, username), store=False)

    # -- the in-process API -----------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                qos: int = 1) -> int:
        """Publish from inside the gateway (no socket, no ACL, not ingested as a reading).

        Subscribers get it at min(qos, their subscription QoS).  With `retain`, it becomes
        the topic's retained message (an empty payload clears it).  Returns the number of
        subscribers reached.  Raises ValueError for an invalid topic or QoS."""
        if not valid_topic_name(topic):
            raise ValueError(f"invalid MQTT topic name {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos!r}")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.counters.internal_published += 1
        return self.route(Message(topic, data, min(qos, 1), retain), store=retain)

    def subscribe_internal(self, flt: str, callback: Callable[[Message], Any], *,
                           retained: bool = False) -> InternalSubscription:
        """Call `callback(message)` for every message published on a topic matching `flt`
        (by clients or by `publish`).  A callback returning an awaitable is run as a task.
        With `retained`, matching retained messages are delivered at once.  Exceptions in
        the callback are logged and counted, never propagated into the broker."""
        if not valid_topic_filter(flt):
            raise ValueError(f"invalid MQTT topic filter {flt!r}")
        sub = InternalSubscription(self, flt, callback)
        self.tree.add(flt, sub, 1)
        if retained:
            for msg in self.retained.matching(flt):
                sub.deliver(msg, msg.qos, True)
        return sub

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot: gauges (clients, sessions, subscriptions, retained) and the
        counters of `Counters`."""
        roles: dict[str, int] = {}
        listeners: dict[str, int] = {}
        connected = 0
        for conn in self.conns:
            if conn.role is not None:
                connected += 1
                roles[conn.role] = roles.get(conn.role, 0) + 1
                listeners[conn.listener] = listeners.get(conn.listener, 0) + 1
        out: dict[str, Any] = {
            "clients_connected": connected,
            "clients_by_role": roles,
            "clients_by_listener": listeners,
            "connections_open": len(self.conns),
            "sessions": len(self.sessions),
            "subscriptions": self.tree.count,
            "retained": len(self.retained),
            "ingest_in_flight": self.in_flight,
        }
        for name, value in vars(self.counters).items():
            out[name] = dict(value) if isinstance(value, dict) else value
        if self.auth is not None:
            out["auth_cache_hits"] = self.auth.stats.cache_hits
            out["auth_verified"] = self.auth.stats.verified
        return out

    # -- housekeeping -------------------------------------------------------------------------

    def sweep(self) -> None:
        """Close connections past their CONNECT or keepalive deadline; forget offline
        persistent sessions older than `session_expiry_s`."""
        now = self.clock.monotonic()
        for conn in list(self.conns):
            conn.check_deadline(now)
        limit = self.settings.session_expiry_s
        for session in list(self.sessions.values()):
            since = session.offline_since
            if since is not None and now - since > limit:
                self.counters.sessions_expired += 1
                self._drop_session(session)
