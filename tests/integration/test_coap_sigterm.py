"""SIGTERM: a process running the CoAP, serial and HTTP components (wired the way the gateway
application does: the signal cancels the main task) answers on real sockets, then exits 0
promptly with every component closed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROGRAM = textwrap.dedent("""
    import asyncio, json, logging, signal, sys
    from prometheus_client import CollectorRegistry
    from gateway.coap import CoapServer, CoapSettings
    from gateway.http import GatewayHttp, GatewayMetrics
    from gateway.serialport import PortSettings, SerialIngress
    from gateway.testing import RecordingIngest

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    async def main() -> None:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        ingest = RecordingIngest()
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry)
        async with CoapServer(CoapSettings(host="127.0.0.1", port=0), ingest=ingest) as coap, \\
                SerialIngress([PortSettings(sys.argv[1])], ingest=ingest) as serial_in, \\
                GatewayHttp("127.0.0.1", 0, registry, {"coap": coap.health,
                                                       "serial": serial_in.health}) as http:
            metrics.register_source("coap", coap.stats)
            metrics.register_source("serial", serial_in.stats)
            print(json.dumps({"coap": coap.port, "http": http.port}), flush=True)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                print("stopping", flush=True)
                raise

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    print("stopped", flush=True)
""")


def test_sigterm_closes_every_component_and_exits_zero(tmp_path: Path) -> None:
    master, slave = os.openpty()
    link = tmp_path / "ttyGW"
    os.symlink(os.ttyname(slave), link)
    os.close(slave)
    script = tmp_path / "gw.py"
    script.write_text(PROGRAM)
    proc = subprocess.Popen([sys.executable, str(script), str(link)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        health = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the serial port opens asynchronously
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/healthz",
                                        timeout=5) as resp:
                health = resp.read().decode()
            if "1/1 ports connected" in health:
                break
            time.sleep(0.05)
        assert '"status": "ok"' in health and "1/1 ports connected" in health
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["stopping", "stopped"]
    assert elapsed < 5
    assert "coap stopped" in err and "http stopped" in err
    assert "Traceback" not in err
