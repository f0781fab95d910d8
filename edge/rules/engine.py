"""`AlertEngine`: windows + rules + alert lifecycle, pure and single-threaded.

Who calls what (the gateway's local-alert task; tests call the same API)::

    eng = AlertEngine(ruleset, now_ms=clock.now_ms())
    out = eng.observe(reading)                      # every accepted reading, in arrival order
    out = eng.advance(now_ms, gateway_status)       # every ~100 ms
    eng.acknowledge("overheat:sensor-7", by="operator1", now_ms=...)
    reload = eng.replace_rules(load_rules(path))    # on SIGHUP / file change
    snap = eng.snapshot()                           # JSON-safe; persist it
    eng = AlertEngine.restore(ruleset, snap, now_ms=...)

Every call returns an `Output` (aggregates, alert transitions, refused readings) that the caller
must forward (aggregates and transitions as `Event`s via `to_event()`, refused readings to its
counters).  Nothing here blocks, sleeps, reads a clock or does I/O.

Timing.  `observe` files readings and evaluates per-reading rules (stale recovery, low battery
on the last reading) at once; windows that closed are computed and evaluated by the next
`advance`, which also runs stale checks, gateway rules and re-notifications.  `now_ms` is the
processing clock; `observe(reading)` without `now_ms` takes the last `advance` time as the
reading's arrival.  Transitions carry `at_ms` = the `now_ms` they were produced at.

Hysteresis.  A rule fires when its condition holds for `for N windows` consecutive windows
(windows whose starts are exactly one slide apart; a gap restarts the count) and, once firing,
resolves only when its clear condition holds (default: the condition's negation) for the
clear's window count.  A value that is missing (None) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from edge.model import Event, Reading
from edge.rules.alerts import AlertBook, AlertTransition
from edge.rules.model import Matcher, Rule, RuleSet
from edge.rules.stale import StaleTracker
from edge.windows import Late, Windower, WindowResult, WindowSpec

SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """The gateway's own health, as the caller sees it at `advance` time."""

    #: 0.0 .. 1.0 of the store-and-forward buffer's capacity
    buffer_fill_ratio: float = 0.0
    #: when the uplink went down (processing-clock ms), or None while it is up
    uplink_down_since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Output:
    aggregates: tuple[WindowResult, ...] = ()
    transitions: tuple[AlertTransition, ...] = ()
    late: tuple[Late, ...] = ()

    def events(self) -> list[Event]:
        """Aggregates then alert transitions, as events for the buffer/uplink."""
        return ([a.to_event() for a in self.aggregates]
                + [t.to_event() for t in self.transitions])

    def __bool__(self) -> bool:
        return bool(self.aggregates or self.transitions or self.late)


_EMPTY = Output()


@dataclass(frozen=True, slots=True)
class Reload:
    """What `replace_rules` did.  `output` holds windows flushed because their spec changed or
    was removed (closed_by="reload"; no rules are evaluated on them) and the resolutions of
    alerts whose rule went away or no longer matches."""

    output: Output
    windows_kept: tuple[str, ...] = ()
    windows_restarted: tuple[str, ...] = ()
    windows_added: tuple[str, ...] = ()
    windows_removed: tuple[str, ...] = ()
    rules_added: tuple[str, ...] = ()
    rules_removed: tuple[str, ...] = ()


class _Streak:
    """Consecutive windows meeting a condition (fire while quiet, clear while firing)."""

    __slots__ = ("count", "next_start")

    def __init__(self, count: int = 0, next_start: int | None = None) -> None:
        self.count = count
        self.next_start = next_start


