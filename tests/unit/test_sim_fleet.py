"""The fleet end to end against small scripted servers on 127.0.0.1: an MQTT broker written
here (independently of firmware_sim.mqtt_fast), an aiocoap server, and the fleet's own ptys.

What is checked: the fleet sends exactly what `generate()` predicts, every reading's fate is
accounted for once (summary and ledger agree), acknowledgements withheld or connections
dropped end as no_ack / retransmissions, refused credentials as not_authorized."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections import Counter, defaultdict
from typing import Any

import pytest

from edge.config import parse_config
from edge.config.sim import SimConfig
from edge.errors import ConfigError
from firmware_sim.device import generate
from firmware_sim.fleet import Fleet
from firmware_sim.ledger import Ledger

T0 = 1_705_322_445_000


class FakeBroker:
    """Just enough MQTT 3.1.1 to receive publishes: CONNACK with `rc`, PUBACK unless the
    client is in `withhold`, PINGRESP; `drop_after` closes each connection after that many
    publishes."""

    def __init__(self, *, rc: int = 0, withhold: set[str] | None = None,
                 drop_after: int | None = None, ssl: Any = None):
        self.rc = rc
        self.ssl = ssl
        self.withhold = withhold or set()
        self.drop_after = drop_after
        self.received: dict[str, list[tuple[str, bytes, bool]]] = defaultdict(list)
        self.connects: Counter[str] = Counter()
        self.credentials: set[tuple[str | None, str | None]] = set()
        self.client_credentials: dict[str, tuple[str | None, str | None]] = {}
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.ssl)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.transport.abort()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = None
        published = 0
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readexactly(1))[0]
                length, mult = 0, 1
                while True:
                    b = (await reader.readexactly(1))[0]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = head >> 4
                if kind == 1:
                    flags = body[7]
                    pos = 10
                    n = int.from_bytes(body[pos:pos + 2], "big")
                    client = body[pos + 2:pos + 2 + n].decode()
                    pos += 2 + n
                    user = pw = None
                    if flags & 0x80:
                        n = int.from_bytes(body[pos:pos + 2], "big")
                        user = body[pos + 2:pos + 2 + n].decode()
                        pos += 2 + n
                    if flags & 0x40:
                        n = int.from_bytes(body[pos:pos + 2], "big")
                        pw = body[pos + 2:pos + 2 + n].decode()
                    self.credentials.add((user, pw))
                    self.client_credentials[client] = (user, pw)
                    self.connects[client] += 1
                    writer.write(bytes((0x20, 2, 0, self.rc)))
                    if self.rc:
                        await writer.drain()
                        return
                elif kind == 3:
                    qos = (head >> 1) & 3
                    n = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + n].decode()
                    pos = 2 + n
                    if qos:
                        pid = body[pos:pos + 2]
                        pos += 2
                    assert client is not None
                    self.received[client].append((topic, body[pos:], bool(head & 0x08)))
                    published += 1
                    if qos and client not in self.withhold:
                        writer.write(b"\x40\x02" + pid)
                    if self.drop_after and published >= self.drop_after:
                        writer.transport.abort()
                        return
                elif kind == 12:
                    writer.write(b"\xd0\x00")
                elif kind == 14:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


def _cfg(port: int, *, devices: int = 20, rate: float = 5.0, faults: dict | None = None,
         **top: Any) -> SimConfig:
    data: dict[str, Any] = {
        "seed": 7, "start_ms": T0, "connect_rate": 0, "drain_timeout_s": 1.0,
        "target": {"port": port},
        "fleet": [{"count": devices, "rate_hz": rate, "lines": [1, 2]}],
        "faults": faults or {}, **top}
    return parse_config(data, SimConfig, environ={})


def _check_accounting(s: dict[str, Any], ledger: Ledger | None = None) -> None:
    assert s["generated"] == s["acknowledged"] + s["unconfirmed"] + s["failed_total"]
    assert s["outstanding"] == 0
    if ledger is not None:
        assert len(ledger) == s["generated"]
        assert len(ledger.acknowledged()) == s["acknowledged"]


async def test_fleet_sends_exactly_what_generate_predicts(tmp_path) -> None:
    faults = {"duplicate": {"rate": 0.05}, "malformed": {"rate": 0.05},
              "out_of_order": {"rate": 0.05}, "late": {"rate": 0.05, "delay_s": 0.6},
              "clock_skew": {"rate": 0.05}, "burst": {"rate": 0.02, "size": 3},
              "spike": {"rate": 0.05}, "stale": {"rate": 0.02, "duration_s": 0.4}}
    broker = FakeBroker()
    async with broker as port:
        cfg = _cfg(port, faults=faults, ledger=str(tmp_path / "l.sqlite"))
        async with Fleet(cfg) as fleet:
            s = await fleet.run(2.0)
    expected = generate(cfg, T0, 2.0)
    assert {d: [p for _, p, _ in got] for d, got in broker.received.items()} == \
           {d: [e.payload for e in es] for d, es in expected.items()}
    topics = {d: {t for t, _, _ in got} for d, got in broker.received.items()}
    assert topics["sensor_0001_line2"] == {"factory/line2/temperature/sensor_0001_line2"}
    final = fleet.summary()
    assert s["acknowledged"] == s["sent"] == sum(len(es) for es in expected.values())
    assert s["failed_total"] == 0 and s["connects"] == 20
    assert {"duplicate", "malformed", "late", "burst", "stale"} <= set(s["faults"])
    with Ledger.open(tmp_path / "l.sqlite") as led:
        _check_accounting(final, led)
        rows = list(led)
        assert sum(1 for r in rows if r.expect == "rejected") == \
               sum(1 for es in expected.values() for e in es if e.expect == "rejected")
        unique = led.expected_unique()
        assert set(unique) == {(e.device_id, e.measurement, e.seq) for es in expected.values()
                               for e in es if e.expect != "rejected"}
        assert all(r.ack_ms is not None and r.ack_ms >= (r.sent_ms or 0) for r in rows)
        assert led.meta()["seed"] == 7 and led.meta()["summary"]["generated"] == len(rows)


async def test_devices_of_different_rates_keep_their_own_schedules() -> None:
    broker = FakeBroker()
    async with broker as port:
        cfg = parse_config({
            "seed": 4, "start_ms": T0, "connect_rate": 0, "target": {"port": port},
            "fleet": [{"count": 3, "rate_hz": 4, "id_template": "fast_{n}"},
                      {"count": 2, "rate_hz": 0.7, "id_template": "slow_{n}"},
                      {"count": 2, "rate_hz": 10, "id_template": "quick_{n}", "qos": 0}]},
            SimConfig, environ={})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(2.5)
    expected = generate(cfg, T0, 2.5)
    assert {d: [p for _, p, _ in got] for d, got in broker.received.items()} == \
           {d: [e.payload for e in es] for d, es in expected.items() if es}
    assert s["generated"] == sum(len(es) for es in expected.values())
    assert sum(len(v) for d, v in expected.items() if d.startswith("quick")) == 50
    assert s["max_lag_s"] < 2.0


async def test_withheld_acks_fail_as_no_ack_after_the_drain(tmp_path) -> None:
    broker = FakeBroker(withhold={"sensor_0000_line1"})
    async with broker as port:
        cfg = _cfg(port, devices=3, ledger=str(tmp_path / "l.sqlite"),
                   target={"port": port, "max_inflight": 3})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(1.0)
    assert s["acknowledged"] == 10
    # 3 in flight, 2 queued behind the in-flight limit: never sent, but never silent either
    assert s["failed"] == {"no_ack": 3, "not_sent": 2}
    with Ledger.open(tmp_path / "l.sqlite") as led:
        _check_accounting(fleet.summary(), led)
        failed = led.failed()
        assert {r.device_id for r in failed} == {"sensor_0000_line1"}
        assert sorted(r.seq for r in failed) == [0, 1, 2, 3, 4]
        assert sum(1 for r in failed if r.sent) == 3


async def test_dropped_connections_reconnect_and_resend_with_dup() -> None:
    broker = FakeBroker(drop_after=3)
    async with broker as port:
        cfg = _cfg(port, devices=5, rate=10.0, drain_timeout_s=5.0)
        async with Fleet(cfg) as fleet:
            s = await fleet.run(2.0)
    _check_accounting(fleet.summary())
    assert s["acknowledged"] == s["generated"] == 100
    assert s["disconnects"] > 10 and s["connects"] > 15
    expected = generate(cfg, T0, 2.0)
    for device_id, es in expected.items():
        got = [p for _, p, _ in broker.received[device_id]]
        # at least once, and nothing that was not generated
        assert set(got) == {e.payload for e in es}
    dups = [p for got in broker.received.values() for _, p, dup in got if dup]
    assert dups and s["retransmitted"] >= len(dups)


async def test_disconnect_fault_and_storms_reconnect() -> None:
    broker = FakeBroker()
    async with broker as port:
        cfg = _cfg(port, devices=10, rate=10.0, drain_timeout_s=5.0,
                   faults={"disconnect": {"rate": 0.05},
                           "reconnect_storm": {"rate": 1.0, "fraction": 0.5}})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(2.0)
    _check_accounting(fleet.summary())
    assert s["faults"]["disconnect"] > 0 and s["faults"]["reconnect_storm"] >= 1
    assert s["disconnects"] >= s["faults"]["disconnect"]
    assert sum(broker.connects.values()) == s["connects"] > 10
    assert s["acknowledged"] == s["generated"]


async def test_refused_credentials_fail_every_reading_as_not_authorized() -> None:
    broker = FakeBroker(rc=5)
    async with broker as port:
        cfg = _cfg(port, devices=2, target={"port": port, "username": "u", "password": "bad"})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(1.0)
    assert broker.credentials == {("u", "bad")}
    assert s["connect_failures"] == {"not_authorized": 2}
    assert s["failed"] == {"not_authorized": 10} and s["sent"] == 0
    assert sum(broker.connects.values()) == 2  # not retried


async def test_device_accounts_username_per_device_and_credentials_file(tmp_path) -> None:
    creds = tmp_path / "passwords.json"
    creds.write_text(json.dumps({"sensor_0000_line1": "pw0", "sensor_0001_line2": "pw1"}))
    broker = FakeBroker()
    async with broker as port:
        cfg = _cfg(port, devices=3, target={"port": port, "username": "{device_id}",
                                            "password": "shared",
                                            "credentials_file": str(creds)})
        async with Fleet(cfg) as fleet:
            await fleet.run(0.5)
    assert broker.client_credentials == {
        "sensor_0000_line1": ("sensor_0000_line1", "pw0"),
        "sensor_0001_line2": ("sensor_0001_line2", "pw1"),
        "sensor_0002_line1": ("sensor_0002_line1", "shared")}
    creds.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping of device id"):
        async with Fleet(cfg):
            pass


async def test_unreachable_target_counts_connect_errors_and_unsent_readings() -> None:
    async with FakeBroker() as port:
        pass  # closed again: nothing listens there now
    cfg = _cfg(port, devices=2, connect_wait_s=1.0, drain_timeout_s=0.2)
    async with Fleet(cfg) as fleet:
        s = await fleet.run(1.0)
    _check_accounting(fleet.summary())
    assert s["connect_failures"]["connect_error"] >= 2
    assert s["failed"] == {"not_connected": 10}


async def test_connects_are_paced_and_stop_ends_early() -> None:
    broker = FakeBroker()
    async with broker as port:
        cfg = _cfg(port, devices=20, connect_rate=40.0)
        async with Fleet(cfg) as fleet:
            assert await fleet.wait_connected(10) == 20
            asyncio.get_running_loop().call_later(0.5, fleet.stop)
            s = await fleet.run(30.0)
    assert s["connect_phase_s"] >= 19 / 40 - 0.05
    assert s["duration_s"] < 2.0
    _check_accounting(fleet.summary())


async def test_paho_client_path() -> None:
    broker = FakeBroker()
    async with broker as port:
        cfg = _cfg(port, devices=3, target={"port": port, "mqtt_client": "paho"},
                   faults={"duplicate": {"rate": 0.1}})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(1.0)
    expected = generate(cfg, T0, 1.0)
    assert {d: [p for _, p, _ in got] for d, got in broker.received.items()} == \
           {d: [e.payload for e in es] for d, es in expected.items()}
    assert s["acknowledged"] == s["generated"]


async def test_qos0_is_unconfirmed() -> None:
    broker = FakeBroker()
    async with broker as port:
        cfg = parse_config({"seed": 1, "start_ms": T0, "connect_rate": 0,
                            "target": {"port": port},
                            "fleet": [{"count": 4, "rate_hz": 5, "qos": 0}]}, SimConfig,
                           environ={})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(1.0)
    assert s["unconfirmed"] == s["sent"] == 20 and s["acknowledged"] == 0
    assert sum(len(v) for v in broker.received.values()) == 20


async def test_serial_devices_write_lines_to_their_pty(tmp_path) -> None:
    cfg = parse_config({"seed": 2, "start_ms": T0, "ledger": str(tmp_path / "l.sqlite"),
                        "fleet": [{"count": 2, "rate_hz": 10, "protocol": "serial"},
                                  {"count": 1, "rate_hz": 10, "protocol": "serial",
                                   "serial_format": "csv", "id_template": "csv_{n}"}],
                        "faults": {"malformed": {"rate": 0.1}}}, SimConfig, environ={})
    loop = asyncio.get_running_loop()
    got: dict[str, bytearray] = {}
    fds = []
    async with Fleet(cfg) as fleet:
        await fleet.wait_connected(5)
        ports = fleet.serial_ports
        assert set(ports) == {"sensor_0000_line1", "sensor_0001_line1", "csv_0"}
        for device_id, path in ports.items():
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            fds.append(fd)
            got[device_id] = bytearray()

            def readable(fd: int = fd, buf: bytearray = got[device_id]) -> None:
                try:
                    buf.extend(os.read(fd, 1 << 20))
                except BlockingIOError:
                    pass

            loop.add_reader(fd, readable)
        s = await fleet.run(1.0)
        await asyncio.sleep(0.2)
    for fd in fds:
        loop.remove_reader(fd)
        os.close(fd)
    expected = generate(cfg, T0, 1.0)
    for device_id, es in expected.items():
        assert bytes(got[device_id]).split(b"\n")[:-1] == [e.payload for e in es]
    assert json.loads(bytes(got["sensor_0000_line1"]).split(b"\n")[0])["seq"] == 0
    assert s["unconfirmed"] == s["sent"] == 30
    _check_accounting(fleet.summary())


async def test_coap_confirmable_and_rejected() -> None:
    import aiocoap
    import aiocoap.resource as resource

    seen: list[bytes] = []

    class Readings(resource.Resource, resource.PathCapable):
        async def render_post(self, request: Any) -> Any:
            seen.append(request.payload)
            try:
                json.loads(request.payload)
            except ValueError:
                return aiocoap.Message(code=aiocoap.BAD_REQUEST)
            return aiocoap.Message(code=aiocoap.CHANGED)

    root = resource.Site()
    root.add_resource(["r"], Readings())
    port = _free_udp_port()
    server = await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", port),
                                                         transports=["udp6"])
    try:
        cfg = parse_config({"seed": 3, "start_ms": T0, "target": {"port": port,
                                                                  "protocol": "coap"},
                            "fleet": [{"count": 3, "rate_hz": 5}],
                            "faults": {"malformed": {"rate": 0.2,
                                                     "variants": ["bad_json"]}}},
                           SimConfig, environ={})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(1.0)
    finally:
        await server.shutdown()
    expected = generate(cfg, T0, 1.0)
    bad = sum(1 for es in expected.values() for e in es if e.expect == "rejected")
    assert bad > 0
    assert s["failed"] == {"coap_4.00": bad}
    assert s["acknowledged"] == s["generated"] - bad
    assert sorted(seen) == sorted(e.payload for es in expected.values() for e in es)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.parametrize("client", ["fast", "paho"])
async def test_tls_verifies_the_broker(certificate: tuple[str, str], client: str) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    broker = FakeBroker(ssl=server_ctx)
    async with broker as port:
        cfg = _cfg(port, devices=3, target={"port": port, "mqtt_client": client,
                                            "tls": {"enabled": True, "ca_file": cert}})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(1.0)
        assert s["acknowledged"] == s["generated"] == 15
        # without the CA the broker's certificate is refused: counted, retried, never sent
        cfg = _cfg(port, devices=1, connect_wait_s=2, drain_timeout_s=0.2,
                   target={"port": port, "mqtt_client": client, "tls": {"enabled": True}})
        async with Fleet(cfg) as fleet:
            s = await fleet.run(0.5)
        assert s["sent"] == 0 and s["connect_failures"]
    assert sum(broker.connects.values()) == 3


async def test_sigterm_stops_the_cli_cleanly(tmp_path) -> None:
    broker = FakeBroker()
    async with broker as port:
        ledger = tmp_path / "l.sqlite"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "sim", "run", "--devices", "5", "--rate", "5",
            "--duration", "0", "--target", f"127.0.0.1:{port}", "--connect-rate", "0",
            "--ledger", str(ledger), "--json", "--quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    s = json.loads(out.decode().strip().splitlines()[-1])
    assert s["sent"] > 0 and s["acknowledged"] == s["generated"] == s["sent"]
    assert sum(len(v) for v in broker.received.values()) == s["sent"]
    with Ledger.open(ledger) as led:
        assert len(led) == s["generated"]
