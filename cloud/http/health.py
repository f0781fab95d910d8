"""Health checks a cloud service registers, and the report `/healthz` serves.

A check is a callable taking no argument, plain or async, returning `True`/`None` (healthy),
`False` (unhealthy) or `(ok, detail)`.  Raising or not answering within `timeout` seconds
counts as unhealthy with the reason as detail.  Checks run concurrently, so one hung check
cannot hang the endpoint.  (The same contract as the gateway's; the tiers share no code.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("fieldlink.cloud.health")

#: returns bool | None | (bool, str), or an awaitable of one
Check = Callable[[], object]


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HealthReport:
    checks: dict[str, CheckOutcome] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())

    @property
    def failed(self) -> list[str]:
        return sorted(name for name, c in self.checks.items() if not c.ok)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok" if self.ok else "fail"}
        if not self.ok:
            body["failed"] = self.failed
        body["checks"] = {name: {"ok": c.ok, "detail": c.detail}
                          for name, c in sorted(self.checks.items())}
        return body


class HealthChecks:
    def __init__(self, checks: Mapping[str, Check] | None = None, *,
                 timeout: float = 2.0) -> None:
        self._checks: dict[str, Check] = dict(checks or {})
        self.timeout = timeout

    def add(self, name: str, check: Check) -> None:
        if name in self._checks:
            raise ValueError(f"health check {name!r} is already registered")
        self._checks[name] = check

    def names(self) -> list[str]:
        return sorted(self._checks)

    async def run(self) -> HealthReport:
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._run_one(n, self._checks[n]) for n in names))
        return HealthReport(dict(zip(names, outcomes)))

    async def _run_one(self, name: str, check: Check) -> CheckOutcome:
        try:
            async with asyncio.timeout(self.timeout):
                result = check()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            return CheckOutcome(False, f"no answer within {self.timeout} s")
        except Exception as err:  # noqa: BLE001 - a failing check is an unhealthy outcome
            log.warning("health check raised", extra={"fields": {
                "check": name, "error": repr(err)}})
            return CheckOutcome(False, f"{type(err).__name__}: {err}")
        if result is None or result is True:
            return CheckOutcome(True)
        if result is False:
            return CheckOutcome(False)
        if isinstance(result, tuple) and len(result) == 2:
            return CheckOutcome(bool(result[0]), str(result[1]))
        return CheckOutcome(False, f"check returned {result!r}, expected bool or (bool, detail)")
