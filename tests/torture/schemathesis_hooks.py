"""Schemathesis hooks for fuzzing cloud ingest's `POST /v1/batches` past authentication.

Loaded by `schemathesis run` through `SCHEMATHESIS_HOOKS=torture.schemathesis_hooks` (with
`tests/` on PYTHONPATH).  Schemathesis generates the requests from `/openapi.json`; left
alone, almost all of them stop at the signature check (401).  So `before_call` makes:

* about a third of the requests correctly signed with the generated body, so the frame
  parser sees schemathesis' bytes;
* about a third correctly signed with a real batch frame that is then damaged (truncated,
  bit-flipped, re-sealed with a good checksum, or left intact with hostile contents:
  non-finite values, bad device ids, timestamps out of range), so the decoder, validation
  and the dead-letter path see them;
* the rest as generated (missing, malformed or wrong signatures).

The gateway id and secret come from FIELDLINK_TORTURE_GATEWAY / FIELDLINK_TORTURE_SECRET.
Readings of these frames have device ids starting with "sx_", so the suite can tell them
apart from its fleets' readings.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any

import schemathesis

from edge.codec import Batch, encode_batch
from edge.model import Event, Reading
from edge.signing import sign_request

_rng = random.Random(int(os.environ.get("FIELDLINK_TORTURE_SEED", "1")))
_seq = [int(time.time())]


def _frame() -> bytes:
    now = int(time.time() * 1000)
    n = _rng.randrange(0, 40)
    hostile = _rng.random() < 0.5
    readings = []
    for _ in range(n):
        value: float = _rng.uniform(-50, 150)
        device = f"sx_{_rng.randrange(20):02d}"
        ts = now - _rng.randrange(0, 60_000)
        if hostile:
            pick = _rng.randrange(6)
            if pick == 0:
                value = _rng.choice((math.nan, math.inf, -math.inf))
            elif pick == 1:
                device = _rng.choice(("sx bad", "sx/slash", "sx+", "", "sx\x00nul"))
            elif pick == 2:
                ts = _rng.choice((0, 10**15, -5))
        readings.append(Reading(device_id=device, ts_ms=ts, value=value,
                                measurement="temperature", unit="C", seq=_rng.randrange(10**9),
                                received_ms=now, quality=_rng.choice(("good", "good", "weird"))
                                if hostile else "good"))
    events = []
    if _rng.random() < 0.2:
        events.append(Event(kind=_rng.choice(("alert", "aggregate", "bogus")),
                            key=_rng.randbytes(_rng.choice((16, 0, 80))), ts_ms=now,
                            device_id="sx_00", body={"transition": "firing"}))
    _seq[0] += 1
    gateway = os.environ["FIELDLINK_TORTURE_GATEWAY"]
    frame = encode_batch(Batch(gateway, _seq[0], now, readings, events),
                         _rng.choice(("zstd", "gzip", "none")))
    cut = _rng.randrange(4)
    if cut == 0 and len(frame) > 1:
        return frame[:_rng.randrange(1, len(frame))]
    if cut == 1:
        b = bytearray(frame)
        for _ in range(_rng.randrange(1, 4)):
            b[_rng.randrange(len(b))] ^= 1 << _rng.randrange(8)
        return bytes(b)
    return frame


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path != "/v1/batches":
        return
    r = _rng.random()
    if r > 2 / 3:
        return
    body = case.body
    if r < 1 / 3:
        body = _frame()
    elif isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    elif not isinstance(body, bytes | bytearray):
        body = _rng.randbytes(_rng.randrange(0, 200))
    body = bytes(body)
    case.body = body
    headers = dict(case.headers or {})
    headers.update(sign_request(os.environ["FIELDLINK_TORTURE_SECRET"],
                                os.environ["FIELDLINK_TORTURE_GATEWAY"], body,
                                int(time.time() * 1000)))
    case.headers = headers
