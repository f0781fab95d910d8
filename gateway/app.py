"""`fieldlink gateway run`: the composition root of the gateway process.

Start order (each an async context manager, entered in this order and left in reverse):

  1. the buffer (SQLite; everything else depends on it being open),
  2. the pipeline (decode → buffer) and the optional components that observe it
     (alerts) or drain it (uplink),
  3. the HTTP endpoint (`/metrics`, `/healthz`, status routes),
  4. the ingress listeners (MQTT, CoAP, serial) last, so a sensor is never acknowledged
     before the buffer can commit.

Shutdown (SIGTERM/SIGINT) runs the same list backwards: ingress stops accepting and finishes
in-flight commits first, the buffer closes last.  SIGHUP reloads the credentials file and the
alert rules without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from edge.clock import Clock, SystemClock
from edge.config.gateway import GatewayConfig, load_gateway_config
from edge.errors import ConfigError
from edge.logs import setup_logging
from gateway.buffer import Buffer, BufferSettings, Eviction, Synchronous
from gateway.pipeline import DeviceDefaults, Pipeline

log = logging.getLogger("fieldlink.gateway")


def buffer_settings(cfg: GatewayConfig) -> BufferSettings:
    b = cfg.buffer
    return BufferSettings(
        path=str(cfg.buffer_path), max_bytes=int(b.max_bytes),
        commit_interval_ms=b.commit_interval_ms, commit_max_readings=b.commit_max_readings,
        synchronous=Synchronous(b.synchronous), eviction=Eviction(b.eviction),
        deadletter_max_rows=b.deadletter_max_rows, dedup_horizon_s=b.dedup_horizon_s,
        live_share=cfg.uplink.live_share)


def mqtt_settings(cfg: GatewayConfig) -> Any:
    from gateway.mqtt import AclSettings, MqttSettings, TlsListener, TlsSettings, WebSocketListener

    m = cfg.mqtt

    def tls(section: Any) -> Any:
        return TlsSettings(certfile=str(section.certfile), keyfile=str(section.keyfile),
                           cafile=str(section.cafile) if section.cafile else None,
                           client_certs=section.client_certs,
                           identity_as_username=getattr(section, "identity_as_username",
                                                        False))

    return MqttSettings(
        host=m.host, port=m.port, max_packet_bytes=int(m.max_packet_bytes),
        keepalive_cap_s=m.keepalive_max_s, retain_last_reading=m.retain_last_reading,
        retained_path=str(Path(cfg.gateway.data_dir) / "retained.msgpack"),
        allow_anonymous=m.allow_anonymous, max_connections=m.max_connections,
        acl=AclSettings(device_publish=tuple(m.acl.device_publish),
                        device_subscribe=tuple(m.acl.device_subscribe),
                        operator_only=tuple(m.acl.operator_only)),
        tls=TlsListener(tls(m.tls), host=m.tls.host, port=m.tls.port) if m.tls.enabled
        else None,
        websocket=WebSocketListener(host=m.websocket.host, port=m.websocket.port,
                                    path=m.websocket.path) if m.websocket.enabled else None,
    )


class Gateway:
    """The running gateway.  `async with Gateway(cfg) as gw: await gw.wait()`."""

    def __init__(self, config: GatewayConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        Path(config.gateway.data_dir).mkdir(parents=True, exist_ok=True)
        self.clock = clock or SystemClock()
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self.buffer: Buffer | None = None
        self.pipeline: Pipeline | None = None
        self.mqtt: Any = None
        self.coap: Any = None
        self.serial: Any = None
        self.http: Any = None
        self.auth: Any = None
        self.uplink: Any = None
        self.alerts: Any = None
        self.components: dict[str, Any] = {}
        self._reloaders: list[Callable[[], Any]] = []

    # -- wiring ---------------------------------------------------------------------------
    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        self.buffer = await self._stack.enter_async_context(
            Buffer(buffer_settings(cfg), clock=self.clock))

        registry = {dev: DeviceDefaults(facility=e.facility, line=e.line, zone=e.zone,
                                        measurement=e.measurement, unit=e.unit)
                    for dev, e in cfg.devices.registry.items()}
        v = cfg.validation
        limits = {"mqtt": v.limits(int(cfg.mqtt.max_payload_bytes)),
                  "coap": v.limits(int(cfg.coap.max_payload_bytes)),
                  "serial": v.limits(max((int(p.max_line_bytes) for p in cfg.serial.ports),
                                         default=65536))}
        self.auth = self._authenticator()
        known = None
        if cfg.devices.unknown_devices == "reject":
            auth = self.auth

            def known(device_id: str) -> bool:
                if device_id in registry:
                    return True
                account = auth.account(device_id) if auth is not None else None
                return account is not None
        self.pipeline = Pipeline(self.buffer, limits=limits, registry=registry,
                                 known_device=known, clock=self.clock)

        from prometheus_client import CollectorRegistry

        from gateway.http import GatewayMetrics

        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.metrics.register_source("buffer", self.buffer.stats, kind="buffer")
        self.metrics.register_source("pipeline", lambda: self.pipeline.stats  # type: ignore
                                     , kind="pipeline")

        if cfg.http.enabled:
            from gateway.http import GatewayHttp

            self.http = GatewayHttp(cfg.http.host, cfg.http.port, self.registry)
            self.http.add_health_check("buffer", self._buffer_health)

        await self._start_optional()

        if self.http is not None:
            await self._stack.enter_async_context(self.http)
        await self._start_ingress()
        log.info("gateway started", extra={"fields": {
            "gateway_id": cfg.gateway.id, "mqtt_port": getattr(self.mqtt, "port", None),
            "coap_port": getattr(self.coap, "port", None),
            "http": self.http.url if self.http is not None else None}})

    def _authenticator(self) -> Any:
        cfg = self.config.mqtt
        path = Path(cfg.credentials_file)
        if not path.exists():
            if not cfg.allow_anonymous and cfg.enabled:
                raise ConfigError("gateway config", [(
                    "mqtt.credentials_file",
                    f"{path} does not exist and anonymous access is off; create it with "
                    "`fieldlink gateway devices add`")])
            return None
        from gateway.auth import Authenticator

        auth = Authenticator(path, clock=self.clock)
        self._stack.callback(auth.close)
        self._reloaders.append(lambda: auth.reload(force=True))
        return auth

    async def _start_optional(self) -> None:
        """Components that observe the pipeline (alerts) or drain the buffer (uplink)."""
        cfg = self.config
        from gateway.alerts import AlertService, AlertSettings

        assert self.buffer is not None and self.pipeline is not None
        self.alerts = AlertService(AlertSettings.from_config(cfg), buffer=self.buffer,
                                   auth=self.auth, status=self._gateway_status,
                                   clock=self.clock)
        await self._stack.enter_async_context(self.alerts)
        self.components["alerts"] = self.alerts
        self.pipeline.add_observer(self.alerts.observe)
        self.metrics.register_source("alerts", self.alerts.stats, kind="alerts")
        if self.http is not None:
            self.http.add_routes(self.alerts.routes())
            self.http.add_health_check("alerts", self.alerts.health)
        self._reloaders.append(self.alerts.reload)

        if cfg.uplink.enabled:
            from gateway.uplink import Uplink, UplinkSettings

            assert self.buffer is not None
            self.uplink = Uplink(self.buffer, UplinkSettings.from_config(cfg), clock=self.clock)
            await self._stack.enter_async_context(self.uplink)
            self.components["uplink"] = self.uplink
            self.metrics.register_source("uplink", self.uplink.stats, kind="uplink")
            if self.http is not None:
                # a cloud outage makes /healthz say so, but never feeds the systemd watchdog:
                # the gateway must keep buffering, not restart
                self.http.add_health_check("uplink", self.uplink.health)

        # the gateway's own status (backlog, drops, versions) travels to the fleet dashboard
        # through the buffer like any aggregate: durable, de-duplicated, sent first
        from gateway.statusreport import StatusReporter, config_version

        self.status_reporter = await self._stack.enter_async_context(StatusReporter(
            self.buffer, gateway_id=cfg.gateway.id, config_version=config_version(cfg),
            uplink=lambda: self.uplink.stats() if self.uplink is not None else None,
            interval_s=60.0, clock=self.clock))
        self.components["status_report"] = self.status_reporter

        if self.http is not None:
            from gateway.status import status_routes

            self.http.add_routes(status_routes(self))

    async def _start_ingress(self) -> None:
        cfg = self.config
        assert self.pipeline is not None
        if cfg.mqtt.enabled:
            from gateway.mqtt import MqttServer

            self.mqtt = MqttServer(mqtt_settings(cfg), ingest=self.pipeline, auth=self.auth,
                                   clock=self.clock)
            await self._stack.enter_async_context(self.mqtt)
            # alert state is published only once the broker has reloaded its retained store;
            # the callback runs before the broker stops
            self.alerts.attach_mqtt(self.mqtt)
            self._stack.callback(self.alerts.detach_mqtt)
            self.metrics.register_source("mqtt", self.mqtt.stats, kind="mqtt")
            self.components["mqtt"] = self.mqtt
        if cfg.coap.enabled:
            from gateway.coap import CoapServer, CoapSettings

            c = cfg.coap
            self.coap = CoapServer(CoapSettings(
                host=c.host, port=c.port, max_payload_bytes=int(c.max_payload_bytes),
                empty_ack_delay=c.empty_ack_delay_s, ingest_timeout=c.ingest_timeout_s,
                msgpack_content_formats=tuple(c.msgpack_content_formats)),
                ingest=self.pipeline)
            await self._stack.enter_async_context(self.coap)
            self.metrics.register_source("coap", self.coap.stats, kind="coap")
            if self.http is not None:
                self.http.add_health_check("coap", self.coap.health)
        if cfg.serial.ports:
            from gateway.serialport import PortSettings, SerialIngress

            ports = [PortSettings(path=p.path, baudrate=p.baudrate, format=p.format,
                                  device_id=p.device_id, max_line_bytes=int(p.max_line_bytes),
                                  backoff_base=p.backoff_base_s, backoff_cap=p.backoff_cap_s)
                     for p in cfg.serial.ports]
            self.serial = SerialIngress(ports, ingest=self.pipeline)
            await self._stack.enter_async_context(self.serial)
            self.metrics.register_source("serial", self.serial.stats, kind="serial")
            if self.http is not None:
                self.http.add_health_check("serial", self.serial.health)

    def _gateway_status(self) -> Any:
        """What the gateway-level alert rules see (buffer fill, uplink down since)."""
        from edge.rules import GatewayStatus

        assert self.buffer is not None
        st = self.buffer.stats()
        return GatewayStatus(
            buffer_fill_ratio=st.disk_bytes / st.max_bytes if st.max_bytes else 0.0,
            uplink_down_since_ms=self.uplink.down_since_ms if self.uplink is not None else None)

    def _buffer_health(self) -> tuple[bool, str]:
        assert self.buffer is not None
        st = self.buffer.stats()
        fill = st.disk_bytes / st.max_bytes if st.max_bytes else 0.0
        return (fill < 0.99, f"{st.disk_bytes} of {st.max_bytes} bytes ({fill:.0%})")

    # -- running --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read credentials and rules; failures keep the old state and log."""
        for reload in self._reloaders:
            try:
                reload()
            except Exception:
                log.exception("reload failed; keeping the previous state")
        log.info("reloaded")

    async def wait(self) -> None:
        await self._stop.wait()

    async def __aexit__(self, *exc: object) -> None:
        log.info("gateway stopping")
        await self._stack.aclose()
        log.info("gateway stopped")


