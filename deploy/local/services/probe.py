"""Protocol-level readiness probes for fieldlink's local test services.

Standard library only, so the service scripts can run it with any python3 before the project's
virtualenv exists, and ``tests/integration/services.py`` loads it by path for the same checks.

Each probe answers "would a real client succeed right now?", not merely "is the port open":

- kafka: a Metadata (v1) request that lists at least one live broker and a controller;
- influxdb: ``GET /ping`` answering 204 (returns the ``X-Influxdb-Version`` header);
- postgres: a StartupMessage answered with an authentication request, not "starting up";
- mosquitto: an MQTT 3.1.1 CONNECT answered with CONNACK "accepted".

A probe returns a short human description on success and raises ``NotReady`` (with the reason)
otherwise. Command line: ``probe.py SERVICE [--host H] [--port P] [--wait SECONDS]``; exit 0 and
the description on stdout when ready, exit 1 and the reason on stderr when not.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
import urllib.error
import urllib.request

__all__ = ["NotReady", "PROBES", "probe", "wait"]


class NotReady(Exception):
    """The service does not (yet) answer like a working server."""


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise NotReady(f"cannot connect to {host}:{port}: {exc}") from exc


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise NotReady("connection closed by the server")
        buf += chunk
    return buf


def kafka(host: str, port: int, timeout: float = 3.0) -> str:
    # Metadata v1 (api_key 3), all topics (null array). v1 is the oldest version that reports
    # the controller id; every Kafka 3.x broker still accepts it.
    client_id = b"fieldlink-probe"
    body = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id + struct.pack(">i", -1)
    with _connect(host, port, timeout) as sock:
        try:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            resp = _recv_exact(sock, size)
        except OSError as exc:
            raise NotReady(f"kafka metadata request failed: {exc}") from exc
    (corr, n_brokers) = struct.unpack_from(">ii", resp, 0)
    if corr != 7:
        raise NotReady(f"kafka answered correlation id {corr}, expected 7")
    off = 8
    brokers = []
    for _ in range(n_brokers):
        (node_id, hlen) = struct.unpack_from(">ih", resp, off)
        off += 6
        bhost = resp[off : off + hlen].decode()
        off += hlen
        (bport, rlen) = struct.unpack_from(">ih", resp, off)
        off += 6 + max(rlen, 0)
        brokers.append(f"{node_id}@{bhost}:{bport}")
    (controller,) = struct.unpack_from(">i", resp, off)
    if not brokers or controller < 0:
        raise NotReady(f"kafka has no live broker/controller yet (brokers={brokers})")
    return f"kafka brokers={','.join(brokers)} controller={controller}"


def influxdb(host: str, port: int, timeout: float = 3.0) -> str:
    url = f"http://{host}:{port}/ping"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
            version = resp.headers.get("X-Influxdb-Version", "?")
    except urllib.error.HTTPError as exc:
        raise NotReady(f"GET {url} -> {exc.code}") from exc
    except OSError as exc:
        raise NotReady(f"GET {url} failed: {exc}") from exc
    if status != 204:
        raise NotReady(f"GET {url} -> {status}, expected 204")
    return f"influxd version {version}"


def postgres(host: str, port: int, timeout: float = 3.0, user: str = "fieldlink") -> str:
    params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    startup = struct.pack(">ii", 8 + len(params), 196608) + params  # protocol 3.0
    with _connect(host, port, timeout) as sock:
        try:
            sock.sendall(startup)
            kind = _recv_exact(sock, 1)
            (length,) = struct.unpack(">i", _recv_exact(sock, 4))
            payload = _recv_exact(sock, length - 4)
        except OSError as exc:
            raise NotReady(f"postgres startup failed: {exc}") from exc
    if kind == b"R":  # an authentication request (or AuthenticationOk): accepting connections
        return "postgres accepting connections"
    if kind == b"E":
        fields = dict(
            (f[:1].decode(), f[1:].decode(errors="replace")) for f in payload.split(b"\0") if f
        )
        raise NotReady(f"postgres: {fields.get('M', 'error')}")
    raise NotReady(f"postgres answered unexpected message {kind!r}")


def mosquitto(host: str, port: int, timeout: float = 3.0) -> str:
    client_id = b"fieldlink-probe"
    var_header = b"\x00\x04MQTT\x04\x02\x00\x0a"  # MQTT 3.1.1, clean session, keepalive 10 s
    payload = struct.pack(">h", len(client_id)) + client_id
    remaining = len(var_header) + len(payload)
    packet = bytes([0x10, remaining]) + var_header + payload
    with _connect(host, port, timeout) as sock:
        try:
            sock.sendall(packet)
            connack = _recv_exact(sock, 4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        except OSError as exc:
            raise NotReady(f"mqtt connect failed: {exc}") from exc
    if connack[0] != 0x20 or connack[3] != 0:
        raise NotReady(f"mqtt CONNACK refused: {connack.hex()}")
    return "mqtt broker accepted CONNECT"


PROBES = {"kafka": kafka, "influxdb": influxdb, "postgres": postgres, "mosquitto": mosquitto}


def probe(service: str, host: str, port: int, timeout: float = 3.0) -> str:
    return PROBES[service](host, port, timeout)


def wait(service: str, host: str, port: int, seconds: float) -> str:
    """Polls until the probe succeeds; raises the last ``NotReady`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return probe(service, host, port)
        except NotReady:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("service", choices=sorted(PROBES))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    args = ap.parse_args(argv)
    try:
        print(wait(args.service, args.host, args.port, args.wait))
    except NotReady as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
