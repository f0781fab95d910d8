"""Hand-made requests to cloud ingest's `POST /v1/batches`: signed or not, whole, truncated,
oversize, replayed.  Used by the hostile-input and security scenarios.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from edge.codec import Batch, encode_batch
from edge.model import Reading
from edge.signing import sign_request

from .procs import HOST, http_post

CONTENT_TYPE = "application/vnd.fieldlink.batch"


def frame(gateway: str, seq: int, devices: str = "sx", n: int = 5) -> bytes:
    now = int(time.time() * 1000)
    readings = [Reading(device_id=f"{devices}_{i:02d}", ts_ms=now - i, value=20.0 + i,
                        measurement="temperature", unit="C", seq=seq * 1000 + i,
                        received_ms=now) for i in range(n)]
    return encode_batch(Batch(gateway, seq, now, readings, []), "zstd")


def post(url: str, body: bytes, headers: dict[str, str] | None = None,
         content_type: str = CONTENT_TYPE) -> tuple[int, dict[str, Any]]:
    status, text = http_post(f"{url}/v1/batches", body,
                             {"Content-Type": content_type, **(headers or {})})
    try:
        return status, dict(json.loads(text)) if text else {}
    except ValueError:
        return status, {"raw": text[:200]}


def signed(secret: str, gateway: str, body: bytes, now_ms: int | None = None
           ) -> dict[str, str]:
    return sign_request(secret, gateway, body,
                        int(time.time() * 1000) if now_ms is None else now_ms)


def huge_content_length(port: int, length: int = 10**9) -> int:
    """A request announcing `length` bytes and sending none: the status (413 expected)."""
    with socket.create_connection((HOST, port), 10) as sock:
        sock.sendall(f"POST /v1/batches HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
                     f"{CONTENT_TYPE}\r\nContent-Length: {length}\r\n\r\n".encode())
        sock.settimeout(10)
        head = sock.recv(4096).decode(errors="replace")
    try:
        return int(head.split(" ", 2)[1])
    except (IndexError, ValueError):
        return 0
