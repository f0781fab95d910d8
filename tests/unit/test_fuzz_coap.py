"""Hostile CoAP requests at the mapping seam (hypothesis): any Content-Format number, any
payload, any refusal — the gateway answers with a defined 4.xx code and a diagnostic that
fits a datagram, and the pipeline stores or dead-letters every payload.

(Datagram-level fuzzing of the running CoAP endpoint is in the torture suite,
tests/torture/coap_fuzz.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import cbor2
import msgpack
from aiocoap.numbers.codes import Code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.model import Reading
from edge.payload.decode import Limits
from edge.testing import FakeClock
from gateway.buffer import AppendResult
from gateway.coap.mapping import (
    MAX_DIAGNOSTIC_BYTES,
    code_for_rejection,
    content_type_for,
    diagnostic,
    exceeds_limit,
)
from gateway.ingest import Origin
from gateway.pipeline import Pipeline

NOW = 1_705_322_445_000
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class RecordingBuffer:
    appended: list[Reading] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)

    async def append(self, readings: Sequence[Reading], *, durable: bool = True
                     ) -> AppendResult:
        self.appended += readings
        return AppendResult(stored=len(readings))

    async def dead_letter(self, raw: bytes, *, source: str, reason: str, peer: str = "",
                          detail: str = "", durable: bool = True) -> None:
        self.dead.append(reason)


int64 = st.integers(-2**63, 2**63 - 1)
message = st.fixed_dictionaries(
    {"value": st.one_of(st.floats(), int64, st.text(max_size=5))},
    optional={"timestamp": st.one_of(int64, st.just(NOW)),
              "device_id": st.sampled_from(["cx_dev", "other", ""]),
              "seq": st.integers(-1, 2**64 - 1)})
payload = st.one_of(
    st.binary(max_size=200),
    message.map(lambda m: json.dumps(m).encode()),
    message.map(lambda m: msgpack.packb(m)),
    message.map(lambda m: cbor2.dumps(m)),
    st.floats().map(lambda f: str(f).encode()),
)


@FUZZ
@given(payload=payload, content_format=st.one_of(st.none(), st.integers(0, 65535),
                                                 st.sampled_from([0, 50, 60, 65001, 11542])),
       hint=st.sampled_from(["cx_dev", None]))
def test_any_coap_request_is_stored_or_refused_with_a_defined_code(
        payload: bytes, content_format: int | None, hint: str | None) -> None:
    ctype = content_type_for(content_format)
    assert ctype is None or isinstance(ctype, str)
    buffer = RecordingBuffer()
    pipeline = Pipeline(buffer, limits={"coap": Limits(max_payload_bytes=1024)},
                        clock=FakeClock(NOW))
    outcome = asyncio.run(pipeline.ingest(payload, Origin("coap", "10.0.0.9:5683", hint,
                                                          content_type=ctype)))
    if outcome.rejected is None:
        assert buffer.appended
    else:
        assert buffer.dead == [outcome.rejected]
        code = code_for_rejection(outcome.rejected)
        assert code.is_response() and code.class_ == 4, code
        diag = diagnostic(outcome.rejected, outcome.detail)
        assert len(diag) <= MAX_DIAGNOSTIC_BYTES
        diag.decode("utf-8")


@FUZZ
@given(reason=st.text(max_size=300), detail=st.text(max_size=600))
def test_diagnostics_always_fit_one_datagram_as_utf8(reason: str, detail: str) -> None:
    diag = diagnostic(reason, detail)
    assert len(diag) <= MAX_DIAGNOSTIC_BYTES
    diag.decode("utf-8")
    assert code_for_rejection(reason) in set(Code) and code_for_rejection(reason).class_ == 4


@FUZZ
@given(length=st.integers(0, 10**6), limit=st.integers(1, 10**6),
       block=st.one_of(st.none(), st.integers(0, 2**20)),
       size=st.sampled_from([16, 32, 64, 128, 256, 512, 1024]),
       size1=st.one_of(st.none(), st.integers(0, 10**7)))
def test_oversize_uploads_are_caught_by_the_first_block_past_the_limit(
        length: int, limit: int, block: int | None, size: int, size1: int | None) -> None:
    over = exceeds_limit(length, limit, block_number=block, block_size=size, size1=size1)
    offset = (block or 0) * size
    if size1 is not None and size1 > limit:
        assert over
    else:
        assert over == (offset + length > limit)
