"""Simulated sensor fleets with fault injection: `fieldlink sim run`, `Fleet`, the ledger.

See docs/simulator.md.  Pure modules (no I/O, no clock): `prng`, `signals`, `faults`,
`payloads`, `device`, `stats`; the rest drive them over MQTT, CoAP and serial ptys.
"""