def iso_ms(ms: int) -> str:
    """UTC ISO-8601 (`2024-01-15T12:40:40Z`, with `.123` when not on a whole second)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def _scope(measurement: str | None, tags: Mapping[str, str], window: str | None = None
           ) -> dict[str, Any]:
    """What a rule matched on, kept with its alert to recheck after a reload."""
    return {"measurement": measurement, "tags": dict(tags), "window": window}


def _still_seen(matcher: Matcher, dev: str, r: Reading) -> bool:
    return matcher.matches(dev, r.measurement, r.tags)


def _scope_of(source: Reading | WindowResult | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, WindowResult):
        return _scope(source.measurement, source.tags, source.window)
    return _scope(source.measurement, source.tags)


class AlertEngine:
    def __init__(self, ruleset: RuleSet, *, now_ms: int, gateway_id: str = "gateway") -> None:
        self.gateway_id = gateway_id
        self._now = now_ms
        self._book = AlertBook()
        self._streaks: dict[tuple[str, str], _Streak] = {}
        self._stale = StaleTracker()
        self._windowers = {wid: Windower(spec, now_ms=now_ms)
                           for wid, spec in ruleset.windows.items()}
        self._pending: list[AlertTransition] = []
        self._pending_aggregates: list[WindowResult] = []
        self._install(ruleset)

    def _install(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._rules = {r.id: r for r in ruleset.rules}
        self._window_rules = [r for r in ruleset.rules if r.on_windows]
        self._reading_rules = [r for r in ruleset.rules if r.on_readings]
        self._gateway_rules = [r for r in ruleset.rules if r.on_gateway]
        self._stale_rules = [r for r in ruleset.rules if r.kind == "stale"]
        self._cooldowns = {r.id: r.cooldown_ms for r in ruleset.rules}
        self._reading_cache: dict[tuple[Any, ...], tuple[Rule, ...]] = {}
        self._window_cache: dict[tuple[Any, ...], tuple[Rule, ...]] = {}
        for rule in self._stale_rules:
            self._stale.track(rule.id)

    # -- input -----------------------------------------------------------------------------

    def observe(self, reading: Reading, now_ms: int | None = None) -> Output:
        """File one accepted reading; evaluate per-reading rules.  Never raises for data."""
        arrival = self._now if now_ms is None else now_ms
        late: list[Late] | None = None
        for w in self._windowers.values():
            refused = w.observe(reading, arrival)
            if refused is not None:
                late = late or []
                late.append(refused)
        transitions: list[AlertTransition] | None = None
        if self._reading_rules:
            ck = (reading.device_id, reading.measurement, reading.facility, reading.line,
                  reading.zone)
            rules = self._reading_cache.get(ck)
            if rules is None:
                rules = self._reading_cache[ck] = tuple(
                    r for r in self._reading_rules
                    if r.matcher.matches(reading.device_id, reading.measurement, reading.tags))
            for rule in rules:
                t = (self._seen_reading(rule, reading, arrival) if rule.kind == "stale"
                     else self._battery_reading(rule, reading, arrival))
                if t is not None:
                    transitions = transitions or []
                    transitions.append(t)
        if late is None and transitions is None:
            return _EMPTY
        return Output(transitions=tuple(transitions or ()), late=tuple(late or ()))

    def observe_many(self, readings: Iterable[Reading], now_ms: int | None = None) -> Output:
        late: list[Late] = []
        transitions: list[AlertTransition] = []
        for r in readings:
            out = self.observe(r, now_ms)
            if out:
                late += out.late
                transitions += out.transitions
        return Output(transitions=tuple(transitions), late=tuple(late))

    def _seen_reading(self, rule: Rule, r: Reading, arrival: int) -> AlertTransition | None:
        previous = self._stale.saw(rule.id, r, arrival)
        if previous is None:
            return None
        values = self._stale_values(rule, r.device_id, previous[0], previous[1], arrival)
        return self._book.resolve(f"{rule.id}:{r.device_id}", arrival, "cleared", values)

    def _battery_reading(self, rule: Rule, r: Reading, arrival: int) -> AlertTransition | None:
        volts = r.battery_voltage
        if volts is None and r.measurement == "battery_voltage":
            volts = r.value
        if volts is None:
            return None
        assert rule.fire is not None
        if not rule.fire.test(volts) and self._book.get(f"{rule.id}:{r.device_id}") is None:
            return None  # the common case, decided without building a context

        def context() -> dict[str, Any]:
            assert rule.fire is not None
            return {"voltage": volts, "threshold": rule.fire.threshold,
                    "measurement": r.measurement, **r.tags}

        return self._step(rule, r.device_id, volts, arrival, None, None, context, r)

    # -- time ------------------------------------------------------------------------------

    def advance(self, now_ms: int, gateway_status: GatewayStatus | None = None) -> Output:
        """Close due windows and evaluate them; stale, gateway and re-notification checks.

        Without `gateway_status` the gateway rules keep their state (nothing is known)."""
        self._now = now_ms
        aggregates = self._pending_aggregates
        transitions = self._pending
        self._pending_aggregates, self._pending = [], []
        for w in self._windowers.values():
            closed = w.advance(now_ms)
            if not closed:
                continue
            aggregates += closed
            if self._window_rules:
                for res in closed:
                    transitions += self._evaluate_window(res, now_ms)
        for rule in self._stale_rules:
            transitions += self._check_stale(rule, now_ms)
        if gateway_status is not None:
            for rule in self._gateway_rules:
                t = self._evaluate_gateway(rule, gateway_status, now_ms)
                if t is not None:
                    transitions.append(t)
        transitions += self._book.due_renotifications(now_ms, self._cooldowns, self._rerender)
        if not aggregates and not transitions:
            return _EMPTY
        return Output(aggregates=tuple(aggregates), transitions=tuple(transitions))

    def flush(self, now_ms: int) -> Output:
        """Close every open window now and evaluate rules on them (closed_by="flush").

        Prefer `snapshot(include_windows=True)` at shutdown: a flushed partial window and the
        rest of it seen after a restart share one idempotency key."""
        self._now = now_ms
        aggregates: list[WindowResult] = []
        transitions: list[AlertTransition] = []
        for w in self._windowers.values():
            closed = w.flush()
            aggregates += closed
            for res in closed:
                transitions += self._evaluate_window(res, now_ms)
        return Output(aggregates=tuple(aggregates), transitions=tuple(transitions))

    def _evaluate_window(self, res: WindowResult, now_ms: int) -> list[AlertTransition]:
        tags = res.tags
        ck = (res.window, res.key, res.measurement, tags.get("facility"), tags.get("line"),
              tags.get("zone"))
        rules = self._window_cache.get(ck)
        if rules is None:
            rules = self._window_cache[ck] = tuple(
                r for r in self._window_rules
                if r.window == res.window and r.matcher.matches(res.key, res.measurement, tags))
        out = []
        for rule in rules:
            value = rule.window_value(res)

            def context(rule: Rule = rule, value: float | None = value) -> dict[str, Any]:
                return self._window_values(rule, res, value)

            t = self._step(rule, res.key, value, now_ms, res.start_ms,
                           res.start_ms + res.slide_ms, context, res)
            if t is not None:
                out.append(t)
        return out

    def _window_values(self, rule: Rule, res: WindowResult, value: float | None
                       ) -> dict[str, Any]:
        assert rule.fire is not None
        values: dict[str, Any] = {
            "window": res.window, "key": res.key, "measurement": res.measurement,
            "unit": res.unit, "start_ms": res.start_ms, "end_ms": res.end_ms,
            "start": iso_ms(res.start_ms), "end": iso_ms(res.end_ms), **res.aggregates,
            "value": value, "threshold": rule.fire.threshold, **res.tags,
        }
        if rule.kind == "threshold":
            values["condition"] = str(rule.fire)
        if rule.kind == "low_battery":
            values["voltage"] = res.battery_min
        return values

    def _check_stale(self, rule: Rule, now_ms: int) -> list[AlertTransition]:
        out = []
        for dev, (arrival, r) in self._stale.newly_silent(rule.id, now_ms - rule.after_ms):
            if self._book.get(f"{rule.id}:{dev}") is None:
                values = self._stale_values(rule, dev, arrival, r, now_ms)
                out.append(self._book.fire(
                    rule_id=rule.id, kind=rule.kind, subject=dev, severity=rule.severity,
                    message=self._render(rule, dev, values), values=values, now_ms=now_ms,
                    cooldown_ms=rule.cooldown_ms, scope=_scope(r.measurement, r.tags)))
        return out

    def _stale_values(self, rule: Rule, dev: str, arrival: int, r: Reading, now_ms: int
                      ) -> dict[str, Any]:
        return {"last_seen": iso_ms(arrival), "last_seen_ms": arrival,
                "silent_s": (now_ms - arrival) / 1000, "after_s": rule.after_ms / 1000,
                "measurement": r.measurement, **r.tags}

    def _evaluate_gateway(self, rule: Rule, status: GatewayStatus, now_ms: int
                          ) -> AlertTransition | None:
        if rule.kind == "buffer_fill":
            fill = status.buffer_fill_ratio * 100.0
            assert rule.fire is not None
            values: dict[str, Any] = {"fill_percent": fill, "threshold": rule.fire.threshold}
            return self._step(rule, self.gateway_id, fill, now_ms, None, None,
                              lambda: values, None)
        since = status.uplink_down_since_ms
        down_s = 0.0 if since is None else max(0, now_ms - since) / 1000

        def context() -> dict[str, Any]:
            return {"down_since": iso_ms(since) if since is not None else None,
                    "down_s": down_s, "after_s": rule.after_ms / 1000}

        return self._step(rule, self.gateway_id, down_s, now_ms, None, None, context, None)

    # -- the hysteresis step shared by every evaluated rule ---------------------------------

    def _step(self, rule: Rule, subject: str, value: float | None, now_ms: int,
              start_ms: int | None, next_start: int | None,
              context: Callable[[], dict[str, Any]], source: Reading | WindowResult | None
              ) -> AlertTransition | None:
        """One evaluation of `rule` for `subject`; `source` is what the scope is taken from
        if it fires (computed only then: this runs for every reading of some rules)."""
        assert rule.fire is not None and rule.clear is not None
        dedup = f"{rule.id}:{subject}"
        alert = self._book.get(dedup)
        cond = rule.fire if alert is None else rule.clear
        ok = cond.test(value)
        if ok is None:
            return None
        key = (rule.id, subject)
        if not ok:
            self._streaks.pop(key, None)
            if alert is not None:
                alert.values = context()
            return None
        if cond.windows > 1:
            st = self._streaks.get(key)
            if st is None:
                st = self._streaks[key] = _Streak()
            if start_ms is not None and st.next_start is not None and st.next_start != start_ms:
                st.count = 0
            st.count += 1
            st.next_start = next_start
            if st.count < cond.windows:
                return None
        self._streaks.pop(key, None)
        values = context()
        if alert is not None:
            return self._book.resolve(dedup, now_ms, "cleared", values)
        return self._book.fire(rule_id=rule.id, kind=rule.kind, subject=subject,
                               severity=rule.severity,
                               message=self._render(rule, subject, values), values=values,
                               now_ms=now_ms, cooldown_ms=rule.cooldown_ms,
                               scope=_scope_of(source))

    def _render(self, rule: Rule, subject: str, values: Mapping[str, Any]) -> str:
        return rule.message.render({**values, "rule_id": rule.id, "device_id": subject,
                                    "severity": rule.severity})

    def _rerender(self, alert: Any) -> str | None:
        rule = self._rules.get(alert.rule_id)
        return None if rule is None else self._render(rule, alert.subject, alert.values)

    # -- operators -------------------------------------------------------------------------

    def acknowledge(self, dedup_key: str, by: str, now_ms: int) -> AlertTransition | None:
        """Acknowledge a firing alert; None if it is not firing (resolved, unknown, acked)."""
        return self._book.acknowledge(dedup_key, by, now_ms)

    def active_alerts(self) -> list[dict[str, Any]]:
        """Bodies of every firing or acknowledged alert (for a local status page)."""
        return [a.body() for a in self._book]

    @property
    def windowers(self) -> Mapping[str, Windower]:
        return self._windowers

    # -- reload ----------------------------------------------------------------------------

    def replace_rules(self, ruleset: RuleSet) -> Reload:
        """Swap in a new rule set, keeping the state of rules and windows that persist."""
        aggregates: list[WindowResult] = []
        kept, restarted, added = [], [], []
        for wid, spec in ruleset.windows.items():
            w = self._windowers.get(wid)
            if w is None:
                added.append(wid)
            elif w.spec == spec:
                kept.append(wid)
                continue
            else:
                restarted.append(wid)
                aggregates += w.flush("reload")
            self._windowers[wid] = Windower(spec, now_ms=self._now)
        removed = [wid for wid in self._windowers if wid not in ruleset.windows]
        for wid in removed:
            aggregates += self._windowers.pop(wid).flush("reload")
        old_rules = self._rules
        new_rules = {r.id: r for r in ruleset.rules}
        fresh = set(restarted)
        transitions = self._reconcile(new_rules, lambda old, new: (
            old.kind != new.kind or old.window != new.window or old.fire != new.fire
            or old.clear != new.clear or (new.window in fresh)))
        self._install(ruleset)
        return Reload(
            output=Output(aggregates=tuple(aggregates), transitions=tuple(transitions)),
            windows_kept=tuple(kept), windows_restarted=tuple(restarted),
            windows_added=tuple(added), windows_removed=tuple(removed),
            rules_added=tuple(r for r in new_rules if r not in old_rules),
            rules_removed=tuple(r for r in old_rules if r not in new_rules))

    def _reconcile(self, new_rules: Mapping[str, Rule],
                   streak_invalid: Callable[[Rule, Rule], bool]) -> list[AlertTransition]:
        """Drop state of rules that are gone; resolve alerts they or their new match orphan."""
        out = []
        for alert in self._book:
            rule = new_rules.get(alert.rule_id)
            reason = None
            if rule is None:
                reason = "rule_removed"
            elif rule.kind != alert.kind or not (rule.on_gateway or rule.matcher.matches(
                    alert.subject, alert.scope.get("measurement"), alert.scope.get("tags", {}))):
                reason = "rule_changed"
            elif rule.cooldown_ms != self._cooldowns.get(rule.id):
                self._book.schedule(alert, rule.cooldown_ms)
            if reason is not None:
                t = self._book.resolve(alert.dedup_key, self._now, reason)
                if t is not None:
                    out.append(t)
                self._stale.forget_silent(alert.rule_id, alert.subject)
        for key in list(self._streaks):
            old, new = self._rules.get(key[0]), new_rules.get(key[0])
            if new is None or (old is not None and streak_invalid(old, new)):
                del self._streaks[key]
        for rid in self._stale.rules():
            new = new_rules.get(rid)
            if new is None or new.kind != "stale":
                self._stale.drop(rid)
            else:
                self._stale.keep_seen(rid, partial(_still_seen, new.matcher))
        return out

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self, *, include_windows: bool = False) -> dict[str, Any]:
        """JSON-safe state: alerts, streaks, stale tracking (and open windows if asked).

        Without windows the snapshot is small (alerts and per-device last-seen times); with
        them it also holds every open window's values, so a restart loses no partial window.
        """
        snap: dict[str, Any] = {
            "version": SNAPSHOT_VERSION, "saved_at_ms": self._now, "gateway_id": self.gateway_id,
            "alerts": self._book.to_state(),
            "streaks": [[rid, subject, st.count, st.next_start]
                        for (rid, subject), st in self._streaks.items()],
            "stale": self._stale.to_state(),
            "pending": [[t.transition, t.at_ms, t.body] for t in self._pending],
        }
        if include_windows:
            snap["windows"] = {wid: w.to_state() for wid, w in self._windowers.items()}
        return snap

    @classmethod
    def restore(cls, ruleset: RuleSet, snapshot: Mapping[str, Any], *, now_ms: int,
                gateway_id: str | None = None) -> AlertEngine:
        """Rebuild from `snapshot()`, possibly under a changed rule set.

        Firing alerts stay firing (no second `firing` for the same condition).  Alerts of rules
        no longer in `ruleset`, and windows whose spec changed, come out of the next `advance`
        (resolved "rule_removed"/"rule_changed"; windows flushed with closed_by="reload").
        Stale tracking restarts its clock at `now_ms`: the gateway being down is not every
        device being silent.  Raises ValueError for a snapshot of another format version.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported alert-engine snapshot version "
                             f"{snapshot.get('version')!r} (expected {SNAPSHOT_VERSION})")
        eng = cls(ruleset, now_ms=now_ms,
                  gateway_id=gateway_id or str(snapshot.get("gateway_id", "gateway")))
        eng._book = AlertBook.from_state(snapshot["alerts"], eng._cooldowns)
        eng._pending = [AlertTransition(kind, at, body)
                        for kind, at, body in snapshot.get("pending", [])]
        for rid, subject, count, next_start in snapshot.get("streaks", []):
            eng._streaks[(rid, subject)] = _Streak(count, next_start)

        eng._stale = StaleTracker.from_state(snapshot.get("stale", {}), now_ms=now_ms)
        for wid, state in snapshot.get("windows", {}).items():
            old = WindowSpec.from_dict(state["spec"])
            if wid in ruleset.windows and ruleset.windows[wid] == old:
                eng._windowers[wid] = Windower.from_state(old, state, now_ms=now_ms)
            else:
                orphan = Windower.from_state(old, state, now_ms=now_ms)
                eng._pending_aggregates += orphan.flush("reload")
        # rules as they were when saved are unknown; judge every state against the new set
        eng._rules = {}
        eng._pending += eng._reconcile({r.id: r for r in ruleset.rules}, lambda old, new: False)
        eng._install(ruleset)
        return eng
