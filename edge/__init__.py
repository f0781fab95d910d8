"""fieldlink's shared contract library.

`edge` is pure: the reading model, the wire codec, window and rule math, config models and
test fakes.  It opens no sockets, runs no servers and touches no SQLite.  `gateway`, `cloud`
and `firmware_sim` import `edge`; `edge` imports none of them (tests/unit/test_layering.py).
"""

__version__ = "0.1.0"
