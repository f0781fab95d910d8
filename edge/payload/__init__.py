"""Sensor payloads: the bytes one sensor sends for one (or a few) readings.

`encode` turns readings into the seed's sensor message (JSON or msgpack) — the simulator and
tests use it.  `decode` (the only place sensor bytes become `Reading`s) parses JSON, msgpack,
CBOR, bare numbers and CSV lines, validates, corrects clock skew and flags it; every rejection
is a typed `edge.errors` exception with a reason.
"""