async def _watchdog(gw: Gateway, notifier: Any, interval: float) -> None:
    """Ping systemd's watchdog while the event loop runs and the buffer is healthy: a wedged
    loop or a broken buffer stops the pings and systemd restarts the gateway."""
    while True:
        await asyncio.sleep(interval)
        ok, detail = gw._buffer_health()
        if ok:
            notifier.watchdog()
        else:
            notifier.status(f"unhealthy: buffer {detail}")


async def run(cfg: GatewayConfig, *, ready: Callable[[Gateway], Any] | None = None) -> int:
    from gateway.sdnotify import SdNotifier, watchdog_interval

    loop = asyncio.get_running_loop()
    with SdNotifier() as notifier:
        async with Gateway(cfg) as gw:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, gw.stop)
            with contextlib.suppress(NotImplementedError, AttributeError):
                def reload() -> None:
                    notifier.reloading()
                    gw.reload()
                    notifier.ready("reloaded")
                loop.add_signal_handler(signal.SIGHUP, reload)
            interval = watchdog_interval()
            pinger = (loop.create_task(_watchdog(gw, notifier, interval), name="sd-watchdog")
                      if interval else None)
            notifier.ready(f"gateway {cfg.gateway.id} running")
            if ready is not None:
                ready(gw)
            await gw.wait()
            notifier.stopping("stopping")
            if pinger is not None:
                pinger.cancel()
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fieldlink gateway run",
        description="Run the gateway: MQTT broker, CoAP and serial ingest into the "
                    "store-and-forward buffer, local alerts and the uplink.  Stops cleanly on "
                    "SIGTERM; SIGHUP reloads credentials and rules.")
    parser.add_argument("--config", "-c", default="config/gateway.yaml",
                        help="gateway config file (default: %(default)s)")
    parser.add_argument("--log-level", default=None,
                        help="override logging.level from the config")
    args = parser.parse_args(list(argv))
    try:
        cfg = load_gateway_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(args.log_level or cfg.logging.level, json_lines=cfg.logging.json_lines)
    limit_malloc_arenas()
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(run(cfg))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


