"""The torture scenarios: each module has `NAME` and `run(ctx) -> ScenarioResult`.

Order of `ALL` is the order `tests/bench/torture.py` runs them in.
"""

from __future__ import annotations

ALL = ("power_cut", "partition", "cloud_faults", "disk_pressure", "hostile_input", "security")
