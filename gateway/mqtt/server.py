"""`MqttServer`: the gateway's MQTT 3.1.1 broker as an async context manager.

    async with MqttServer(settings, ingest=pipeline, auth=authenticator) as server:
        server.publish("alerts/line1/overheat", b'{"state":"firing"}', retain=True)
        server.subscribe_internal("alerts/ack/#", on_ack)
        await server.serve_forever()      # until stop() or cancellation (SIGTERM in the app)

Listeners: plain TCP (`settings.host:port`), optional TLS (`settings.tls`), optional
WebSocket (`settings.websocket`) — all served by the same lean core (`Broker` +
`MqttConnection`), so devices and local subscribers share one topic space whatever they
connect with.  Why a lean core and not the stock amqtt broker: docs/mqtt-ingest.md.

Named tasks: `mqtt-sweeper` (keepalive/CONNECT deadlines, session expiry, once a second),
`mqtt-retained-save` (when `retained_path` is set); per slow CONNECT `mqtt-auth`.  With the
gateway pipeline a PUBLISH is no task at all (a callback after its commit); an ingest with only
`async ingest()` gets one `mqtt-ingest` task per PUBLISH.

Shutdown (`__aexit__`, `stop()`), in order: stop accepting; stop reading from every client;
wait up to `shutdown_grace_s` for PUBLISHes already handed to ingest, so every committed
reading is acknowledged; close every connection (wills are not published: the clients did
nothing wrong); save retained messages.  A PUBLISH whose commit did not finish in the grace
time is not acknowledged and will be redelivered by its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.backoff import Backoff
from edge.clock import Clock, SystemClock
from gateway.auth.authenticator import Authenticator
from gateway.errors import ConfigError
from gateway.ingest import Ingest
from gateway.mqtt.broker import Broker, InternalSubscription
from gateway.mqtt.connection import MqttConnection
from gateway.mqtt.router import Message
from gateway.mqtt.settings import MqttSettings

log = logging.getLogger("gateway.mqtt")

SWEEP_INTERVAL_S = 1.0


class MqttServer:
    def __init__(self, settings: MqttSettings, *, ingest: Ingest,
                 auth: Authenticator | None = None, clock: Clock | None = None) -> None:
        problems = [(f"mqtt.acl.{k}", why) for k, why in settings.acl.problems()]
        if auth is None and not settings.allow_anonymous:
            problems.append(("mqtt.allow_anonymous",
                             "anonymous access is off but no credentials file is configured"))
        for name, tls in (("tls", settings.tls.tls if settings.tls else None),
                          ("websocket.tls", settings.websocket.tls if settings.websocket
                           else None)):
            if tls is not None and tls.client_certs != "none" and not tls.cafile:
                problems.append((f"mqtt.{name}.cafile", "client certificates need a CA file"))
        if problems:
            raise ConfigError("mqtt settings", problems)
        self.settings = settings
        self.broker = Broker(settings, ingest=ingest, auth=auth, clock=clock or SystemClock())
        self._servers: list[asyncio.AbstractServer] = []
        self._ws_runner: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.port = 0
        self.tls_port: int | None = None
        self.ws_port: int | None = None

    # -- the API for the rest of the gateway ------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                qos: int = 1) -> int:
        """In-process publish (see `Broker.publish`)."""
        return self.broker.publish(topic, payload, retain=retain, qos=qos)

    def subscribe_internal(self, flt: str, callback: Callable[[Message], Any], *,
                           retained: bool = False) -> InternalSubscription:
        """In-process subscription (see `Broker.subscribe_internal`)."""
        return self.broker.subscribe_internal(flt, callback, retained=retained)

    def stats(self) -> dict[str, Any]:
        """Connected clients, subscriptions, messages/bytes in and out, auth failures by
        reason, ACL refusals, protocol errors... (see `Broker.stats`)."""
        return self.broker.stats()

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttServer:
        loop = asyncio.get_running_loop()
        self.broker.loop = loop
        s = self.settings
        if s.tune_gc:
            tune_gc()
        self._load_retained()
        try:
            server = await loop.create_server(lambda: MqttConnection(self.broker, "tcp"),
                                              s.host, s.port, backlog=4096, reuse_address=True)
            self._servers.append(server)
            self.port = server.sockets[0].getsockname()[1]
            if s.tls is not None:
                tls = await loop.create_server(
                    lambda: MqttConnection(self.broker, "tls"), s.tls.host, s.tls.port,
                    ssl=s.tls.tls.context(), backlog=1024, reuse_address=True,
                    ssl_handshake_timeout=s.tls.tls.handshake_timeout_s)
                self._servers.append(tls)
                self.tls_port = tls.sockets[0].getsockname()[1]
            if s.websocket is not None:
                await self._start_websocket()
        except BaseException:
            await self._close_listeners()
            raise
        self._tasks.append(loop.create_task(self._sweeper(), name="mqtt-sweeper"))
        if s.retained_path:
            self._tasks.append(loop.create_task(self._retained_saver(),
                                                name="mqtt-retained-save"))
        log.info("MQTT broker listening", extra={"fields": {
            "host": s.host, "port": self.port, "tls_port": self.tls_port,
            "ws_port": self.ws_port, "allow_anonymous": s.allow_anonymous}})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Return when `stop()` is called (the context manager then shuts down)."""
        await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        broker = self.broker
        if broker.closing:
            return
        broker.closing = True
        self._stopped.set()
        for server in self._servers:
            server.close()
        for conn in list(broker.conns):
            if conn.transport is not None:
                conn.pause_input()
        if broker.in_flight > 0:
            broker.drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(broker.drained),
                                       self.settings.shutdown_grace_s)
            except TimeoutError:
                log.warning("shutdown: PUBLISHes not committed in time stay unacknowledged",
                            extra={"fields": {"count": broker.in_flight}})
        for conn in list(broker.conns):
            conn.publish_will = False
            conn.close()
        for task in [*self._tasks, *broker.tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *broker.tasks, return_exceptions=True)
        await self._close_listeners()
        await asyncio.sleep(0)  # let transports run connection_lost
        if self.settings.retained_path:
            await self._save_retained()

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        if self._ws_runner is not None:
            await self._ws_runner.cleanup()
            self._ws_runner = None
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()

    async def _start_websocket(self) -> None:
        from aiohttp import web

        from gateway.mqtt.websocket import websocket_app

        ws = self.settings.websocket
        assert ws is not None
        runner = web.AppRunner(websocket_app(self.broker, ws), access_log=None,
                               handle_signals=False)
        await runner.setup()
        self._ws_runner = runner
        site = web.TCPSite(runner, ws.host, ws.port,
                           ssl_context=ws.tls.context() if ws.tls else None)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server
        assert server is not None
        self.ws_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.broker.sweep()
            except Exception:  # a bug here must not stop keepalive enforcement for good
                log.exception("MQTT sweep failed")

    # -- retained persistence ------------------------------------------------------------------

    def _load_retained(self) -> None:
        path = self.settings.retained_path
        if not path or not os.path.exists(path):
            return
        try:
            count = self.broker.retained.load(Path(path).read_bytes())
            log.info("retained messages loaded", extra={"fields": {"count": count,
                                                                    "file": path}})
        except Exception:
            aside = f"{path}.corrupt"
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            log.error("retained snapshot unreadable; moved aside, starting empty",
                      extra={"fields": {"file": path, "moved_to": aside}}, exc_info=True)

    async def _retained_saver(self) -> None:
        interval = self.settings.retained_save_s
        backoff = Backoff(base=1.0, cap=interval)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            delay = interval
            if self.broker.retained.dirty:
                try:
                    await self._save_retained()
                    backoff.reset()
                except OSError:
                    delay = backoff.next_delay()  # e.g. a full disk: retry sooner, capped
                    log.exception("saving retained messages failed; will retry",
                                  extra={"fields": {"retry_in_s": round(delay, 2)}})

    async def _save_retained(self) -> None:
        path = self.settings.retained_path
        assert path
        retained = self.broker.retained
        retained.dirty = False
        data = retained.dump()  # on the loop: a consistent snapshot
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except BaseException:
            retained.dirty = True
            raise


#: youngest-generation threshold while the broker runs (CPython's default is 700)
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the device path.

    Every PUBLISH in flight is a few GC-tracked objects (task, coroutine, ack slot).  With
    CPython's default threshold (a young collection every 700 net allocations), a second's
    burst of 10,000 PUBLISHes triggers collections that find them all alive, promote them,
    and soon force full collections of a heap holding 10,000 connections: measured here, the
    collector then took over half the broker's CPU and the acknowledgement latency ran away.
    With 50,000, in-flight PUBLISHes are freed by reference counting long before a young
    collection runs.  Freezing the start-up heap (modules, config) keeps it out of every
    later full collection.  Idempotent; only ever raises the threshold.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    gc.collect()
    gc.freeze()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
