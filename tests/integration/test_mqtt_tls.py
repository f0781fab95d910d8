"""The TLS listener: a self-signed CA, server and client certificates made with the openssl CLI
for each run; clients are mosquitto_pub and paho.  Missing openssl/mosquitto_pub skip locally
and FAIL under CI=true."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.auth import Authenticator
from gateway.auth.credentials import Account, save_accounts
from gateway.auth.passwords import hash_password
from gateway.mqtt import MqttServer, MqttSettings, TlsListener, TlsSettings, WebSocketListener
from gateway.testing import RecordingIngest

HOST = "127.0.0.1"


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str  # CN=d1, signed by the CA
    client_key: str
    rogue_cert: str  # CN=d1, self-signed: not trusted
    rogue_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    openssl = require_binary("openssl")
    d = tmp_path_factory.mktemp("pki")

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
       "-subj", "/CN=fieldlink test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "server.ext"), ("client", "client.ext")):
        cn = "127.0.0.1" if name == "server" else "d1"
        sh("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
    sh("req", "-x509", *ec, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
       "-subj", "/CN=d1")
    return Pki(*(str(d / f) for f in ("ca.pem", "server.pem", "server.key", "client.pem",
                                      "client.key", "rogue.pem", "rogue.key")))


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("creds") / "creds.json"
    save_accounts(path, {"d1": Account("d1", "device", hash_password("pw-d1"))})
    return path


@dataclass
class Gateway:
    server: MqttServer
    ingest: RecordingIngest

    @property
    def tls_port(self) -> str:
        assert self.server.tls_port
        return str(self.server.tls_port)


async def start(pki: Pki, creds: Path, **tls: object) -> AsyncIterator[Gateway]:
    ingest = RecordingIngest()
    tls_settings = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key,
                               cafile=pki.ca, **tls)  # type: ignore[arg-type]
    settings = MqttSettings(host=HOST, port=0, tls=TlsListener(tls_settings, host=HOST, port=0))
    with Authenticator(creds) as auth:
        async with MqttServer(settings, ingest=ingest, auth=auth) as server:
            yield Gateway(server, ingest)


@pytest.fixture
async def gw(pki: Pki, creds: Path) -> AsyncIterator[Gateway]:
    async for g in start(pki, creds):
        yield g


@pytest.fixture
async def gw_certs(pki: Pki, creds: Path) -> AsyncIterator[Gateway]:
    async for g in start(pki, creds, client_certs="required", identity_as_username=True):
        yield g


async def mosquitto_pub(*args: str) -> tuple[int, str]:
    pub = require_binary("mosquitto_pub")
    proc = await asyncio.create_subprocess_exec(pub, "-h", HOST, *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_mosquitto_pub_over_tls(gw: Gateway, pki: Pki) -> None:
    rc, err = await mosquitto_pub("-p", gw.tls_port, "--cafile", pki.ca, "-q", "1",
                                  "-t", "devices/d1/t", "-m", "1.5", "-u", "d1", "-P", "pw-d1")
    assert rc == 0, err
    assert [(c[0], c[1].username) for c in gw.ingest.calls] == [(b"1.5", "d1")]


async def test_paho_over_tls(gw: Gateway, pki: Pki) -> None:
    def run() -> bool:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls",
                             protocol=mqtt.MQTTv311)
        client.tls_set(ca_certs=pki.ca)
        client.username_pw_set("d1", "pw-d1")
        client.connect(HOST, int(gw.tls_port))
        client.loop_start()
        info = client.publish("devices/d1/t", b"2.5", qos=1)
        info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        return info.is_published()

    assert await asyncio.to_thread(run)
    assert [c[0] for c in gw.ingest.calls] == [b"2.5"]


async def test_plaintext_on_the_tls_port_does_not_hurt(gw: Gateway, pki: Pki) -> None:
    reader, writer = await asyncio.open_connection(HOST, int(gw.tls_port))
    writer.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    try:
        reply = await asyncio.wait_for(reader.read(100), 15)
    except ConnectionResetError:
        reply = b""
    assert not reply.startswith(b"\x20")  # no CONNACK without TLS; the handshake just fails
    writer.close()
    rc, err = await mosquitto_pub("-p", gw.tls_port, "--cafile", pki.ca, "-t", "devices/d1/t",
                                  "-m", "ok", "-u", "d1", "-P", "pw-d1")
    assert rc == 0, err


async def test_client_certificate_required(gw_certs: Gateway, pki: Pki) -> None:
    base = ["-p", gw_certs.tls_port, "--cafile", pki.ca, "-q", "1", "-m", "3.5"]
    rc, _ = await mosquitto_pub(*base, "-t", "devices/d1/t", "-u", "d1", "-P", "pw-d1")
    assert rc != 0  # no client certificate: the handshake fails
    rc, _ = await mosquitto_pub(*base, "-t", "devices/d1/t", "--cert", pki.rogue_cert,
                                "--key", pki.rogue_key)
    assert rc != 0  # a certificate the CA did not sign
    rc, err = await mosquitto_pub(*base, "-t", "devices/d1/t", "--cert", pki.client_cert,
                                  "--key", pki.client_key)
    assert rc == 0, err  # CN=d1 is the username: no password needed
    assert [(c[0], c[1].username, c[1].device_hint) for c in gw_certs.ingest.calls] == [
        (b"3.5", "d1", "d1")]
    # the certificate identity is subject to the ACL like any device
    rc, err = await mosquitto_pub(*base, "-t", "devices/d2/t", "--cert", pki.client_cert,
                                  "--key", pki.client_key)
    assert rc == 0, err
    assert len(gw_certs.ingest.calls) == 1
    assert gw_certs.server.stats()["acl_refused_publish"] == 1


def test_tls_context_requires_client_certs_when_asked(pki: Pki) -> None:
    ctx = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key, cafile=pki.ca,
                      client_certs="required").context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_websocket_over_tls(pki: Pki, creds: Path) -> None:
    tls = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key)
    settings = MqttSettings(host=HOST, port=0,
                            websocket=WebSocketListener(host=HOST, port=0, tls=tls))
    ingest = RecordingIngest()
    with Authenticator(creds) as auth:
        async with MqttServer(settings, ingest=ingest, auth=auth) as server:
            assert server.ws_port

            def run() -> bool:
                client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wss",
                                     protocol=mqtt.MQTTv311, transport="websockets")
                client.ws_set_options(path="/mqtt")
                client.tls_set(ca_certs=pki.ca)
                client.username_pw_set("d1", "pw-d1")
                client.connect(HOST, server.ws_port)  # type: ignore[arg-type]
                client.loop_start()
                info = client.publish("devices/d1/t", b"wss", qos=1)
                info.wait_for_publish(10)
                client.disconnect()
                client.loop_stop()
                return info.is_published()

            assert await asyncio.to_thread(run)
    assert [c[0] for c in ingest.calls] == [b"wss"]
