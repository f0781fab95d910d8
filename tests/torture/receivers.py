"""Things the suite listens with: a webhook receiver (the operator's pager) and a Kafka tail
(when each record reached the bus).

Both run in a background thread of the suite's process and are context managers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .procs import HOST


class WebhookReceiver:
    """A generic-webhook endpoint on 127.0.0.1: every POSTed JSON body with its arrival time
    (wall-clock ms).  Answers 200."""

    def __init__(self) -> None:
        self.bodies: list[tuple[int, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsable": raw[:200].decode(errors="replace")}
                with receiver._lock:
                    receiver.bodies.append((int(time.time() * 1000), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="torture-webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def transitions(self, since_ms: int = 0, until_ms: int | None = None
                    ) -> list[tuple[str, int, str, int]]:
        """(dedup_key, incarnation, transition, at_ms) of bodies received in the interval."""
        with self._lock:
            items = list(self.bodies)
        return [(b.get("dedup_key", "?"), int(b.get("incarnation") or 0),
                 b.get("transition", "?"), int(b.get("at_ms") or 0))
                for t, b in items if t >= since_ms and (until_ms is None or t < until_ms)]


class KafkaTail:
    """Follows a readings topic from its end: for every reading that arrives, (arrival ms,
    the gateway's receive time ms).  Started and stopped from the suite's thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.arrivals: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="torture-kafka-tail",
                                        daemon=True)

    def __enter__(self) -> KafkaTail:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the Kafka tail did not start within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:  # noqa: BLE001 - handed to the suite's thread
            self._error = exc
            self._ready.set()

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer

        from edge.codec import decode_batch

        from .readback import _partitions

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = await _partitions(consumer, [self.topic])
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self._ready.set()
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                now = int(time.time() * 1000)
                for msgs in batches.values():
                    for m in msgs:
                        for r in decode_batch(m.value).readings:
                            self.arrivals.append((now, r.received_ms))
        finally:
            await consumer.stop()
