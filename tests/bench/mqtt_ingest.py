"""MQTT device ingest: many QoS 1 publishers against the gateway broker vs stock amqtt.

Each variant runs the server in its own process and the publishers in another:

* ``lean``        fieldlink's `MqttServer` with an ingest stub doing a 5 ms group commit
                  (every PUBLISH waits for the next commit, then is acknowledged);
* ``lean-sqlite`` the same server; the stub commits each group to a real SQLite file (WAL,
                  synchronous=NORMAL) in a worker thread — closer to the whole gateway;
* ``lean-uvloop`` the same as ``lean`` on the uvloop event loop;
* ``gateway``     the broker in front of the real `gateway.pipeline.Pipeline` and SQLite
                  `gateway.buffer.Buffer` (defaults: 5 ms group commit, synchronous=FULL):
                  what the whole device path costs (``gateway-uvloop`` on uvloop);
* ``floor``       not a broker: a bare asyncio Protocol answering CONNACK/PUBACK by byte
                  position — what this machine charges for the sockets alone;
* ``amqtt``       the stock amqtt 0.12 broker (anonymous, no logging/$SYS plugins) with a
                  plugin handing every message to the same 5 ms stub.  amqtt acknowledges
                  before its plugins run, so its ack does not wait for any commit.

The publishers (a compact asyncio MQTT client written here, independent of the server code)
open N connections, then each publishes one ~100-byte reading per 1/rate s at QoS 1.  After a
warm-up, a measurement window of `--duration` s records, per variant:

us_per_reading  server process CPU time in the window / readings the server took in during
                the window (`served_per_s` of them per second; fewer than sent when the
                server falls behind)
acked_share     PUBACKs received (window + 3 s drain) / readings published in the window
p50_ms, p99_ms  PUBLISH → PUBACK latency seen by the client
cpu_cores       server CPU seconds / wall seconds in the window
rss_mb          peak server RSS in the window

The last line of output is one JSON object.  Usage::

    python tests/bench/mqtt_ingest.py                       # 10,000 connections, 1/s, 15 s
    python tests/bench/mqtt_ingest.py --connections 2000 --variants lean --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

TARGET = {"connections": 10_000, "p99_ms": 25.0, "cpu_cores": 0.35, "rss_mb": 150.0,
          "acked_share": 1.0}


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- server side ------------------------------------------------------------------------------

class GroupCommitStub:
    """An `Ingest` that acknowledges in groups, every `commit_s`, like the SQLite buffer."""

    def __init__(self, commit_s: float, db_path: str | None = None) -> None:
        from gateway.ingest import Outcome

        self.commit_s = commit_s
        self.ok = Outcome(accepted=1)
        self.count = 0
        self._fut: asyncio.Future[None] | None = None
        self._batch: list[tuple[str, bytes]] = []
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if db_path:
            self._db = sqlite3.connect(db_path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS r (topic TEXT, payload BLOB)")

    async def ingest(self, payload: bytes, origin: Any, *, durable: bool = True) -> Any:
        self.count += 1
        if self._db is not None:
            self._batch.append((origin.topic, payload))
        fut = self._fut
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._fut = loop.create_future()
            loop.call_later(self.commit_s, self._commit)
        if durable:
            await fut
        return self.ok

    def _commit(self) -> None:
        fut, self._fut = self._fut, None
        assert fut is not None
        if self._db is None:
            fut.set_result(None)
            return
        batch, self._batch = self._batch, []
        done = asyncio.get_running_loop().run_in_executor(None, self._write, batch)
        done.add_done_callback(lambda _: fut.set_result(None))

    def _write(self, batch: list[tuple[str, bytes]]) -> None:
        assert self._db is not None
        with self._lock:
            self._db.executemany("INSERT INTO r VALUES (?, ?)", batch)
            self._db.commit()


def _report_counts(count: Any) -> asyncio.Task[None]:
    """Print `COUNT n` (readings handed to ingest so far) four times a second, so the
    orchestrator can divide server CPU by the readings the server actually processed."""

    async def loop() -> None:
        while True:
            print(f"COUNT {count()}", flush=True)
            await asyncio.sleep(0.25)

    return asyncio.get_running_loop().create_task(loop(), name="bench-count")


async def _serve_lean(port: int, commit_s: float, sqlite_path: str | None) -> None:
    from gateway.mqtt import MqttServer, MqttSettings

    stub = GroupCommitStub(commit_s, sqlite_path)
    settings = MqttSettings(host="127.0.0.1", port=port, allow_anonymous=True,
                            retain_last_reading=True)
    async with MqttServer(settings, ingest=stub) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.stop)
        print("READY", flush=True)
        counter = _report_counts(lambda: stub.count)
        await server.serve_forever()
        counter.cancel()
    print(json.dumps({"ingested": stub.count}), flush=True)


async def _serve_gateway(port: int, db_path: str) -> None:
    """The broker in front of the real pipeline (decode, validate) and SQLite buffer."""
    from gateway.buffer import Buffer, BufferSettings
    from gateway.mqtt import MqttServer, MqttSettings
    from gateway.pipeline import Pipeline

    settings = MqttSettings(host="127.0.0.1", port=port, allow_anonymous=True)
    async with Buffer(BufferSettings(path=db_path, max_bytes=1 << 30)) as buffer:
        pipeline = Pipeline(buffer)
        async with MqttServer(settings, ingest=pipeline) as server:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.stop)
            print("READY", flush=True)
            counter = _report_counts(lambda: pipeline.stats.payloads["mqtt"])
            await server.serve_forever()
            counter.cancel()
        print(json.dumps({"ingested": dict(pipeline.stats.readings),
                          "rejected": dict(pipeline.stats.rejected)}), flush=True)


async def _serve_amqtt(port: int, commit_s: float) -> None:
    from amqtt.broker import Broker

    global _STUB
    _STUB = GroupCommitStub(commit_s)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}",
                                  "max_connections": 0}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            f"{__name__}.StubIngestPlugin": {},
        },
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    counter = _report_counts(lambda: _STUB.count if _STUB else 0)
    await stop.wait()
    counter.cancel()
    await broker.shutdown()
    print(json.dumps({"ingested": _STUB.count}), flush=True)


_STUB: GroupCommitStub | None = None


class _FloorProtocol(asyncio.Protocol):
    """Not a broker: CONNACK/PUBACK by byte position, for the machine's asyncio floor."""

    count = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data[0] >> 4 == 1:
            self.transport.write(b"\x20\x02\x00\x00")
        elif data[0] >> 4 == 3:
            _FloorProtocol.count += 1
            tlen = (data[2] << 8) | data[3]
            self.transport.write(b"\x40\x02" + data[4 + tlen:6 + tlen])