#: glibc's `M_ARENA_MAX` option of `mallopt`
_M_ARENA_MAX = -8


def limit_malloc_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """Cap glibc malloc at 2 arenas (`FIELDLINK_MALLOC_ARENAS`, 0 = glibc's default of 8 per
    core); returns whether the cap was set.  Called before any thread starts.

    Why: every thread that allocates (buffer writer, alert store, executor threads) gets an
    arena of its own, each grown and fragmented separately; with 2 the gateway's RSS at
    10,000 readings/s is 10-15 MB lower (docs/mqtt-ingest.md), and these threads spend their
    time in SQLite and fsync, not contending for the allocator.  Not glibc: nothing happens."""
    import ctypes
    import ctypes.util
    import os

    env = os.environ if environ is None else environ
    try:
        arenas = int(env.get("FIELDLINK_MALLOC_ARENAS", "2"))
    except ValueError:
        arenas = 2
    if arenas <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl, macOS): no such option
        return False


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (the gateway extra ships it): the device path's socket
    reads, PUBACK writes and callbacks run in C instead of asyncio's Python selector loop
    (docs/mqtt-ingest.md).  `FIELDLINK_EVENT_LOOP=asyncio` keeps the standard loop."""
    import os

    if os.environ.get("FIELDLINK_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]
