"""Settings of the MQTT broker: frozen dataclasses (the YAML mapping lives in the gateway
config, which builds these)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Literal

from gateway.auth.acl import AclSettings


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server certificate, and optionally client certificates checked against `cafile`."""

    certfile: str
    keyfile: str
    #: CA bundle that signs client certificates (required unless client_certs == "none")
    cafile: str | None = None
    client_certs: Literal["none", "optional", "required"] = "none"
    #: a verified client certificate's CN is the username (the account must exist in the
    #: credentials file; its password is not asked) — mosquitto's use_identity_as_username
    identity_as_username: bool = False
    handshake_timeout_s: float = 10.0

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certfile, self.keyfile)
        if self.client_certs != "none":
            ctx.load_verify_locations(cafile=self.cafile)
            ctx.verify_mode = (ssl.CERT_REQUIRED if self.client_certs == "required"
                               else ssl.CERT_OPTIONAL)
        return ctx


@dataclass(frozen=True, slots=True)
class TlsListener:
    tls: TlsSettings
    host: str = "0.0.0.0"
    port: int = 8883


@dataclass(frozen=True, slots=True)
class WebSocketListener:
    """MQTT over WebSocket (subprotocol `mqtt`), for browser dashboards."""

    host: str = "0.0.0.0"
    port: int = 8080
    path: str = "/mqtt"
    tls: TlsSettings | None = None


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "0.0.0.0"
    port: int = 1883  # 0 = an ephemeral port (tests); see MqttServer.port
    tls: TlsListener | None = None
    websocket: WebSocketListener | None = None
    #: hard cap on one MQTT packet; a bigger frame drops the connection (`oversize_frame`).
    #: Payloads under it but over the pipeline's limits are dead-lettered by the pipeline.
    max_packet_bytes: int = 256 * 1024
    #: a CONNECT asking for a longer keepalive (or none, 0) is refused with CONNACK 2,
    #: as mosquitto's max_keepalive does for 3.1.1 clients; 0 here disables the cap
    keepalive_cap_s: int = 3600
    #: a connection that sent no CONNECT within this time is closed
    connect_timeout_s: float = 10.0
    #: every accepted reading becomes the retained message of its topic
    retain_last_reading: bool = True
    #: optional snapshot file of retained messages (loaded at start, saved every
    #: `retained_save_s` when changed and at shutdown)
    retained_path: str | None = None
    retained_save_s: float = 30.0
    allow_anonymous: bool = False
    acl: AclSettings = field(default_factory=AclSettings)
    max_connections: int = 20_000
    #: inbound QoS>0 PUBLISHes of one connection awaiting commit before reading pauses
    max_inflight_in: int = 64
    #: inbound PUBLISHes awaiting ingest across all connections before reading pauses
    #: (bounds memory when the pipeline cannot keep up)
    max_inflight_total: int = 10_000
    #: outbound QoS 1 messages unacknowledged per subscriber
    max_inflight_out: int = 32
    #: outbound QoS 1 messages queued per subscriber session (slow or offline)
    max_queued_out: int = 1000
    #: offline persistent sessions (clean_session=0) are forgotten after this long
    session_expiry_s: float = 7 * 24 * 3600.0
    #: at shutdown, how long in-flight PUBLISHes may take to commit and be acknowledged
    shutdown_grace_s: float = 5.0
    #: at start, collect and freeze the heap and raise the cyclic collector's youngest
    #: threshold (process-wide; see docs/mqtt-ingest.md "Garbage collection")
    tune_gc: bool = True
