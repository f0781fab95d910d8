"""Crash safety: a process appending with durable=True is SIGKILLed at random moments; every
reading whose append had resolved (it printed the key) must be in the file afterwards."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CHILD = r"""
import asyncio, sys
from edge.model import Reading
from gateway.buffer import Buffer, BufferSettings, Synchronous

path, sync, run = sys.argv[1], sys.argv[2], int(sys.argv[3])
T0 = 1_705_322_445_000

async def main():
    s = BufferSettings(path=path, synchronous=Synchronous(sync), commit_interval_ms=2,
                       check_at_open=False, dedup_horizon_s=1e9, dedup_max_keys=10**9)
    async with Buffer(s) as buf:
        for claim in await buf.pending_claims():  # what the previous run left in flight
            await buf.ack(claim)
        out = sys.stdout
        out.write("ready\n"); out.flush()

        async def device(d):
            i = 0
            while True:
                r = Reading(device_id=f"run{run}-dev{d}", ts_ms=T0 + i, value=float(i), seq=i,
                            received_ms=T0 + i)
                res = await buf.append([r])
                assert res.stored == 1, res
                out.write(r.idempotency_key().hex() + "\n"); out.flush()
                i += 1

        async def uplink():
            while True:
                claim = await buf.claim(40)
                if claim is None:
                    await asyncio.sleep(0.005)
                    continue
                await asyncio.sleep(0.002)
                await buf.ack(claim)

        await asyncio.gather(uplink(), *(device(d) for d in range(20)))

asyncio.run(main())
"""


def kill_at_random(path: Path, sync: str, run: int, rng: random.Random) -> list[str]:
    script = path.parent / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path), sync, str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line == "ready\n":
                ready.set()
            elif line.endswith("\n"):  # a line cut by the kill was never fully printed
                lines.append(line.strip())
    reader = threading.Thread(target=read)
    reader.start()
    if not ready.wait(30):
        proc.kill()
        reader.join()
        raise AssertionError(f"child did not start: {proc.stderr.read() if proc.stderr else ''}")
    time.sleep(rng.uniform(0.2, 1.0))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return lines


def stored_keys(path: Path) -> set[str]:
    conn = sqlite3.connect(path)  # opening recovers the WAL the killed process left
    try:
        keys = {bytes(dk[6:]).hex() for (dk,) in conn.execute("SELECT dk FROM readings")}
        keys |= {bytes(dk[6:]).hex() for (dk,) in conn.execute("SELECT dk FROM seen")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return keys
    finally:
        conn.close()


@pytest.mark.parametrize("sync,runs", [("FULL", 4), ("NORMAL", 3)])
def test_every_acknowledged_reading_survives_sigkill(tmp_path: Path, sync: str,
                                                     runs: int) -> None:
    rng = random.Random(f"crash-{sync}")
    path = tmp_path / "buffer.db"
    acknowledged: list[str] = []
    for run in range(runs):
        printed = kill_at_random(path, sync, run, rng)
        assert printed, "the child acknowledged nothing before the kill"
        acknowledged += printed
        missing = set(acknowledged) - stored_keys(path)
        assert not missing, f"run {run}: {len(missing)} acknowledged readings lost"