async def _serve_floor(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FloorProtocol, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    counter = _report_counts(lambda: _FloorProtocol.count)
    await stop.wait()
    counter.cancel()
    server.close()
    print(json.dumps({"ingested": None}), flush=True)


def _stub_plugin_class() -> Any:
    from amqtt.plugins.base import BasePlugin

    class StubIngestPlugin(BasePlugin):  # type: ignore[misc]
        async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
            assert _STUB is not None
            await _STUB.ingest(bytes(message.data), _Origin(message.topic))

    return StubIngestPlugin


class _Origin:
    def __init__(self, topic: str) -> None:
        self.topic = topic


def __getattr__(name: str) -> Any:  # amqtt imports its plugin by dotted name, lazily here
    if name == "StubIngestPlugin":
        return _stub_plugin_class()
    raise AttributeError(name)


# -- load side ------------------------------------------------------------------------------

def _utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray((first,))
    while True:
        d, n = n & 0x7F, n >> 7
        out.append(d | 0x80 if n else d)
        if not n:
            return bytes(out) + body


class LoadConn(asyncio.Protocol):
    def __init__(self, gen: LoadGen, idx: int) -> None:
        self.gen = gen
        self.idx = idx
        self.device = f"dev{idx:05d}"
        self.topic = _utf8(f"factory/bench/line{idx % 10}/{self.device}")
        self.transport: Any = None
        self.buf = b""
        self.pid = 0
        self.seq = 0
        self.sent: dict[int, tuple[float, bool]] = {}
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        body = _utf8("MQTT") + bytes((4, 0x02)) + (120).to_bytes(2, "big") + _utf8(
            f"bench-{self.idx}")
        transport.write(_packet(0x10, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost += 1
        self.transport = None
        if not self.connack.done():
            self.connack.set_result(-1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        now = time.perf_counter()
        gen = self.gen
        while n - pos >= 2:
            kind = buf[pos] >> 4
            length = buf[pos + 1]  # every packet the broker sends us is < 128 bytes
            if n - pos < 2 + length:
                break
            if kind == 4:
                pid = (buf[pos + 2] << 8) | buf[pos + 3]
                entry = self.sent.pop(pid, None)
                if entry is not None and entry[1]:
                    gen.latencies.append(now - entry[0])
                    gen.acked += 1
            elif kind == 2 and not self.connack.done():
                self.connack.set_result(buf[pos + 3])
            pos += 2 + length
        self.buf = buf[pos:]

    def publish(self, measuring: bool) -> None:
        if self.transport is None:
            return
        self.pid = self.pid % 65535 + 1
        self.seq += 1
        payload = (f'{{"device_id":"{self.device}","timestamp":{int(time.time() * 1000)},'
                   f'"value":{20 + (self.seq % 50) / 10:.1f},"unit":"celsius",'
                   f'"seq":{self.seq}}}').encode()
        body = self.topic + self.pid.to_bytes(2, "big") + payload
        self.sent[self.pid] = (time.perf_counter(), measuring)
        self.transport.write(_packet(0x32, body))


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.conns: list[LoadConn] = []
        self.latencies: list[float] = []
        self.acked = 0
        self.sent = 0
        self.lost = 0

    async def connect_all(self) -> int:
        loop = asyncio.get_running_loop()
        wave = 250

        async def one(i: int) -> LoadConn | None:
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    lambda: LoadConn(self, i), "127.0.0.1", self.args.port), 30)
                rc = await asyncio.wait_for(proto.connack, 60)
            except (TimeoutError, OSError):
                return None
            return proto if rc == 0 else None

        for start in range(0, self.args.connections, wave):
            stop = min(start + wave, self.args.connections)
            got = await asyncio.gather(*(one(i) for i in range(start, stop)))
            self.conns += [c for c in got if c is not None]
        return len(self.conns)

    async def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        connected = await self.connect_all()
        # the publishers' own collector pauses would show up as broker latency
        gc.collect()
        gc.freeze()
        gc.disable()
        ramp_s = time.perf_counter() - t0
        print(f"LOAD connected {connected} in {ramp_s:.1f}s", flush=True)
        ticks_per_period = 100
        period = 1.0 / self.args.rate
        tick = period / ticks_per_period
        slots = [self.conns[i::ticks_per_period] for i in range(ticks_per_period)]
        start = time.perf_counter()
        warm_end = start + self.args.warmup
        measure_end = warm_end + self.args.duration
        cpu0 = time.process_time()
        k = 0
        measuring_started = False
        while True:
            now = time.perf_counter()
            if now >= measure_end:
                break
            measuring = now >= warm_end
            if measuring and not measuring_started:
                measuring_started = True
                self.latencies.clear()
                self.acked = 0
                print("MEASURE_START", flush=True)
            for conn in slots[k % ticks_per_period]:
                conn.publish(measuring)
                if measuring:
                    self.sent += 1
            k += 1
            delay = start + k * tick - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))
        print("MEASURE_END", flush=True)
        await asyncio.sleep(3.0)  # drain: late acks still count
        lat = sorted(self.latencies)

        def pick(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

        return {
            "connected": connected, "ramp_s": round(ramp_s, 1), "sent": self.sent,
            "acked": self.acked, "acked_share": round(self.acked / self.sent, 4)
            if self.sent else 0.0,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": pick(1.0),
            "connections_lost": self.lost,
            "load_cpu_cores": round((time.process_time() - cpu0) /
                                    (time.perf_counter() - start), 3),
        }


async def _load(args: argparse.Namespace) -> None:
    result = await LoadGen(args).run()
    print(json.dumps(result), flush=True)


# -- orchestration --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    port = _free_port()
    me = os.path.abspath(__file__)
    cmd = [sys.executable, me, "--role", "server", "--variant", variant, "--port", str(port),
           "--commit-ms", str(args.commit_ms)]
    tmpdir = tempfile.mkdtemp(prefix="mqtt-bench-")
    if "sqlite" in variant or variant.startswith("gateway"):
        cmd += ["--sqlite", os.path.join(tmpdir, "buffer.sqlite")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(me))), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise RuntimeError(f"{variant}: server did not start")
        proc = psutil.Process(server.pid)
        served = [0]
        tail: list[str] = []

        def follow() -> None:
            assert server.stdout is not None
            for out_line in server.stdout:
                if out_line.startswith("COUNT "):
                    served[0] = int(out_line.split()[1])
                else:
                    tail.append(out_line.strip())

        threading.Thread(target=follow, daemon=True).start()
        load = subprocess.Popen(
            [sys.executable, me, "--role", "load", "--port", str(port),
             "--connections", str(args.connections), "--rate", str(args.rate),
             "--duration", str(args.duration), "--warmup", str(args.warmup)],
            stdout=subprocess.PIPE, text=True, env=env)
        assert load.stdout is not None
        rss_peak = 0.0
        cpu_start = wall_start = cpu_end = wall_end = None
        served_start = served_end = 0
        sampling = threading.Event()

        def sample() -> None:
            nonlocal rss_peak
            while not sampling.wait(0.5):
                rss_peak = max(rss_peak, proc.memory_info().rss / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        result: dict[str, Any] = {}
        for line in load.stdout:
            line = line.strip()
            if line.startswith("LOAD"):
                print(f"  {variant}: {line[5:]}", flush=True)
            elif line == "MEASURE_START":
                t = proc.cpu_times()
                cpu_start, wall_start = t.user + t.system, time.perf_counter()
                served_start = served[0]
                sampler.start()
            elif line == "MEASURE_END":
                t = proc.cpu_times()
                cpu_end, wall_end = t.user + t.system, time.perf_counter()
                served_end = served[0]
                rss_peak = max(rss_peak, proc.memory_info().rss / 2**20)
                sampling.set()
            elif line.startswith("{"):
                result = json.loads(line)
        load.wait()
        if cpu_start is None or cpu_end is None or wall_start is None or wall_end is None:
            raise RuntimeError(f"{variant}: the load generator did not complete")
        cpu = cpu_end - cpu_start
        wall = wall_end - wall_start
        processed = served_end - served_start
        result.update({
            "loadavg_1m": round(os.getloadavg()[0], 2),
            # per reading the server actually took in during the window (if it falls behind,
            # fewer than were sent)
            "served_per_s": round(processed / wall),
            "us_per_reading": round(cpu / processed * 1e6, 1) if processed else None,
            "cpu_cores": round(cpu / wall, 3),
            "rss_mb": round(rss_peak, 1),
        })
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        time.sleep(0.2)  # let the follower thread read the last line
        if tail and tail[-1].startswith("{"):
            result["server"] = json.loads(tail[-1])  # what the server side counted
        return result
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("orchestrate", "server", "load"), default="orchestrate")
    parser.add_argument("--variant", default="lean")
    parser.add_argument("--variants", default="lean,lean-sqlite,amqtt")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per connection")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--commit-ms", type=float, default=5.0)
    parser.add_argument("--sqlite", default=None)
    args = parser.parse_args(argv)
    _raise_nofile()
    if args.role == "server":
        if args.variant == "floor":
            asyncio.run(_serve_floor(args.port))
        elif args.variant == "amqtt":
            asyncio.run(_serve_amqtt(args.port, args.commit_ms / 1000))
        else:
            if args.variant.startswith("gateway"):
                assert args.sqlite
                main = _serve_gateway(args.port, args.sqlite)
            else:
                main = _serve_lean(args.port, args.commit_ms / 1000, args.sqlite)
            if args.variant.endswith("uvloop"):
                import uvloop

                uvloop.run(main)
            else:
                asyncio.run(main)
        return 0
    if args.role == "load":
        asyncio.run(_load(args))
        return 0
    out: dict[str, Any] = {"benchmark": "mqtt_ingest", "connections": args.connections,
                           "rate_per_connection": args.rate, "duration_s": args.duration,
                           "commit_ms": args.commit_ms, "cpus": os.cpu_count(),
                           "target": TARGET, "variants": {}}
    for variant in args.variants.split(","):
        print(f"variant {variant}: {args.connections} connections × {args.rate}/s QoS 1",
              flush=True)
        res = run_variant(variant, args)
        out["variants"][variant] = res
        print(f"  {variant}: {json.dumps(res)}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
